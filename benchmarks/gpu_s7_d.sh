#!/usr/bin/env bash
# Session 7, last GPU call (two H200s; issues 9 and 10): W4 at rate inf on one GPU vs DP=2 with
# two API server processes (per-process CPU seconds recorded), W1 at TP=2 again, then the W4A16
# GEMV sweep (configs written and used through PAGELLM_QUANT_GEMV_CONFIGS) and W9 at W1
# (bf16 / fp8 / GPTQ). Command: bash benchmarks/gpu_s7_d.sh
source benchmarks/gpu_setup.sh
export PYTHONPATH=/tmp/site:.
START=$SECONDS
left() { [ $((SECONDS - START)) -lt $1 ]; }
export W4_NUM_PROMPTS=${W4_NUM_PROMPTS:-1000}
OUT=$OUT/w4_1gpu timeout 150 bash benchmarks/w4_serving.sh inf 2>&1 | tail -4
W4_SERVER_FLAGS="-dp 2 --api-server-count 2" OUT=$OUT/w4_dp2 timeout 150 \
  bash benchmarks/w4_serving.sh inf 2>&1 | tail -4
for d in w4_1gpu w4_dp2; do echo "$d CPU s per process:"; paste $OUT/$d/cpu_before_rate_inf.txt \
  $OUT/$d/cpu_after_rate_inf.txt 2>/dev/null | awk '{printf "  pid %s %.1f s\n", $1, $4 - $2}'; done
source benchmarks/w1_lib.sh
w1() { local name=$1; shift; w1_run "$name" 110 --dtype bfloat16 "$@"; }
left 330 && w1 tp2 --model llama-3.1-8b -tp 2
left 360 && { timeout 110 python3 benchmarks/quant_gemv_bench.py --sweep --kernels wna16 --no-table \
  --write-configs $OUT/gemv_configs.json > $OUT/quant_gemv.log 2>&1; echo "sweep rc=$?";
  grep -v "^TUNED\|^    (\|^}" $OUT/quant_gemv.log | tail -12; }
[ -s $OUT/gemv_configs.json ] && export PAGELLM_QUANT_GEMV_CONFIGS=$OUT/gemv_configs.json
make_quantized_config gptq '{"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": false, "sym": true}'
left 480 && w1 gptq --model /tmp/w9-models/gptq --quantization gptq_marlin
left 530 && w1 bf16 --model llama-3.1-8b
echo "elapsed $((SECONDS - START)) s"
