#!/usr/bin/env bash
# Session 6, last GPU call (one H200): GPU tests of the merged code (SGMV LoRA kernels under
# CUDA graphs, the persistent pinned step buffers, the engine on CUDA), W13 with an interactive
# SLO (P99 TPOT <= 10 ms), and W11 with the SGMV kernels. Command:
#   bash benchmarks/gpu_s6_b.sh   (carry .whl)
source benchmarks/gpu_setup.sh
export PYTHONPATH=/tmp/site:.
T0=$(date +%s)
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_lora_kernels.py \
  tests/gpu/test_staging_gpu.py tests/gpu/test_engine_gpu.py --timeout=140 > $OUT/gpu_tests.log 2>&1
echo "TESTS rc=$? $(tail -1 $OUT/gpu_tests.log) [$(( $(date +%s) - T0 )) s]"
grep -E "^(FAILED|ERROR)|Error:|assert " $OUT/gpu_tests.log | head -12
W13_SLOS="--slo ttft_p99_ms=500 --slo tpot_p99_ms=10" W13_BUDGET=1m W13_NUM_PROMPTS=200 \
  W13_RATES="16 24 32 40" OUT=$OUT/w13 timeout 230 bash benchmarks/w13_tuner.sh > $OUT/w13.log 2>&1
echo "W13 rc=$? [$(( $(date +%s) - T0 )) s]"
grep -E "goodput" $OUT/w13.log | cut -c60-240 | tail -14
sed -n '/Comparison/,/## Trials/p' $OUT/w13/report.md | grep "|" 
cp $OUT/w13/report.md $OUT/w13_report.md 2>/dev/null
timeout 170 python3 benchmarks/w11_lora.py --adapter-dir /tmp/w11-adapters --num-prompts 64 \
  > $OUT/w11.log 2>&1
echo "W11 rc=$? [$(( $(date +%s) - T0 )) s]"; grep -E "^\{" $OUT/w11.log | cut -c1-400
grep -E "Error" $OUT/w11.log | tail -3
