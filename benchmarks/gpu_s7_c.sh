#!/usr/bin/env bash
# Session 7, third GPU call (issue 10, then issue 9): the decode GEMVs' GPU tests, the config
# sweep (written to $OUT/gemv_configs.json and used by the W9 runs through
# PAGELLM_QUANT_GEMV_CONFIGS), W9 at W1 (bf16 / fp8 / GPTQ), and W1 at TP=2 again (the fused
# all-reduce now chosen from the fastest of three timings). Command: bash benchmarks/gpu_s7_c.sh
source benchmarks/gpu_setup.sh
export PYTHONPATH=/tmp/site:.
START=$SECONDS
left() { [ $((SECONDS - START)) -lt $1 ]; }
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_quant_gemv_gpu.py \
  tests/gpu/test_quant_kernels.py --timeout=120 2>&1 | grep -E "passed|failed|Error|assert" \
  | cut -c1-300 | tail -8
timeout 200 python3 benchmarks/quant_gemv_bench.py --sweep --write-configs $OUT/gemv_configs.json \
  > $OUT/quant_gemv.log 2>&1; echo "sweep rc=$?"; grep -v "^TUNED\|^    (" $OUT/quant_gemv.log | tail -40
[ -s $OUT/gemv_configs.json ] && export PAGELLM_QUANT_GEMV_CONFIGS=$OUT/gemv_configs.json
source benchmarks/w1_lib.sh
w1() { local name=$1; shift; w1_run "$name" 110 --dtype bfloat16 "$@"; }
make_quantized_config gptq '{"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": false, "sym": true}'
w1 bf16 --model llama-3.1-8b
w1 fp8 --model llama-3.1-8b --quantization fp8
left 470 && w1 gptq --model /tmp/w9-models/gptq --quantization gptq_marlin
[ "$(nvidia-smi -L | wc -l)" -ge 2 ] && left 500 && w1 tp2 --model llama-3.1-8b -tp 2
echo "elapsed $((SECONDS - START)) s"
