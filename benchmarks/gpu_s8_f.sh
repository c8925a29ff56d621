#!/usr/bin/env bash
# Session 8, profile call (two H200s): where a W1 decode step goes now at TP=1 and TP=2 (rank
# 0's top kernels, GPU busy vs wall) and the GPU's idle gaps between kernels with the host
# work during them (benchmarks/trace_gaps.py on the workers' Chrome traces).
# Command: bash benchmarks/gpu_s8_f.sh   (carry .whl)
source benchmarks/gpu_setup.sh
export PYTHONPATH=/tmp/site:.
for tp in 1 2; do
  PAGELLM_TORCH_PROFILER_DIR=$OUT/prof_tp$tp timeout 100 python3 benchmarks/profile_decode.py \
    --model llama-3.1-8b -tp $tp --output-len 64 > $OUT/profile_tp$tp.log 2>&1
  echo "=== TP=$tp rc=$?"; grep -E "^steps=" $OUT/profile_tp$tp.log
  sed -n '/--- rank 0 ---/,+20p' $OUT/profile_tp$tp.log | cut -c1-60,61-200 | awk '{print substr($0,1,200)}' 
  python3 benchmarks/trace_gaps.py $OUT/prof_tp$tp/rank0.trace.json --min-gap-us 3 --top 6 2>&1 | cut -c1-200
  rm -rf $OUT/prof_tp$tp
done
