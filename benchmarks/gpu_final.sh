#!/usr/bin/env bash
# Device run 3: engine GPU tests with Triton norm/activation on, then W1, W2, W3.
source benchmarks/gpu_setup.sh
set -o pipefail
CLI="python3 -m pagellm.entrypoints.cli.main"
timeout 100 python3 -m pytest -q tests/gpu/test_engine_gpu.py -p no:cacheprovider 2>&1 | tee $OUT/gpu_engine_tests.log | tail -2
timeout 80 $CLI bench latency --model llama-3.1-8b --input-len 128 --output-len 256 --batch-size 1 \
  --num-iters-warmup 1 --num-iters 3 --max-model-len 2048 --output-json $OUT/w1.json 2>&1 \
  | tee $OUT/w1.log | grep -E "Avg latency|decode"
timeout 100 $CLI bench throughput --model qwen3-0.6b --num-prompts 256 --seed 0 \
  --random-input-len-range 100 1024 --random-output-len-range 100 1024 --max-model-len 4096 \
  --disable-tqdm --output-json $OUT/w2.json 2>&1 | tee $OUT/w2.log | grep -E "Throughput"
timeout 120 $CLI bench throughput --model llama-3.1-8b --num-prompts 500 --input-len 1024 \
  --output-len 512 --max-model-len 2048 --disable-tqdm --output-json $OUT/w3.json 2>&1 \
  | tee $OUT/w3.log | grep -E "Throughput"
