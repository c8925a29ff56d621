#!/usr/bin/env bash
# Session 8, kernels call (one H200): the GPU tests of this session's kernels and graphs, the
# decode GEMV sweep (bf16 / bf16 + SiLU-and-mul / fp8 at M = 1; configs written to
# $OUT/gemv_configs.json for PAGELLM_QUANT_GEMV_CONFIGS), the fused rotary + KV write and
# split-KV kernel table. Command: bash benchmarks/gpu_s8_c.sh   (carry .whl)
source benchmarks/gpu_setup.sh
export PYTHONPATH=/tmp/site:.
START=$SECONDS
left() { [ $((SECONDS - START)) -lt $1 ]; }
timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/gpu/test_gemv_split_k_gpu.py \
  tests/gpu/test_fused_rotary_split_kv.py tests/gpu/test_cuda_graph_mixed_gpu.py \
  > $OUT/gpu_tests.log 2>&1
echo "GPU tests rc=$? [$((SECONDS - START)) s]: $(tail -1 $OUT/gpu_tests.log)"
grep -E "^(FAILED|ERROR)|Error|assert" $OUT/gpu_tests.log | head -12 | cut -c1-300
sweep() {  # NAME TIMEOUT KERNELS [SHAPES]
  timeout $2 python3 benchmarks/quant_gemv_bench.py --no-table --sweep --rows 1 --kernels $3 \
    ${4:+--shapes $4} --write-configs $OUT/gemv_$1.json > $OUT/gemv_$1.log 2>&1
  echo "sweep $1 rc=$? [$((SECONDS - START)) s]"; grep -E "^\| .* \| 1 \|" $OUT/gemv_$1.log | cut -c1-200
}
left 230 && sweep bf16 150 bf16,bf16_silu_mul
left 400 && sweep fp8 80 fp8 qkv,o,gate_up,down
python3 - $OUT <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
entries = [e for p in sorted(out.glob("gemv_*.json")) for e in json.loads(p.read_text())]
(out / "gemv_configs.json").write_text(json.dumps(entries))
print(f"{len(entries)} GEMV configs merged")
PY
left 500 && { timeout 60 python3 benchmarks/bench_decode_layer_kernels.py > $OUT/layer_kernels.log 2>&1;
  echo "layer kernels rc=$?"; tail -12 $OUT/layer_kernels.log; }
echo "elapsed $((SECONDS - START)) s"
