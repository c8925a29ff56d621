#!/usr/bin/env bash
# Session 6, last GPU call (one H200): the SGMV LoRA kernels (GPU tests, W11 again) and
# W2-structured after the structured-output scheduling change. Command:
#   bash benchmarks/gpu_s6_b.sh   (carry .whl)
source benchmarks/gpu_setup.sh
export PYTHONPATH=/tmp/site:.
T0=$(date +%s)
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_lora_kernels.py \
  --timeout=110 > $OUT/gpu_tests.log 2>&1
echo "TESTS rc=$? $(tail -1 $OUT/gpu_tests.log) [$(( $(date +%s) - T0 )) s]"
grep -E "^(FAILED|ERROR)|Error|assert" $OUT/gpu_tests.log | head -12
timeout 200 python3 benchmarks/w11_lora.py --adapter-dir /tmp/w11-adapters --num-prompts 128 \
  > $OUT/w11.log 2>&1
echo "W11 rc=$? [$(( $(date +%s) - T0 )) s]"; grep -E "^\{" $OUT/w11.log | cut -c1-400
tail -3 $OUT/w11.log | grep -i error
timeout 130 python3 benchmarks/w2_structured.py --model .whl/w2model --load-format dummy \
  --num-prompts 256 > $OUT/w2s.log 2>&1
echo "W2S rc=$? [$(( $(date +%s) - T0 )) s]"; grep -E "^\{" $OUT/w2s.log | tail -4
tail -3 $OUT/w2s.log | grep -i error
