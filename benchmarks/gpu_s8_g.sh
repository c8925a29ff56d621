#!/usr/bin/env bash
# Session 8, closing call (two H200s): the GPU tests that exercise the merged kernels under
# TP=2/PP=2/DP=2 and the quantized paths, then W1 at TP=1 and TP=2 again with the sampler's
# argmax fallback gone. Command: bash benchmarks/gpu_s8_g.sh   (carry .whl)
source benchmarks/gpu_setup.sh
export PYTHONPATH=/tmp/site:.
START=$SECONDS
left() { [ $((SECONDS - START)) -lt $1 ]; }
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_parallel_gpu.py \
  tests/gpu/test_quant_gemv_gpu.py tests/gpu/test_custom_all_reduce_gpu.py > $OUT/gpu_tests.log 2>&1
echo "GPU tests rc=$? [$((SECONDS - START)) s]: $(tail -1 $OUT/gpu_tests.log)"
grep -E "^(FAILED|ERROR)|Error:|assert " $OUT/gpu_tests.log | head -12 | cut -c1-300
source benchmarks/w1_lib.sh
w1() { local name=$1; shift; w1_run "$name" 75 --dtype bfloat16 "$@"; }
left 240 && w1 tp1 --model llama-3.1-8b
left 320 && w1 tp2 --model llama-3.1-8b -tp 2
echo "elapsed $((SECONDS - START)) s"
