#!/usr/bin/env bash
# Session 6, first GPU call (one H200): GPU tests of the LoRA (CUDA graphs, fully sharded) and
# GGUF Triton kernels, W11 with LoRA under CUDA graphs, the spec-decode verify cost (issue 14)
# and W2-structured (issue 13). Command: bash benchmarks/gpu_s6_a.sh   (carry .whl)
source benchmarks/gpu_setup.sh
export PYTHONPATH=/tmp/site:.
T0=$(date +%s)
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_lora_kernels.py \
  tests/gpu/test_gguf_kernels.py --timeout=140 > $OUT/gpu_tests.log 2>&1
echo "TESTS rc=$? $(tail -1 $OUT/gpu_tests.log) [$(( $(date +%s) - T0 )) s]"
grep -E "^(FAILED|ERROR)|Error|assert" $OUT/gpu_tests.log | head -12
timeout 190 python3 benchmarks/w11_lora.py --adapter-dir /tmp/w11-adapters --num-prompts 128 \
  > $OUT/w11.log 2>&1
echo "W11 rc=$? [$(( $(date +%s) - T0 )) s]"; grep -E "^\{" $OUT/w11.log | cut -c1-400
timeout 90 python3 benchmarks/spec_verify_cost.py --model llama-3.1-8b --load-format dummy \
  --dtype bfloat16 --batch-size 1 64 --k 4 --steps 15 > $OUT/spec_verify.log 2>&1
echo "SPEC rc=$? [$(( $(date +%s) - T0 )) s]"; grep -E "^batch" $OUT/spec_verify.log
timeout 140 python3 benchmarks/w2_structured.py --model .whl/w2model --load-format dummy \
  --num-prompts 256 > $OUT/w2s.log 2>&1
echo "W2S rc=$? [$(( $(date +%s) - T0 )) s]"; grep -v -E "^(INFO|WARNING|DEBUG)|Warning|warn" $OUT/w2s.log | tail -8
nvidia-smi --query-gpu=memory.used --format=csv,noheader
