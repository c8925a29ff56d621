#!/usr/bin/env bash
# (ran at a0b29d5; the norm/all-reduce PDL it measured was reverted in 89711cd: slower)
# Session 9, fourth call (two H200s): PDL for the RMSNorm and one-shot all-reduce kernels too
# (they wait first thing), 8 MB GEMV prefetch by default: GPU tests (PDL, all-reduce at TP=2,
# engine greedy equality), then W1 TP=1 / TP=2 with every PDL kind and with GEMVs only.
# Command: bash benchmarks/gpu_s9_d.sh
source benchmarks/gpu_setup.sh
export PYTHONPATH=/tmp/site:.
START=$SECONDS
source benchmarks/w1_lib.sh
timeout 170 python3 -m pytest -q tests/gpu/test_pdl_gpu.py tests/gpu/test_custom_all_reduce_gpu.py \
  tests/gpu/test_engine_gpu.py 2>&1 | grep -E "passed|failed|Error|assert" | head -12
w1() { local name=$1; shift; w1_run "$name" 75 --dtype bfloat16 "$@" | grep W1; }
w1 tp1_all --model llama-3.1-8b
w1 tp2_all --model llama-3.1-8b -tp 2
PAGELLM_PDL_KERNELS=gemv w1 tp1_gemv --model llama-3.1-8b
PAGELLM_PDL_KERNELS=gemv w1 tp2_gemv --model llama-3.1-8b -tp 2
echo "elapsed $((SECONDS - START)) s"
