#!/usr/bin/env bash
# W4 (../shared/BENCHMARKS.md): `pagellm serve` on Llama-3.1-8B shapes with random weights
# (load_format=dummy, no tokenizer: token-id prompts), then `pagellm bench serving` with random
# 1024-token prompts and 128 output tokens (EOS ignored) at each request rate given.
#
#   source benchmarks/gpu_setup.sh; bash benchmarks/w4_serving.sh inf 16 4     # on the device
#   W4_MODEL=qwen3-0.6b W4_NUM_PROMPTS=8 W4_INPUT_LEN=64 W4_OUTPUT_LEN=8 \
#     W4_SERVER_FLAGS="--device cpu" bash benchmarks/w4_serving.sh inf          # a CPU dry run
#   W4_SERVER_FLAGS="-dp 2 --api-server-count 2" bash benchmarks/w4_serving.sh inf  # 2 GPUs
#
# Writes under $OUT (default /tmp/w4): the server log, one bench log and JSON per rate, the
# bench client's CPU seconds (client_cpu_rate_R.txt), the CPU seconds each server process (the API server or the --api-server-count supervisor, and
# its children: API servers, engine cores; the log's first lines name their pids) used during
# each rate (cpu_rate_R.txt), and prints a summary table last.
set -u
OUT=${OUT:-/tmp/w4}
mkdir -p "$OUT"
MODEL=${W4_MODEL:-llama-3.1-8b}
NUM_PROMPTS=${W4_NUM_PROMPTS:-1000}
INPUT_LEN=${W4_INPUT_LEN:-1024}
OUTPUT_LEN=${W4_OUTPUT_LEN:-128}
PORT=${W4_PORT:-8011}
RATES=${*:-inf 16 4}
source "$(dirname "$0")/serving_lib.sh"

# shellcheck disable=SC2086  # W4_SERVER_FLAGS is a list of flags
start_server "$MODEL" "$OUT/server_$MODEL.log" ${W4_SERVER_FLAGS:-} || exit 1

cpu_seconds() {   # "pid seconds" of the server and its children (utime + stime)
    local tick pid
    tick=$(getconf CLK_TCK)
    for pid in $server $(pgrep -P "$server"); do
        [ -r "/proc/$pid/stat" ] && awk -v t="$tick" -v p="$pid" \
            '{printf "%s %.2f\n", p, ($14 + $15) / t}' "/proc/$pid/stat"
    done
}

failures=0
for rate in $RATES; do
    cpu_seconds > "$OUT/cpu_before_rate_$rate.txt"
    rm -f "$OUT/w4_${MODEL}_rate_$rate.json"        # no stale numbers in the table
    TIMEFORMAT="bench client: %U user + %S sys CPU s, %R s wall"
    { time $PY -m pagellm.entrypoints.cli.main bench serving --port "$PORT" --model "$MODEL" \
        --dataset-name random --num-prompts "$NUM_PROMPTS" --random-input-len "$INPUT_LEN" \
        --random-output-len "$OUTPUT_LEN" --ignore-eos --request-rate "$rate" \
        --percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,99 --disable-tqdm \
        --output-json "$OUT/w4_${MODEL}_rate_$rate.json" > "$OUT/w4_${MODEL}_rate_$rate.log" 2>&1
    } 2> "$OUT/client_cpu_rate_$rate.txt"
    status=$?
    cpu_seconds > "$OUT/cpu_after_rate_$rate.txt"
    awk 'NR == FNR {before[$1] = $2; next} {printf "pid %s: %.1f CPU s\n", $1, $2 - before[$1]}' \
        "$OUT/cpu_before_rate_$rate.txt" "$OUT/cpu_after_rate_$rate.txt" > "$OUT/cpu_rate_$rate.txt"
    [ $status -ne 0 ] && failures=$((failures + 1))
    echo "rate $rate: exit $status"; tail -32 "$OUT/w4_${MODEL}_rate_$rate.log"
    cat "$OUT/cpu_rate_$rate.txt" "$OUT/client_cpu_rate_$rate.txt"
    # per replica (DP): requests finished and tokens, from the engine-labelled series
    curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^vllm:(request_success|generation_tokens|prompt_tokens)_total\{.*engine="[0-9]+"' \
        | sed 's/^/  /'
done

curl -s "http://127.0.0.1:$PORT/metrics" | grep -E "^(vllm:(num_preemptions|prefix_cache_hits|generation_tokens)|pagellm:api_server_http_requests)_total" \
    > "$OUT/metrics_after.txt"
stop_server "$OUT/server_$MODEL.log"

$PY - "$OUT" "$MODEL" <<'EOF'
import json, pathlib, sys
out, model = pathlib.Path(sys.argv[1]), sys.argv[2]
print(f"\nW4 {model}: rate | done | failed | dur s | out tok/s | TTFT med/p99 ms | TPOT med/p99 ms | ITL med/p99 ms")
for path in sorted(out.glob(f"w4_{model}_rate_*.json")):
    d = json.loads(path.read_text())
    rate = path.stem.rsplit("_", 1)[1]
    print(f"{rate:>5} | {d['completed']:>4} | {d['failed']:>4} | {d['duration']:6.1f} | {d['output_throughput']:8.0f} | "
          f"{d['median_ttft_ms']:7.0f} / {d['p99_ttft_ms']:7.0f} | "
          f"{d['median_tpot_ms']:6.1f} / {d['p99_tpot_ms']:6.1f} | "
          f"{d['median_itl_ms']:6.1f} / {d['p99_itl_ms']:6.1f}")
EOF
exit $((failures > 0))
