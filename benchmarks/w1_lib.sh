# Shared by the session-7 GPU scripts (source it after gpu_setup.sh; $OUT must be set).
CLI="python3 -m pagellm.entrypoints.cli.main"

w1_run() {  # NAME TIMEOUT_S [bench latency flags]: W1 (batch 1, 128 in / 256 out) into
            # $OUT/w1_NAME.{log,json}; prints the decode line and the all-reduce / GEMV line
  local name=$1 limit=$2; shift 2
  timeout "$limit" $CLI bench latency --input-len 128 --output-len 256 --batch-size 1 \
    --num-iters-warmup 1 --num-iters 3 --max-model-len 2048 \
    --output-json "$OUT/w1_$name.json" "$@" > "$OUT/w1_$name.log" 2>&1
  echo "W1 $name rc=$? $(grep -E 'decode' "$OUT/w1_$name.log" | tail -1)"
  grep -h "custom all-reduce\|Weight-only GEMV" "$OUT/w1_$name.log" | head -1 | cut -c1-900
}

make_quantized_config() {  # NAME QUANTIZATION_CONFIG_JSON: Llama-3.1-8B's shipped config.json
                           # with that quantization_config, in ${MODELS:-/tmp/w9-models}/NAME
  local dir=${MODELS:-/tmp/w9-models}/$1
  mkdir -p "$dir"
  python3 - pagellm/bench/configs/llama-3.1-8b/config.json "$dir/config.json" "$2" <<'PY'
import json, sys
config = json.load(open(sys.argv[1]))
config["quantization_config"] = json.loads(sys.argv[3])
config["torch_dtype"] = "bfloat16"
json.dump(config, open(sys.argv[2], "w"), indent=1)
PY
}
