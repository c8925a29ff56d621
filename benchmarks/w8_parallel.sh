#!/usr/bin/env bash
# W8 (BENCHMARKS.md) on two GPUs of one host, Llama-3.1-8B shapes with random weights:
#   bash benchmarks/w8_parallel.sh w1   # W1 decode at TP=1 and TP=2
#   bash benchmarks/w8_parallel.sh w3   # W3 at TP=1, TP=2, PP=2, DP=2 ($W3_PROMPTS requests, default 500)
# Each run's log and JSON go to $OUT; the last lines print a short table.
source benchmarks/gpu_setup.sh
set -o pipefail
CLI="python3 -m pagellm.entrypoints.cli.main"
W3_PROMPTS=${W3_PROMPTS:-500}
memory() {  # the per-rank load and KV lines of a run's log
  grep -E "Loaded|KV cache:" "$1" | sed -E 's/^[A-Z]+ [0-9-]+ [0-9:.]+ //' | sort -u | head -8
}
w1() {
  local name=$1; shift
  timeout 150 $CLI bench latency --model llama-3.1-8b --input-len 128 --output-len 256 \
    --batch-size 1 --num-iters-warmup 1 --num-iters 3 --max-model-len 2048 \
    --output-json $OUT/w1_$name.json "$@" > $OUT/w1_$name.log 2>&1
  echo "W1 $name rc=$? $(grep -E 'decode' $OUT/w1_$name.log | tail -1)"
  memory $OUT/w1_$name.log
}
w3() {
  local name=$1; shift
  timeout 200 $CLI bench throughput --model llama-3.1-8b --num-prompts $W3_PROMPTS \
    --input-len 1024 --output-len 512 --max-model-len 2048 --disable-tqdm \
    --output-json $OUT/w3_$name.json "$@" > $OUT/w3_$name.log 2>&1
  echo "W3 $name rc=$? $(grep -E 'Throughput' $OUT/w3_$name.log | tail -1)"
  memory $OUT/w3_$name.log
}
case "$1" in
  w1) w1 tp1; w1 tp2 -tp 2 ;;
  w3) w3 tp1; w3 tp2 -tp 2; w3 pp2 -pp 2; w3 dp2 -dp 2 ;;
esac
