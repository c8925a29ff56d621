#!/usr/bin/env bash
# Session 9, first call (two H200s; issues 9 and 12): GPU tests of programmatic dependent
# launch (PDL) with the L2 weight prefetch and of the TP=2 custom all-reduce check, then W1 at
# TP=1 and TP=2 with PDL on and off (PAGELLM_PDL=0), and TP=1 at two prefetch budgets.
# Command: bash benchmarks/gpu_s9_a.sh
source benchmarks/gpu_setup.sh
export PYTHONPATH=/tmp/site:.
START=$SECONDS
left() { [ $((SECONDS - START)) -lt $1 ]; }
source benchmarks/w1_lib.sh
timeout 150 python3 -m pytest -q -x tests/gpu/test_pdl_gpu.py tests/gpu/test_custom_all_reduce_gpu.py \
  tests/gpu/test_gemv_split_k_gpu.py 2>&1 | tail -4
w1() { local name=$1; shift; w1_run "$name" 75 --dtype bfloat16 "$@"; }
w1 tp1_pdl --model llama-3.1-8b
w1 tp2_pdl --model llama-3.1-8b -tp 2
PAGELLM_PDL=0 w1 tp1_nopdl --model llama-3.1-8b
PAGELLM_PDL=0 w1 tp2_nopdl --model llama-3.1-8b -tp 2
left 420 && PAGELLM_GEMV_PREFETCH_MB=0 w1 tp1_pf0 --model llama-3.1-8b
left 480 && PAGELLM_GEMV_PREFETCH_MB=48 w1 tp1_pf48 --model llama-3.1-8b
left 540 && timeout 50 python3 -m pytest -q tests/gpu/test_engine_gpu.py 2>&1 | tail -2
echo "elapsed $((SECONDS - START)) s"
