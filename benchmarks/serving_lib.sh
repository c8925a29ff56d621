# Sourced by the serving benchmarks (w4_serving.sh, w5_prefix.sh): start and stop one
# `pagellm serve` on a shipped model shape with random weights and no tokenizer.
#   start_server MODEL LOG [FLAGS...]   # returns once /health is 200; sets $server (the pid)
#   stop_server LOG                      # SIGTERM (drain), waits, prints the exit status
PY=${PYTHON:-python3}
PORT=${PORT:-8011}

start_server() {
    local model=$1 log=$2
    shift 2
    $PY -m pagellm.entrypoints.cli.main serve "pagellm/bench/configs/$model" --load-format dummy \
        --skip-tokenizer-init --served-model-name "$model" --port "$PORT" --max-model-len 4096 \
        --disable-log-requests "$@" > "$log" 2>&1 &
    server=$!
    for _ in $(seq 600); do
        if ! kill -0 $server 2>/dev/null; then
            echo "server exited during startup:"; tail -40 "$log"; return 1
        fi
        curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
        sleep 1
    done
    grep -E "KV cache|CUDA graph|Loaded" "$log" | tail -4
}

stop_server() {
    kill -TERM $server
    wait $server
    echo "server exit status: $?"
    tail -3 "$1"
}
