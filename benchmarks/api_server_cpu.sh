#!/usr/bin/env bash
# CPU seconds per streamed output token of each `pagellm serve` process (API server(s), engine
# core(s)) on a tiny random Llama on CPU, at request rate inf (RESULTS.md "API server CPU per
# streamed output token"). Run from the repository root:
#
#   bash benchmarks/api_server_cpu.sh                                   # text prompts
#   SERVER_FLAGS="--skip-tokenizer-init" N=200 bash benchmarks/api_server_cpu.sh   # token ids (W4)
#   SERVER_FLAGS="--api-server-count 2" bash benchmarks/api_server_cpu.sh
#
# Writes under $OUT (default /tmp/api_server_cpu): the tiny model, the server and bench logs.
set -u
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/api_server_cpu}
PORT=${PORT:-8391}
mkdir -p "$OUT"
export PYTHONPATH=.
DIR=$OUT/tiny-llama
[ -d "$DIR" ] || $PY -c "from tests.helpers.tiny_models import make_tiny_model_dir as m; m('$OUT', 'llama')"
# shellcheck disable=SC2086  # SERVER_FLAGS is a list of flags
$PY -m pagellm.entrypoints.cli.main serve "$DIR" --device cpu --port "$PORT" --max-model-len 512 \
    --kv-cache-memory-bytes $((64 * 2**20)) --max-num-seqs 128 --disable-log-requests \
    ${SERVER_FLAGS:-} > "$OUT/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 1; done
pids="$SERVER $(pgrep -P $SERVER | tr '\n' ' ')"
cpu() { for p in $pids; do [ -r /proc/$p/stat ] && echo "$p $(awk '{print $14 + $15}' /proc/$p/stat)"; done; }
cpu > "$OUT/before"
$PY -m pagellm.entrypoints.cli.main bench serving --port "$PORT" --model "$DIR" \
    --dataset-name random --num-prompts "${N:-300}" --random-input-len 256 \
    --random-output-len 64 --ignore-eos --request-rate inf --disable-tqdm \
    --output-json "$OUT/bench.json" > "$OUT/bench.log" 2>&1
cpu > "$OUT/after"
kill -TERM $SERVER; wait $SERVER
$PY - "$OUT" <<'EOF'
import json, os, sys
out, tick = sys.argv[1], os.sysconf("SC_CLK_TCK")
before = dict(line.split() for line in open(f"{out}/before"))
after = dict(line.split() for line in open(f"{out}/after"))
bench = json.load(open(f"{out}/bench.json"))
tokens = bench["total_output_tokens"]
print(f"completed {bench['completed']}, {bench['duration']:.1f} s, "
      f"{bench['output_throughput']:.0f} output tok/s, {tokens} output tokens")
for pid, ticks in after.items():
    seconds = (int(ticks) - int(before.get(pid, 0))) / tick
    print(f"pid {pid}: {seconds:.2f} CPU s, {1e6 * seconds / tokens:.0f} us per output token")
EOF
