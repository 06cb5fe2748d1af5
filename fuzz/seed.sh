#!/usr/bin/env bash
# Seeds each fuzz target's corpus (fuzz/corpus/<target>, not committed) with valid inputs from
# the repository: collaboration files, queries, CSV data and wire messages of the test vectors.
set -euo pipefail
cd "$(dirname "$0")"
root=..
mkdir -p corpus/{wire_message,point_bytes,ciphertext,collaboration_toml,sql_plan,csv_tables,table_bytes}
cp "$root"/crates/rules/tests/data/collab.toml corpus/collaboration_toml/rules-collab.toml
for f in "$root"/crates/rules/tests/data/*.csv; do cp "$f" corpus/csv_tables/; cp "$f" corpus/table_bytes/; done
# Queries of the rules' corpus tests and the README, one per file.
grep -ho '"SELECT[^"]*"' "$root"/crates/rules/tests/*.rs "$root"/tests/*.rs 2>/dev/null \
    | sed 's/^"//; s/"$//' | sort -u | head -200 | {
    i=0
    while IFS= read -r q; do printf '%s' "$q" > "corpus/sql_plan/q$i"; i=$((i + 1)); done
}
# Hex-encoded wire messages of the published test vectors.
python3 - "$root" <<'PY'
import json, pathlib, sys
root = pathlib.Path(sys.argv[1])
out = pathlib.Path("corpus")
n = 0
def walk(v):
    global n
    if isinstance(v, dict):
        for k, x in v.items():
            if isinstance(x, str) and k in ("hex", "encoded", "bytes", "message") and len(x) % 2 == 0:
                try:
                    b = bytes.fromhex(x)
                except ValueError:
                    continue
                target = {32: "point_bytes"}.get(len(b), "wire_message")
                (out / target / f"v{n}").write_bytes(b)
                if len(b) % 32 == 0 and len(b) > 32:
                    (out / "ciphertext" / f"v{n}").write_bytes(bytes([(len(b) // 32 - 1) // 2]) + b)
                n += 1
            else:
                walk(x)
    elif isinstance(v, list):
        for x in v:
            walk(x)
for f in sorted((root / "tests" / "vectors").glob("*.json")):
    walk(json.loads(f.read_text()))
print(f"seeded {n} byte strings from the test vectors")
PY
for t in corpus/*; do echo "$t: $(ls "$t" | wc -l) seeds"; done
