#!/usr/bin/env bash
# The object-storage test, run by .ci/run: a real S3-compatible HTTP server (moto's server mode,
# from PyPI, in a virtualenv under the build directory) on 127.0.0.1 and a free port; a bucket;
# then `cargo test --test s3 -- --ignored`, which uploads CSV and Parquet objects and runs
# `cleanroom match` and `cleanroom serve` + `cleanroom query` on their s3:// locations. The
# server is stopped by its PID on exit.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
venv="$target/s3-venv"

# The virtualenv is kept between runs (the pinned requirements decide when it is rebuilt).
stamp="$venv/.requirements"
if ! cmp -s "$here/requirements.txt" "$stamp" 2>/dev/null; then
    rm -rf "$venv"
    python3 -m venv "$venv" || {
        echo "tests/s3/run.sh: python3 -m venv failed (on Debian/Ubuntu: apt-get install python3-venv)" >&2
        exit 1
    }
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    cp "$here/requirements.txt" "$stamp"
fi

port="$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
log="$(mktemp)"
"$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -f "$log"' EXIT

export AWS_ACCESS_KEY_ID=cleanroom-test AWS_SECRET_ACCESS_KEY=cleanroom-test-secret
export AWS_REGION=us-east-1 AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ALLOW_HTTP=true
export CLEANROOM_S3_BUCKET=cleanroom-test
for _ in $(seq 1 100); do
    if "$venv/bin/python" - <<'PY' 2>/dev/null; then break; fi
import os, urllib.request
urllib.request.urlopen(os.environ["AWS_ENDPOINT_URL"] + "/moto-api/", timeout=1)
PY
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; echo "tests/s3/run.sh: moto_server exited" >&2; exit 1; }
    sleep 0.2
done
"$venv/bin/python" - <<'PY'
import os, boto3
boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(
    Bucket=os.environ["CLEANROOM_S3_BUCKET"])
PY
cd "$root"
# --workspace: the same feature set as .ci/run's cargo test, so nothing is rebuilt.
cargo test --workspace --locked --test s3 -- --ignored
