#!/usr/bin/env bash
# Session 9, second call (two H200s): the PDL tests again (slow-writer test fixed, prefetch one
# bulk request per thread), the TP=2 all-reduce and split-K GPU tests, then W1 TP=1 / TP=2 with
# PDL + prefetch (24 and 8 MB) and without. Command: bash benchmarks/gpu_s9_b.sh
source benchmarks/gpu_setup.sh
export PYTHONPATH=/tmp/site:.
START=$SECONDS
left() { [ $((SECONDS - START)) -lt $1 ]; }
source benchmarks/w1_lib.sh
timeout 200 python3 -m pytest -q tests/gpu/test_pdl_gpu.py tests/gpu/test_custom_all_reduce_gpu.py \
  tests/gpu/test_gemv_split_k_gpu.py 2>&1 | grep -E "passed|failed|Error|assert" | head -12
w1() { local name=$1; shift; w1_run "$name" 75 --dtype bfloat16 "$@"; }
w1 tp1_pdl24 --model llama-3.1-8b
PAGELLM_PDL=0 w1 tp1_nopdl --model llama-3.1-8b
PAGELLM_GEMV_PREFETCH_MB=8 w1 tp1_pdl8 --model llama-3.1-8b
w1 tp2_pdl24 --model llama-3.1-8b -tp 2 | grep W1
PAGELLM_PDL=0 w1 tp2_nopdl --model llama-3.1-8b -tp 2 | grep W1
echo "elapsed $((SECONDS - START)) s"
