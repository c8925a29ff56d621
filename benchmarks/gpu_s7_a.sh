#!/usr/bin/env bash
# Session 7, first GPU call (two H200s, issue 9): the Triton one-shot all-reduce (plain and fused
# with add + RMSNorm) tests, the TP/graph/staging GPU tests, then W1 at TP=1 and TP=2 with
# pagellm's all-reduce kernel on and off (PAGELLM_TRITON_ALL_REDUCE=0: session 4's torch
# one-shot), and a rank-0 profile of the TP=2 decode step. Command: bash benchmarks/gpu_s7_a.sh
source benchmarks/gpu_setup.sh
export PYTHONPATH=/tmp/site:.
timeout 120 python3 -m pytest -q -x -p no:cacheprovider tests/gpu/test_custom_all_reduce_gpu.py \
  --timeout=100 -s > $OUT/test_ar.log 2>&1; AR_RC=$?
grep -E "passed|failed|error|Error|rank 0: plain|assert" $OUT/test_ar.log | cut -c1-900 | tail -12
if [ $AR_RC != 0 ]; then tail -60 $OUT/test_ar.log | cut -c1-300; exit 1; fi
timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/gpu/test_parallel_gpu.py \
  tests/gpu/test_staging_gpu.py tests/gpu/test_engine_gpu.py --timeout=180 2>&1 \
  | grep -E "passed|failed|error|Error|assert" | cut -c1-600 | tail -12
source benchmarks/w1_lib.sh
run() { local name=$1; shift; w1_run "$name" 150 --model llama-3.1-8b "$@"; }
run tp1_async
run tp2_triton -tp 2
PAGELLM_TRITON_ALL_REDUCE=0 run tp2_torch_one_shot -tp 2
timeout 120 python3 benchmarks/profile_decode.py -tp 2 > $OUT/prof_w1_tp2.log 2>&1
echo "PROFILE w1_tp2 rc=$?"
grep -v -E "^(INFO|WARNING|/opt|  _warn)" $OUT/prof_w1_tp2.log | tail -24 | cut -c1-60,110-200
