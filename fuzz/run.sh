#!/usr/bin/env bash
# Runs fuzz targets for SECONDS each (default 600), one after the other, with libFuzzer through
# cargo fuzz. Works on stable Rust: without a sanitizer (`-s none`) cargo fuzz needs no nightly
# flag; set FUZZ_SANITIZER=address (and RUSTC_BOOTSTRAP=1 on stable) for AddressSanitizer.
# Usage: fuzz/run.sh [SECONDS] [TARGET...]; crashes land in fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-600}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi
sanitizer=${FUZZ_SANITIZER:-none}
./seed.sh >/dev/null
for target in "${targets[@]}"; do
    echo "== $target: ${seconds}s (sanitizer: $sanitizer)"
    cargo fuzz run -s "$sanitizer" "$target" -- -max_total_time="$seconds" -print_final_stats=1
done
