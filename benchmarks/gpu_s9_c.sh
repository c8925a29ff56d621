#!/usr/bin/env bash
# Session 9, third call (two H200s): the PDL prefetch budget at W1: bf16 TP=1 at 4 / 12 MB,
# TP=2 at 4 / 8 MB, fp8 (W9) TP=1 without PDL and at 4 / 8 MB. Command: bash benchmarks/gpu_s9_c.sh
source benchmarks/gpu_setup.sh
export PYTHONPATH=/tmp/site:.
START=$SECONDS
source benchmarks/w1_lib.sh
w1() { local name=$1; shift; w1_run "$name" 75 --dtype bfloat16 "$@" | grep W1; }
PAGELLM_GEMV_PREFETCH_MB=4 w1 tp1_pdl4 --model llama-3.1-8b
PAGELLM_GEMV_PREFETCH_MB=12 w1 tp1_pdl12 --model llama-3.1-8b
PAGELLM_GEMV_PREFETCH_MB=4 w1 tp2_pdl4 --model llama-3.1-8b -tp 2
PAGELLM_GEMV_PREFETCH_MB=8 w1 tp2_pdl8 --model llama-3.1-8b -tp 2
PAGELLM_PDL=0 w1 fp8_nopdl --model llama-3.1-8b --quantization fp8
PAGELLM_GEMV_PREFETCH_MB=4 w1 fp8_pdl4 --model llama-3.1-8b --quantization fp8
PAGELLM_GEMV_PREFETCH_MB=8 w1 fp8_pdl8 --model llama-3.1-8b --quantization fp8
echo "elapsed $((SECONDS - START)) s"
