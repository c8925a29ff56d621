#!/usr/bin/env bash
# Session 10, second call (one H200; issue 10): W4A16 GEMV with per-shift magic exponents (no
# activation rescale) and constant-offset activation loads; the fp8 GEMV at 1-2 rows on the
# dense GEMV's loop (2-D accumulators, scale at the end). GPU tests, sweeps (W4A16 symmetric,
# fp8), W9 at W1: bf16 / fp8 / GPTQ (sym) / AWQ (zero points) with the sweeps' launches.
# Command: bash benchmarks/gpu_s10_b.sh   (carry .whl)
source benchmarks/gpu_setup.sh
export PYTHONPATH=/tmp/site:.
START=$SECONDS
left() { [ $((SECONDS - START)) -lt $1 ]; }
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_quant_gemv_gpu.py tests/gpu/test_pdl_gpu.py > $OUT/gpu_tests.log 2>&1
echo "GPU tests rc=$? [$((SECONDS - START)) s]: $(tail -1 $OUT/gpu_tests.log)"
grep -E "^(FAILED|ERROR)|Error:|assert " $OUT/gpu_tests.log | head -12 | cut -c1-300
timeout 220 python3 benchmarks/quant_gemv_bench.py --no-table --sweep --kernels wna16,fp8 \
  --shapes qkv,o,gate_up,down --rows 1,2 --write-configs $OUT/gemv.json > $OUT/sweep.log 2>&1
echo "sweep rc=$? [$((SECONDS - START)) s]"; grep -E "^\|" $OUT/sweep.log | grep -v "^|---"
source benchmarks/w1_lib.sh
w1() { local name=$1; shift; w1_run "$name" 75 --dtype bfloat16 "$@"; }
make_quantized_config gptq '{"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": false, "sym": true}'
make_quantized_config awq '{"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": true, "version": "gemm"}'
[ -s $OUT/gemv.json ] && export PAGELLM_QUANT_GEMV_CONFIGS=$OUT/gemv.json
left 330 && w1 bf16 --model llama-3.1-8b
left 400 && w1 fp8 --model llama-3.1-8b --quantization fp8
left 470 && w1 gptq --model /tmp/w9-models/gptq --quantization gptq_marlin
left 540 && w1 awq --model /tmp/w9-models/awq --quantization awq_marlin
echo "elapsed $((SECONDS - START)) s"
