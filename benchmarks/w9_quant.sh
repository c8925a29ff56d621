#!/usr/bin/env bash
# W9 (BENCHMARKS.md), weight part: Llama-3.1-8B shapes with random weights on one H200,
# bf16 vs fp8 (W8A8, quantized at load) vs W4A16 (GPTQ and AWQ checkpoint formats, random
# packed weights), side by side in one run:
#   bash benchmarks/w9_quant.sh w1     # W1: batch-1 decode (bench latency)
#   bash benchmarks/w9_quant.sh w3     # W3: offline throughput ($W3_PROMPTS requests, default 500)
#   bash benchmarks/w9_quant.sh all
#   PAGELLM_WNA16_UNPACK=rows bash benchmarks/w9_quant.sh w1   # the other W4A16 unpack variant
# The W4A16 models are the shipped config.json plus a quantization_config (load_format=dummy
# fills qweight/qzeros/scales with random packed values of the checkpoint's shapes). Logs and
# JSON go to $OUT; the last lines print decode tokens/s or throughput with ratios to bf16.
# At batch 1 the quantized linears take the weight-only decode GEMVs
# (pagellm/ops/triton/quant_gemv.py; the W1 lines show its "Weight-only GEMV" log line);
# benchmarks/quant_gemv_bench.py times them per shape.
source benchmarks/gpu_setup.sh
set -o pipefail
CLI="python3 -m pagellm.entrypoints.cli.main"
W3_PROMPTS=${W3_PROMPTS:-500}
MODELS=/tmp/w9-models
source benchmarks/w1_lib.sh          # make_quantized_config (into $MODELS)
make_quantized_config gptq '{"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": false, "sym": true}'
make_quantized_config awq '{"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": true, "version": "gemm"}'
w1() {
  local name=$1; shift
  timeout 200 $CLI bench latency --input-len 128 --output-len 256 --batch-size 1 \
    --num-iters-warmup 1 --num-iters 3 --max-model-len 2048 --dtype bfloat16 \
    --output-json $OUT/w1_$name.json "$@" > $OUT/w1_$name.log 2>&1
  echo "W1 $name rc=$? $(grep -E 'decode' $OUT/w1_$name.log | tail -1)"
  grep -E "Loaded|KV cache:|Weight-only GEMV" $OUT/w1_$name.log | tail -3
}
w3() {
  local name=$1; shift
  timeout 300 $CLI bench throughput --num-prompts $W3_PROMPTS --input-len 1024 --output-len 512 \
    --max-model-len 2048 --dtype bfloat16 --disable-tqdm \
    --output-json $OUT/w3_$name.json "$@" > $OUT/w3_$name.log 2>&1
  echo "W3 $name rc=$? $(grep -E 'Throughput' $OUT/w3_$name.log | tail -1)"
  grep -E "Loaded|KV cache:" $OUT/w3_$name.log | tail -2
}
run_all() {  # $1 = w1 | w3
  $1 bf16 --model llama-3.1-8b
  $1 fp8 --model llama-3.1-8b --quantization fp8
  $1 gptq --model $MODELS/gptq --quantization gptq_marlin
  $1 awq --model $MODELS/awq
}
case "$1" in
  w1) run_all w1 ;;
  w3) run_all w3 ;;
  all) run_all w1; run_all w3 ;;
esac
python3 - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
for workload, key in (("w1", "decode_tokens_per_second"), ("w3", "output_tokens_per_second")):
    results = {p.stem.split("_", 1)[1]: json.loads(p.read_text())
               for p in sorted(out.glob(f"{workload}_*.json"))}
    if "bf16" not in results:
        continue
    base = results["bf16"].get(key)
    for name, result in results.items():
        value = result.get(key)
        ratio = value / base if value and base else None
        print(f"{workload} {name:5s} {key}={value} ratio_to_bf16={ratio and round(ratio, 2)}")
PY
