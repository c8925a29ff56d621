#!/usr/bin/env bash
# Session 10, GPU tests after the split-KV attention took the GEMVs' ticket counters
# (one counter buffer per device). Command: bash benchmarks/gpu_s10_g.sh  (carry .whl)
source benchmarks/gpu_setup.sh
export PYTHONPATH=/tmp/site:.
START=$SECONDS
timeout 170 python3 -m pytest -q -p no:cacheprovider -x tests/gpu/test_fused_rotary_split_kv.py \
  tests/gpu/test_gemv_split_k_gpu.py tests/gpu/test_cuda_graph_mixed_gpu.py \
  "tests/gpu/test_triton_kernels.py" -k "split or paged or graph or gemv or decode" > $OUT/gpu_tests.log 2>&1
echo "GPU tests rc=$? [$((SECONDS - START)) s]: $(tail -1 $OUT/gpu_tests.log)"
grep -E "^(FAILED|ERROR)|Error:|assert " $OUT/gpu_tests.log | head -12 | cut -c1-300
