#!/usr/bin/env bash
# Device run 1: GPU tests, then small versions of W1/W2 to shake out GPU-only bugs.
source benchmarks/gpu_setup.sh
set -o pipefail
python3 -m pytest -q tests/gpu -x -p no:cacheprovider 2>&1 | tee $OUT/gpu_tests.log | tail -25
python3 benchmarks/ceilings.py
timeout 240 python3 -m pagellm.entrypoints.cli.main bench latency --model llama-3.1-8b \
  --input-len 128 --output-len 256 --batch-size 1 --num-iters-warmup 1 --num-iters 3 \
  --max-model-len 2048 --output-json $OUT/w1.json 2>&1 | tee $OUT/w1.log | grep -v it/s | tail -15
