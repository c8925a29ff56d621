#!/usr/bin/env bash
# Session 10, first call (one H200; issue 10): the rewritten W4A16 decode GEMV (next tile in
# flight, zero point folded out of the per-value path, bf16 activations read as int32 pairs,
# LOP3 masks as immediates): GPU tests, the launch sweep (symmetric, as W9's GPTQ checkpoint
# loads), then W9 at W1: bf16 vs GPTQ W4A16 with the sweep's launches.
# Command: bash benchmarks/gpu_s10_a.sh   (carry .whl)
source benchmarks/gpu_setup.sh
export PYTHONPATH=/tmp/site:.
START=$SECONDS
left() { [ $((SECONDS - START)) -lt $1 ]; }
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_quant_gemv_gpu.py > $OUT/gpu_tests.log 2>&1
echo "GPU tests rc=$? [$((SECONDS - START)) s]: $(tail -1 $OUT/gpu_tests.log)"
grep -E "^(FAILED|ERROR)|Error:|assert " $OUT/gpu_tests.log | head -12 | cut -c1-300
timeout 200 python3 benchmarks/quant_gemv_bench.py --no-table --sweep --kernels wna16 \
  --shapes qkv,o,gate_up,down --rows 1,2 --write-configs $OUT/wna16.json > $OUT/sweep.log 2>&1
echo "sweep rc=$? [$((SECONDS - START)) s]"; grep -E "^\|" $OUT/sweep.log | grep -v "^|---"
source benchmarks/w1_lib.sh
w1() { local name=$1; shift; w1_run "$name" 75 --dtype bfloat16 "$@"; }
make_quantized_config gptq '{"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": false, "sym": true}'
left 380 && w1 bf16 --model llama-3.1-8b
[ -s $OUT/wna16.json ] && export PAGELLM_QUANT_GEMV_CONFIGS=$OUT/wna16.json
left 460 && w1 gptq --model /tmp/w9-models/gptq --quantization gptq_marlin
left 520 && timeout 60 python3 benchmarks/quant_gemv_bench.py --no-table --sweep --kernels wna16 \
  --shapes o,down --rows 1 --asymmetric > $OUT/sweep_asym.log 2>&1 && grep -E "^\| (o|down)" $OUT/sweep_asym.log
echo "elapsed $((SECONDS - START)) s"
