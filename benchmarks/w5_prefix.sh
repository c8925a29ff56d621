#!/usr/bin/env bash
# W5 (../shared/BENCHMARKS.md): shared prefix. 512 requests = one 2048-token prefix + 128
# unique tokens, 64 output tokens (EOS ignored), all sent at once, against `pagellm serve`
# with prefix caching on and then off, for each model shape (random weights, token ids).
#
#   source benchmarks/gpu_setup.sh; bash benchmarks/w5_prefix.sh                 # on the device
#   W5_MODELS=qwen3-0.6b W5_NUM_PROMPTS=4 W5_PREFIX_LEN=64 W5_INPUT_LEN=8 W5_OUTPUT_LEN=4 \
#     W5_SERVER_FLAGS="--device cpu --max-model-len 512" bash benchmarks/w5_prefix.sh  # CPU dry run
#
# Writes under $OUT (default /tmp/w5) and prints a summary table last.
set -u
OUT=${OUT:-/tmp/w5}
mkdir -p "$OUT"
MODELS=${W5_MODELS:-qwen3-0.6b llama-3.1-8b}
source "$(dirname "$0")/serving_lib.sh"

failures=0
for model in $MODELS; do
    for caching in on off; do
        flag=--enable-prefix-caching
        [ "$caching" = off ] && flag=--no-enable-prefix-caching
        log="$OUT/server_${model}_$caching.log"
        # shellcheck disable=SC2086  # W5_SERVER_FLAGS is a list of flags
        start_server "$model" "$log" $flag ${W5_SERVER_FLAGS:-} || exit 1
        rm -f "$OUT/w5_${model}_$caching.json"      # no stale numbers in the table
        $PY -m pagellm.entrypoints.cli.main bench serving --port "$PORT" --model "$model" \
            --dataset-name random --num-prompts "${W5_NUM_PROMPTS:-512}" \
            --random-prefix-len "${W5_PREFIX_LEN:-2048}" --random-input-len "${W5_INPUT_LEN:-128}" \
            --random-output-len "${W5_OUTPUT_LEN:-64}" --ignore-eos --request-rate inf \
            --percentile-metrics ttft,tpot,e2el --metric-percentiles 50,99 --disable-tqdm \
            --output-json "$OUT/w5_${model}_$caching.json" > "$OUT/w5_${model}_$caching.log" 2>&1
        status=$?
        [ $status -ne 0 ] && failures=$((failures + 1))
        echo "$model caching $caching: exit $status"
        curl -s "http://127.0.0.1:$PORT/metrics" | grep -E "^vllm:prefix_cache_(queries|hits)_total"
        stop_server "$log"
    done
done

$PY - "$OUT" <<'PYEOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
print("\nW5: model | caching | done | failed | dur s | mean TTFT ms | median TTFT ms | out tok/s | total tok/s")
for path in sorted(out.glob("w5_*.json")):
    d = json.loads(path.read_text())
    model, caching = path.stem[3:].rsplit("_", 1)
    print(f"{model} | {caching} | {d['completed']} | {d['failed']} | {d['duration']:.1f} | {d['mean_ttft_ms']:.0f} | "
          f"{d['median_ttft_ms']:.0f} | {d['output_throughput']:.0f} | {d['total_token_throughput']:.0f}")
PYEOF
exit $((failures > 0))
