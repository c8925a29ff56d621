#!/usr/bin/env bash
# Session 10, fourth call (one H200; issues 10/12): the W4A16 gate|up GEMV with SiLU-and-mul
# fused (GPU tests, its launch sweep), the sampler's multi-block probabilities at batch 1, W1:
# bf16 (8 MB and 4 MB PDL prefetch), GPTQ and AWQ with the fused gate|up.
# Command: bash benchmarks/gpu_s10_d.sh   (carry .whl)
source benchmarks/gpu_setup.sh
export PYTHONPATH=/tmp/site:.
START=$SECONDS
left() { [ $((SECONDS - START)) -lt $1 ]; }
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_quant_gemv_gpu.py tests/gpu/test_pdl_gpu.py > $OUT/gpu_tests.log 2>&1
echo "GPU tests rc=$? [$((SECONDS - START)) s]: $(tail -1 $OUT/gpu_tests.log)"
grep -E "^(FAILED|ERROR)|Error:|assert " $OUT/gpu_tests.log | head -12 | cut -c1-300
timeout 120 python3 benchmarks/quant_gemv_bench.py --no-table --sweep --kernels wna16_silu_mul \
  --shapes gate_up --rows 1,2 --write-configs $OUT/silu.json > $OUT/sweep.log 2>&1
echo "sweep rc=$? [$((SECONDS - START)) s]"; grep -E "^\|" $OUT/sweep.log | grep -v "^|---"
source benchmarks/w1_lib.sh
w1() { local name=$1; shift; w1_run "$name" 75 --dtype bfloat16 "$@" | grep W1; }
make_quantized_config gptq '{"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": false, "sym": true}'
make_quantized_config awq '{"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": true, "version": "gemm"}'
left 300 && w1 bf16 --model llama-3.1-8b
left 360 && PAGELLM_GEMV_PREFETCH_MB=4 w1 bf16_4mb --model llama-3.1-8b
[ -s $OUT/silu.json ] && export PAGELLM_QUANT_GEMV_CONFIGS=$OUT/silu.json
left 420 && w1 gptq --model /tmp/w9-models/gptq --quantization gptq_marlin
left 480 && w1 awq --model /tmp/w9-models/awq --quantization awq_marlin
left 540 && w1 bf16_b --model llama-3.1-8b
echo "elapsed $((SECONDS - START)) s"
