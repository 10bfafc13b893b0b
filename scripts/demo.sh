#!/usr/bin/env bash
# The main job, end to end: install, train LightGCN on MovieLens-1M (with its test metrics), build the FAISS index,
# serve it over gRPC on 127.0.0.1, ask for user 1's top 10, then stop the server.
#
# Data: $MOVIEREC_DATA, else ../shared/data/ml-1m, else the GroupLens download (needs network).
# Artifacts go to $MOVIEREC_ARTIFACTS (default ./artifacts): models/, index/ (versioned, CURRENT).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
recctl=.venv/bin/recctl
artifacts=${MOVIEREC_ARTIFACTS:-artifacts}
data=${MOVIEREC_DATA:-}
if [ -z "$data" ]; then
    if [ -f ../shared/data/ml-1m/ratings.dat ]; then
        data=../shared/data/ml-1m
    else
        "$recctl" data download ml-1m --dest data
        data=data/ml-1m
    fi
fi

echo "== data: $data"
"$recctl" data stats --data "$data"

model="$artifacts/models/lightgcn-ml1m"
echo "== train LightGCN -> $model (test metrics: standard split, full ranking, train items masked)"
# train prints the bundle's test metrics; `recctl evaluate --model "$model"` recomputes the same table later.
"$recctl" train --data "$data" --out "$model" --force

echo "== build the FAISS index -> $artifacts/index"
"$recctl" index build --model "$model" --out "$artifacts/index"

log=$(mktemp)
echo "== serve on 127.0.0.1 (free port)"
"$recctl" serve --index "$artifacts/index" --host 127.0.0.1 --port 0 --json >"$log" 2>&1 &
server=$!
trap 'kill -TERM "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -f "$log"' EXIT
port=""
for _ in $(seq 1 600); do
    if ! kill -0 "$server" 2>/dev/null; then
        cat "$log" >&2
        echo "server exited before serving" >&2
        exit 1
    fi
    port=$(.venv/bin/python -c 'import json,sys
for line in open(sys.argv[1]):
    try:
        event = json.loads(line)
    except ValueError:
        continue
    if event.get("event") == "serving":
        print(event["port"])' "$log")
    [ -n "$port" ] && break
    sleep 0.2
done
[ -n "$port" ] || { cat "$log" >&2; echo "server did not become ready" >&2; exit 1; }

echo "== recctl recommend --server 127.0.0.1:$port --user 1 -k 10"
"$recctl" recommend --server "127.0.0.1:$port" --user 1 -k 10

kill -TERM "$server"
wait "$server"
trap 'rm -f "$log"' EXIT
echo "== server stopped cleanly"
