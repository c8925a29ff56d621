#!/usr/bin/env bash
# Session 4, second GPU call (two H200s): kernel tests, W1 TP ablation after the fused rotary,
# and per-rank profiles of W1 (batch 1) and a W3-like mix (64 x 1024-token prompts, 32 out) at
# TP=2 and PP=2. Command: bash benchmarks/gpu_s4_run2.sh
source benchmarks/gpu_setup.sh
export PYTHONPATH=/tmp/site:.
timeout 240 python3 -m pytest -q -x -p no:cacheprovider tests/gpu/test_triton_rotary.py \
  tests/gpu/test_engine_gpu.py tests/gpu/test_planner_gpu.py --timeout=200 -s 2>&1 \
  | grep -E "passed|failed|error|apart|Error" | tail -8
CLI="python3 -m pagellm.entrypoints.cli.main"
run() {
  local name=$1; shift
  timeout 170 $CLI bench latency --model llama-3.1-8b --input-len 128 --output-len 256 \
    --batch-size 1 --num-iters-warmup 1 --num-iters 3 --max-model-len 2048 \
    --output-json $OUT/w1_$name.json "$@" > $OUT/w1_$name.log 2>&1
  echo "W1 $name rc=$? $(grep -E 'decode' $OUT/w1_$name.log | tail -1)"
}
run tp1_async
run tp2_async_custom -tp 2
prof() {
  local name=$1; shift
  timeout 150 python3 benchmarks/profile_decode.py "$@" > $OUT/prof_$name.log 2>&1
  echo "PROFILE $name rc=$?"; grep -v -E "^(INFO|WARNING|/opt|  _warn)" $OUT/prof_$name.log | tail -22 | cut -c1-60,110-200
}
prof w1_tp1
prof w1_tp2 -tp 2
prof w3mix_tp2 -tp 2 --batch-size 64 --input-len 1024 --output-len 32
prof w3mix_pp2 -pp 2 --batch-size 64 --input-len 1024 --output-len 32
