#!/usr/bin/env bash
# BENCHMARKS.md "Resuming a job after a crash": a named job (`query --job-id`) of `serve` and
# `query` on 127.0.0.1, one of them killed with SIGKILL once half its buckets are done.
#   benches/jobs/crash.sh N SERVER_BUCKET_ROWS CLIENT_BUCKET_ROWS client|server [PORT]
# client: the query is killed and run again with the same command.
# server: serve is killed and started again on the same state file and port after 1 s; the
#         query, still running, retries and resumes.
# Builds nothing: uses target/release/cleanroom (or $CLEANROOM_BIN). Tables as run.sh's.
set -euo pipefail
n=$1 server_rows=$2 client_rows=$3 victim=$4 port=${5:-50778}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${CLEANROOM_BIN:-$root/target/release/cleanroom}
data=$root/target/bench-jobs/$n
mkdir -p "$root/target/bench-jobs"
run=$(mktemp -d "$root/target/bench-jobs/crash.XXXXXX")
[ -f "$data/purchases.csv" ] || python3 "$here/gen.py" "$n" "$data" > "$data.expected"
cat "$data.expected"
mkdir -p "$run/swork" "$run/cwork"
serve() {
  "$bin" serve --config "$here/collab.toml" --member publisher \
    --data "impressions=$data/impressions.csv" --listen "127.0.0.1:$port" \
    --state "$run/state.db" --bucket-rows "$server_rows" --work-dir "$run/swork" \
    --max-rows 1000000000 --min-data-rate 0 --session-timeout 86400 2>> "$run/server.log" &
  server=$!
  for _ in $(seq 600); do
    [ "$(grep -c "on http://127.0.0.1" "$run/server.log" 2>/dev/null)" -ge "$1" ] && return
    sleep 0.2
  done
}
# Run in a subshell, so that the exec'd process is the one a background `$!` names.
query() {
  CLEANROOM_TOKEN=advertiser-token exec "$bin" query \
    --config "$here/collab.toml" --member advertiser --data "purchases=$data/purchases.csv" \
    --server "http://127.0.0.1:$port" --bucket-rows "$client_rows" --work-dir "$run/cwork" \
    --job-id "crash-$$" --format csv \
    "SELECT i.campaign, COUNT(DISTINCT p.email) AS buyers, SUM(p.amount) AS revenue
     FROM purchases p JOIN impressions i ON p.email = i.email GROUP BY i.campaign" \
    > "$run/result.csv" 2>> "$run/client.log"
}
trap 'kill $server 2>/dev/null || true' EXIT
serve 1
start=$(date +%s.%N)
(query) &
client=$!
until grep -q "^bucket 1 of" "$run/client.log" 2>/dev/null; do sleep 0.1; done
buckets=$(grep -m1 "^bucket 1 of" "$run/client.log" | sed -E 's/^bucket 1 of ([0-9]+):.*/\1/')
half=$((buckets / 2))
until grep -q "^bucket $half of $buckets done" "$run/client.log"; do sleep 0.1; done
killed=$(date +%s.%N)
if [ "$victim" = client ]; then
  kill -KILL $client; wait $client 2>/dev/null || true
  echo "killed the client after $(echo "$killed - $start" | bc) s (bucket $half of $buckets done)"
  again=$(date +%s.%N)
  (query)
  end=$(date +%s.%N)
  echo "second run s: $(echo "$end - $again" | bc)"
else
  kill -KILL $server; wait $server 2>/dev/null || true
  echo "killed the server after $(echo "$killed - $start" | bc) s (bucket $half of $buckets done)"
  sleep 1
  serve 2
  echo "server back after $(echo "$(date +%s.%N) - $killed" | bc) s"
  wait $client
  end=$(date +%s.%N)
fi
echo "total wall s: $(echo "$end - $start" | bc)"
grep -E "trying again|^bucket $half of|^bucket $buckets of" "$run/client.log" || true
"$bin" audit --state "$run/state.db" --format json | python3 -c '
import json, sys
e = json.load(sys.stdin)
print("audit entries:", len(e), [(x["decision"], x["buckets_done"], x["buckets"]) for x in e])'
awk -F, 'NR > 1 {b += $2; r += $3} END {print "result buyers " b " revenue " r}' "$run/result.csv"
echo "left in work dirs: $(find "$run/swork" "$run/cwork" -type f | wc -l) files"
kill $server 2>/dev/null || true
