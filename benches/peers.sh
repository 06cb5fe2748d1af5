#!/usr/bin/env bash
# Compare cleanroom's cardinality protocol with OpenMined PSI on the same machine, in one run.
# Usage: benches/peers.sh [N] [OVERLAP]     (default N = 100000, OVERLAP = 0.5)
# Installs openmined-psi 2.0.6 into a temporary virtual environment; nothing is left behind.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-100000}"
overlap="${2:-0.5}"
venv="$(mktemp -d)"
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet "openmined-psi==2.0.6"
unset RUSTFLAGS
cargo build --release --quiet
ours="$(./target/release/cleanroom bench --size "$n" --overlap "$overlap" --format json)"
theirs="$("$venv/bin/python" benches/openmined_psi.py "$n" "$overlap")"
echo "cleanroom:    $ours"
echo "openmined:    $theirs"
python3 - "$ours" "$theirs" <<'PY'
import json, sys
ours, theirs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"wall-time ratio (openmined / cleanroom): {theirs['seconds'] / ours['seconds']:.2f}x")
print(f"openmined CPU per element: {theirs['cpu_seconds'] / (2 * theirs['size']) * 1e6:.1f} us")
print(f"bytes per element: cleanroom {ours['bytes_on_wire'] / (2 * ours['size']):.1f}, "
      f"openmined {theirs['bytes_on_wire'] / (2 * theirs['size']):.1f}")
PY
