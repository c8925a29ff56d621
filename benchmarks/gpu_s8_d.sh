#!/usr/bin/env bash
# Session 8, one-GPU call: GPU tests left from the kernels call (fused rotary greedy equality,
# mixed/verify CUDA graphs, the engine), W9 at W1 (bf16 / fp8 / GPTQ with the shipped H200
# GEMV table: the dense bf16 GEMV and the SiLU-fused gate_up now run at batch 1), eager vs
# graph step times for mixed and verify batches, and W1 with n-gram speculation.
# Command: bash benchmarks/gpu_s8_d.sh   (carry .whl)
source benchmarks/gpu_setup.sh
export PYTHONPATH=/tmp/site:.
START=$SECONDS
left() { [ $((SECONDS - START)) -lt $1 ]; }
timeout 170 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_cuda_graph_mixed_gpu.py \
  "tests/gpu/test_fused_rotary_split_kv.py::test_greedy_output_fused_equals_unfused" \
  tests/gpu/test_engine_gpu.py > $OUT/gpu_tests.log 2>&1
echo "GPU tests rc=$? [$((SECONDS - START)) s]: $(tail -1 $OUT/gpu_tests.log)"
grep -E "^(FAILED|ERROR)|Error:|assert " $OUT/gpu_tests.log | head -12 | cut -c1-300
source benchmarks/w1_lib.sh
w1() { local name=$1; shift; w1_run "$name" 70 --dtype bfloat16 "$@"; }
make_quantized_config gptq '{"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": false, "sym": true}'
left 250 && w1 bf16 --model llama-3.1-8b
left 320 && w1 fp8 --model llama-3.1-8b --quantization fp8
left 390 && w1 gptq --model /tmp/w9-models/gptq --quantization gptq_marlin
left 460 && { timeout 75 python3 benchmarks/cuda_graph_steps.py --model llama-3.1-8b --load-format dummy \
  --dtype bfloat16 --batch-size 1 64 --k 4 --decodes 32 --chunk 128 --steps 15 > $OUT/graph_steps.log 2>&1;
  echo "graph steps rc=$?"; grep -v "^INFO\|^WARNING\|^DEBUG" $OUT/graph_steps.log | tail -10; }
left 535 && { timeout 60 python3 benchmarks/w1_ngram_gpu.py --max-tokens 256 --k 4 --repeats 2 \
  > $OUT/w1_ngram.log 2>&1; echo "w1 ngram rc=$?"; tail -4 $OUT/w1_ngram.log; }
echo "elapsed $((SECONDS - START)) s"
