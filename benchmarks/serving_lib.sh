# Sourced by the serving benchmarks (w4_serving.sh, w5_prefix.sh): start and stop one
# `pagellm serve` on a shipped model shape with random weights and no tokenizer.
#   start_server MODEL LOG [FLAGS...]   # returns 0 once /health is 200 (sets $server, the
#                                       # pid), 1 if the port is taken or it never gets healthy
#   stop_server LOG                      # SIGTERM (drain), waits, prints the exit status
# A script that sources this stops a server it started when it exits, however it exits.
PY=${PYTHON:-python3}
PORT=${PORT:-8011}
server=""
trap '[ -n "$server" ] && kill -TERM "$server" 2>/dev/null && wait "$server"' EXIT

_healthy() { curl -sf -m 2 "http://127.0.0.1:$PORT/health" >/dev/null; }

start_server() {
    local model=$1 log=$2
    shift 2
    if _healthy; then
        echo "port $PORT already serves something: stop it or set PORT"; return 1
    fi
    $PY -m pagellm.entrypoints.cli.main serve "pagellm/bench/configs/$model" --load-format dummy \
        --skip-tokenizer-init --served-model-name "$model" --port "$PORT" --max-model-len 4096 \
        --disable-log-requests "$@" > "$log" 2>&1 &
    server=$!
    for _ in $(seq 600); do
        if ! kill -0 "$server" 2>/dev/null; then
            echo "server exited during startup:"; tail -40 "$log"; server=""; return 1
        fi
        if _healthy; then
            grep -E "KV cache|CUDA graph|Loaded" "$log" | tail -4
            return 0
        fi
        sleep 1
    done
    echo "server not healthy after 600 s:"; tail -40 "$log"
    kill -KILL "$server"; wait "$server" 2>/dev/null; server=""
    return 1
}

stop_server() {
    kill -TERM "$server"
    wait "$server"
    echo "server exit status: $?"
    server=""
    tail -3 "$1"
}
