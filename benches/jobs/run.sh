#!/usr/bin/env bash
# One row of BENCHMARKS.md "Jobs of buckets through the service": `serve` and `query` as two
# processes on 127.0.0.1, each under /usr/bin/time, the work directories sampled every second.
#   benches/jobs/run.sh N SERVER_BUCKET_ROWS CLIENT_BUCKET_ROWS [PORT]
# Builds nothing: uses target/release/cleanroom (or $CLEANROOM_BIN). Tables are generated once
# per N under target/bench-jobs/N. Prints wall time, peak RSS of each process, disk and the result.
# PIN=1 runs serve on core 0 and query on core 1 only (taskset): two one-core machines, so that
# what one side does while the other computes shows in the wall time.
set -euo pipefail
n=$1 server_rows=$2 client_rows=$3 port=${4:-50777}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${CLEANROOM_BIN:-$root/target/release/cleanroom}
data=$root/target/bench-jobs/$n
mkdir -p "$root/target/bench-jobs"
run=$(mktemp -d "$root/target/bench-jobs/run.XXXXXX")
[ -f "$data/purchases.csv" ] || python3 "$here/gen.py" "$n" "$data" > "$data.expected"
cat "$data.expected"
mkdir -p "$run/swork" "$run/cwork"
server_pin=() client_pin=()
if [ "${PIN:-0}" = 1 ]; then server_pin=(taskset -c 0) client_pin=(taskset -c 1); fi
/usr/bin/time -v -o "$run/server.time" "${server_pin[@]}" "$bin" serve \
  --config "$here/collab.toml" --member publisher --data "impressions=$data/impressions.csv" \
  --listen "127.0.0.1:$port" --state "$run/state.db" --bucket-rows "$server_rows" \
  --work-dir "$run/swork" --max-rows 1000000000 --min-data-rate 0 --session-timeout 86400 2> "$run/server.log" &
server=$!
trap 'pkill -TERM -P $server 2>/dev/null || true; kill $sampler 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  grep -q "on http://127.0.0.1" "$run/server.log" 2>/dev/null && break
  sleep 1
done
( max=0; while true; do
    s=$(du -scb "$run/swork" "$run/cwork" | tail -1 | cut -f1)
    [ "$s" -gt "$max" ] && max=$s && echo "$max" > "$run/disk.max"
    sleep 1
  done ) &
sampler=$!
start=$(date +%s.%N)
CLEANROOM_TOKEN=advertiser-token /usr/bin/time -v -o "$run/client.time" "${client_pin[@]}" "$bin" query \
  --config "$here/collab.toml" --member advertiser --data "purchases=$data/purchases.csv" \
  --server "http://127.0.0.1:$port" --bucket-rows "$client_rows" --work-dir "$run/cwork" \
  --format csv "SELECT i.campaign, COUNT(DISTINCT p.email) AS buyers, SUM(p.amount) AS revenue
   FROM purchases p JOIN impressions i ON p.email = i.email GROUP BY i.campaign" \
  > "$run/result.csv" 2> "$run/client.log"
end=$(date +%s.%N)
# SIGTERM to serve itself (a child of time), which drains and exits; time then reports it.
pkill -TERM -P $server; wait $server 2>/dev/null || true
echo "run dir: $run"
echo "client wall s: $(echo "$end - $start" | bc)"
echo "client peak RSS KiB: $(awk '/Maximum resident/ {print $6}' "$run/client.time")"
echo "server peak RSS KiB: $(awk '/Maximum resident/ {print $6}' "$run/server.time")"
echo "bucket files max bytes: $(cat "$run/disk.max" 2>/dev/null || echo 0)"
tail -2 "$run/client.log" || true
grep -o "bytes_received=[0-9]* bytes_sent=[0-9]*" "$run/server.log" | tail -1 || true
grep -hE "User time|System time" "$run/client.time" "$run/server.time" || true
awk -F, 'NR > 1 {b += $2; r += $3} END {print "result buyers " b " revenue " r}' "$run/result.csv"
