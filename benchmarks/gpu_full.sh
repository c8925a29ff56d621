#!/usr/bin/env bash
# One device run: GPU tests, ceilings, W1, W2, W3, decode profile, W7, attention kernels.
# Logs and JSON under $OUT; a short summary last.
source benchmarks/gpu_setup.sh
set -o pipefail
CLI="python3 -m pagellm.entrypoints.cli.main"
timeout 150 python3 -m pytest -q tests/gpu -p no:cacheprovider 2>&1 | tee $OUT/gpu_tests.log | tail -3
python3 benchmarks/ceilings.py
timeout 90 $CLI bench latency --model llama-3.1-8b --input-len 128 --output-len 256 --batch-size 1 \
  --num-iters-warmup 1 --num-iters 3 --max-model-len 2048 --output-json $OUT/w1.json 2>&1 \
  | tee $OUT/w1.log | grep -E "Avg latency|decode"
timeout 150 $CLI bench throughput --model qwen3-0.6b --num-prompts 256 --seed 0 \
  --random-input-len-range 100 1024 --random-output-len-range 100 1024 --max-model-len 4096 \
  --disable-tqdm --output-json $OUT/w2.json 2>&1 | tee $OUT/w2.log | grep -E "Throughput|KV cache:"
timeout 150 $CLI bench throughput --model llama-3.1-8b --num-prompts 500 --input-len 1024 \
  --output-len 512 --max-model-len 2048 --disable-tqdm --output-json $OUT/w3.json 2>&1 \
  | tee $OUT/w3.log | grep -E "Throughput|KV cache:"
timeout 60 python3 benchmarks/profile_decode.py --model llama-3.1-8b 2>&1 | tee $OUT/profile_w1.log | tail -1
timeout 30 python3 benchmarks/w7_engine_overhead.py --device cuda 2>&1 | tail -1
timeout 60 python3 benchmarks/bench_attention.py 2>&1 | tee $OUT/bench_attention.log | tail -12
