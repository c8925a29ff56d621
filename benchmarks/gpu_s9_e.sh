#!/usr/bin/env bash
# Session 9, fifth call (two H200s; issue 9): the one-shot kernel's embedding (lookup fused with
# its all-reduce) and all-gather (LM head logits, float32) modes: GPU tests, TP=2 greedy vs
# NCCL, then W1 TP=2 / TP=1 twice each, alternating. Command: bash benchmarks/gpu_s9_e.sh
source benchmarks/gpu_setup.sh
export PYTHONPATH=/tmp/site:.
START=$SECONDS
source benchmarks/w1_lib.sh
timeout 220 python3 -m pytest -q tests/gpu/test_custom_all_reduce_gpu.py tests/gpu/test_parallel_gpu.py \
  -k "custom or one_shot or embedding" 2>&1 | grep -E "passed|failed|Error|assert|failures" | head -12
w1() { local name=$1; shift; w1_run "$name" 75 --dtype bfloat16 "$@" | grep W1; }
w1 tp2_a --model llama-3.1-8b -tp 2
w1 tp1_a --model llama-3.1-8b
w1 tp2_b --model llama-3.1-8b -tp 2
w1 tp1_b --model llama-3.1-8b
echo "elapsed $((SECONDS - START)) s"
