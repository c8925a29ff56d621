#!/usr/bin/env bash
# Session 7, second GPU call (two H200s): the push variant of the one-shot all-reduce and the
# context-sized split-KV segments (tests, W1 TP=1 vs TP=2, TP=2 profile), then the weight-only
# decode GEMVs of issue 10 (GPU tests, per-shape table). Command: bash benchmarks/gpu_s7_b.sh
source benchmarks/gpu_setup.sh
export PYTHONPATH=/tmp/site:.
START=$SECONDS
left() { [ $((SECONDS - START)) -lt $1 ]; }
timeout 120 python3 -m pytest -q -x -p no:cacheprovider tests/gpu/test_custom_all_reduce_gpu.py \
  --timeout=100 -s > $OUT/test_ar.log 2>&1; AR_RC=$?
grep -E "passed|failed|error|Error|rank 0: plain|assert" $OUT/test_ar.log | cut -c1-900 | tail -12
[ $AR_RC != 0 ] && tail -40 $OUT/test_ar.log | cut -c1-300
source benchmarks/w1_lib.sh
run() { local name=$1; shift; w1_run "$name" 150 --model llama-3.1-8b "$@"; }
run tp1
[ $AR_RC = 0 ] && run tp2 -tp 2
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_triton_kernels.py \
  tests/gpu/test_quant_gemv_gpu.py tests/gpu/test_quant_kernels.py --timeout=150 2>&1 \
  | grep -E "passed|failed|error|Error|assert" | cut -c1-400 | tail -14
left 450 && timeout 100 python3 benchmarks/quant_gemv_bench.py > $OUT/quant_gemv.log 2>&1; tail -30 $OUT/quant_gemv.log
left 500 && [ $AR_RC = 0 ] && { timeout 90 python3 benchmarks/profile_decode.py -tp 2 > $OUT/prof_w1_tp2.log 2>&1;
  grep -v -E "^(INFO|WARNING|/opt|  _warn)" $OUT/prof_w1_tp2.log | tail -22 | cut -c1-60,110-200; }
echo "elapsed $((SECONDS - START)) s"
