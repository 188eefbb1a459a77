#!/usr/bin/env bash
# The offline demo behind `make run`: the emulator stands in for PiAPI on 127.0.0.1, `run`
# starts a private redis-server, a dispatcher and a Celery worker, and writes the results.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
RUN_DIR=${PIAPI_BULK_RUN_DIR:-.piapi-bulk}
MANIFEST=${DEMO_MANIFEST:-examples/demo.jsonl}
RESULTS=${DEMO_RESULTS:-$RUN_DIR/demo.results.jsonl}
TIME_SCALE=${DEMO_TIME_SCALE:-0.05}   # Joycaption ~30 s -> ~1.5 s, Wan ~3 min -> ~9 s
CONCURRENCY=${DEMO_CONCURRENCY:-20}
mkdir -p "$RUN_DIR"

port=$("$BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export PIAPI_API_KEY=${DEMO_API_KEY:-demo-key-not-secret}
"$BIN/python" -m emulator --port "$port" --time-scale "$TIME_SCALE" --concurrency "$CONCURRENCY" \
    --api-key "$PIAPI_API_KEY" >"$RUN_DIR/emulator.log" 2>&1 &
emulator_pid=$!
trap 'kill $emulator_pid 2>/dev/null || true; wait $emulator_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    "$BIN/python" -c "import httpx,sys; httpx.get('http://127.0.0.1:$port/_emulator/stats', timeout=1)" 2>/dev/null && break
    kill -0 "$emulator_pid" 2>/dev/null || { cat "$RUN_DIR/emulator.log"; exit 1; }
    sleep 0.1
done

# A fresh emulator knows none of an earlier demo's tasks, so the demo starts a fresh database.
rm -f "$RUN_DIR"/demo.db "$RUN_DIR"/demo.db-wal "$RUN_DIR"/demo.db-shm
export PIAPI_BASE_URL="http://127.0.0.1:$port"
export PIAPI_UPLOAD_URL="$PIAPI_BASE_URL"  # the emulator serves the upload endpoint too
export DATABASE_URL="sqlite:///$RUN_DIR/demo.db"
unset REDIS_URL
echo "emulator on $PIAPI_BASE_URL (time scale $TIME_SCALE, concurrency $CONCURRENCY)"
status=0
"$BIN/piapi-bulk" run "$MANIFEST" -o "$RESULTS" || status=$?
echo
echo "results: $RESULTS ($(wc -l <"$RESULTS") lines)"
echo "status:  DATABASE_URL=$DATABASE_URL $BIN/piapi-bulk status"
exit $status
