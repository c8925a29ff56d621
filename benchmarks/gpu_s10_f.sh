#!/usr/bin/env bash
# Session 10, last call (one H200): the GPU tests of the code as submitted (decode GEMVs, PDL,
# the sampler's CUDA path, the engine).  Command: bash benchmarks/gpu_s10_f.sh  (carry .whl)
source benchmarks/gpu_setup.sh
export PYTHONPATH=/tmp/site:.
START=$SECONDS
timeout 400 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_quant_gemv_gpu.py \
  tests/gpu/test_pdl_gpu.py tests/gpu/test_sampler_gpu.py tests/gpu/test_engine_gpu.py \
  tests/gpu/test_gemv_split_k_gpu.py > $OUT/gpu_tests.log 2>&1
echo "GPU tests rc=$? [$((SECONDS - START)) s]: $(tail -1 $OUT/gpu_tests.log)"
grep -E "^(FAILED|ERROR)|Error:|assert " $OUT/gpu_tests.log | head -12 | cut -c1-300
