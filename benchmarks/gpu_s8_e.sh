#!/usr/bin/env bash
# Session 8, last call (two H200s; issue 9): W1 at TP=1 and TP=2 with this session's kernels
# (dense bf16 GEMV table, SiLU-fused gate_up, fused rotary + KV write, ticket split-KV), W4 at
# rate inf on one GPU vs DP=2 with the in-flight-aware balancer, then (time allowing) W4 on one
# GPU with max_num_seqs 1024 (vLLM's default on >= 70 GiB GPUs). Command: bash benchmarks/gpu_s8_e.sh
source benchmarks/gpu_setup.sh
export PYTHONPATH=/tmp/site:.
START=$SECONDS
left() { [ $((SECONDS - START)) -lt $1 ]; }
source benchmarks/w1_lib.sh
w1() { local name=$1; shift; w1_run "$name" 75 --dtype bfloat16 "$@"; }
w1 tp1 --model llama-3.1-8b
w1 tp2 --model llama-3.1-8b -tp 2
export W4_NUM_PROMPTS=${W4_NUM_PROMPTS:-1000}
w4() {  # NAME [server flags]
  local name=$1; shift
  W4_SERVER_FLAGS="$*" OUT=$OUT/w4_$name timeout 150 bash benchmarks/w4_serving.sh inf > $OUT/w4_$name.txt 2>&1
  echo "W4 $name: $(grep -E '^ +inf \|' $OUT/w4_$name.txt | tail -1)"
  grep -E 'request_success_total|bench client' $OUT/w4_$name.txt | sed 's/,model_name="llama-3.1-8b"//' | cut -c1-160
}
left 200 && w4 1gpu
left 330 && w4 dp2 -dp 2 --api-server-count 2
left 470 && w4 1gpu_seqs1024 --max-num-seqs 1024
echo "elapsed $((SECONDS - START)) s"
