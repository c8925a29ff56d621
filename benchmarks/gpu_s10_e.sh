#!/usr/bin/env bash
# Session 10, fifth call (one H200; issues 12/10): batch-1 decode attention at W1's contexts
# (forced segment counts x tile sizes), then W9 at W1 with the final defaults (4 MB prefetch at
# TP=1, W4A16 prefetch in whole packed rows): bf16, fp8, GPTQ, AWQ.
# Command: bash benchmarks/gpu_s10_e.sh   (carry .whl)
source benchmarks/gpu_setup.sh
export PYTHONPATH=/tmp/site:.
START=$SECONDS
left() { [ $((SECONDS - START)) -lt $1 ]; }
timeout 100 python3 benchmarks/attention_decode_splits.py > $OUT/attn.log 2>&1
echo "attention rc=$? [$((SECONDS - START)) s]"; grep -E "^\||choice" $OUT/attn.log
source benchmarks/w1_lib.sh
w1() { local name=$1; shift; w1_run "$name" 75 --dtype bfloat16 "$@" | grep W1; }
make_quantized_config gptq '{"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": false, "sym": true}'
make_quantized_config awq '{"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": true, "version": "gemm"}'
left 300 && w1 bf16 --model llama-3.1-8b
left 370 && w1 fp8 --model llama-3.1-8b --quantization fp8
left 440 && w1 gptq --model /tmp/w9-models/gptq --quantization gptq_marlin
left 510 && w1 awq --model /tmp/w9-models/awq --quantization awq_marlin
echo "elapsed $((SECONDS - START)) s"
