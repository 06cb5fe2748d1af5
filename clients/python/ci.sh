#!/usr/bin/env bash
# The Python client's checks, run by .ci/run: the published test vectors of PROTOCOL.md, and the
# interoperability test (`cleanroom serve` on loopback; the same queries through `cleanroom
# query` and through this client must give identical results). Dependencies go into a
# temporary virtual environment, removed on exit.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

# The server and the reference client: the debug binary, unless CLEANROOM_BIN names one. It is
# brought up to date the way .ci/run's `cargo test --workspace` builds it, so after that step this
# is a no-op (`cargo build` would rebuild: tests unify dependency features differently).
if [[ -z "${CLEANROOM_BIN:-}" ]]; then
    (cd "$root" && cargo test --workspace --locked --no-run --quiet)
    export CLEANROOM_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/cleanroom"
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv" || {
    echo "clients/python/ci.sh: python3 -m venv failed (on Debian/Ubuntu: apt-get install python3-venv)" >&2
    exit 1
}
"$tmp/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$here/requirements-test.txt"

cd "$here"
# -p no:cacheprovider: write nothing into the source tree. pytest exits 5 when it collects no
# test, which fails this script as it should.
"$tmp/venv/bin/python" -m pytest -q -p no:cacheprovider tests
