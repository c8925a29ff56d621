#!/usr/bin/env bash
# Session 8, issue 16 on four H200s (the 4-GPU kind was lent for one short call; ~5.5 min of
# device time left): Llama-3.1-70B shapes, random bf16 weights: copy ceiling, W1 at TP=4, W3 at
# TP=4 on $W3_PROMPTS requests, then W4 at TP=4 (rate inf) if time is left. The 8-GPU half, W3
# at TP=4xPP=2 and DP=4/8 were not run. Command: bash benchmarks/gpu_s8_w12.sh   (carry .whl)
source benchmarks/gpu_setup.sh
export PYTHONPATH=/tmp/site:.
START=$SECONDS
left() { [ $((SECONDS - START)) -lt $1 ]; }
export W3_PROMPTS=${W3_PROMPTS:-200}
timeout 40 python3 benchmarks/ceilings.py > $OUT/ceilings.log 2>&1; tail -3 $OUT/ceilings.log
OUT=$OUT W12_TP=4 timeout 150 bash benchmarks/w12_70b.sh w1
left 170 && OUT=$OUT W12_TP=4 W12_PP_LAYOUT="" timeout 140 bash benchmarks/w12_70b.sh w3
left 230 && { OUT=$OUT/w4_tp4 W4_MODEL=llama-3.1-70b W4_SERVER_FLAGS="-tp 4" W4_NUM_PROMPTS=200 \
  timeout 90 bash benchmarks/w4_serving.sh inf 2>&1 | grep -E "^ +inf \|"; }
echo "elapsed $((SECONDS - START)) s"
