#!/usr/bin/env bash
# Session 8, throughput call (two H200s): W4 at rate inf on one GPU vs DP=2 (issue 9: >= 1.8x;
# per-replica request counts and the bench client's CPU recorded), W2 with a bf16 vs fp8 KV cache
# and W3 bf16 vs fp8 weights (issue 10's W9 rows not run before; W3 on $W3_PROMPTS requests).
# Command: bash benchmarks/gpu_s8_b.sh   (carry .whl)
source benchmarks/gpu_setup.sh
export PYTHONPATH=/tmp/site:.
START=$SECONDS
left() { [ $((SECONDS - START)) -lt $1 ]; }
CLI="python3 -m pagellm.entrypoints.cli.main"
export W4_NUM_PROMPTS=${W4_NUM_PROMPTS:-1000}
OUT=$OUT/w4_1gpu timeout 150 bash benchmarks/w4_serving.sh inf 2>&1 | grep -v "^W4\|rate | " | tail -6
W4_SERVER_FLAGS="-dp 2 --api-server-count 2" OUT=$OUT/w4_dp2 timeout 150 \
  bash benchmarks/w4_serving.sh inf 2>&1 | grep -v "^W4\|rate | " | tail -9
for d in w4_1gpu w4_dp2; do echo "$d:"; \
  python3 - $OUT/$d <<'PY'
import json, pathlib, sys
for p in pathlib.Path(sys.argv[1]).glob("w4_*_rate_inf.json"):
    d = json.loads(p.read_text())
    print(f"  done {d['completed']} failed {d['failed']} dur {d['duration']:.1f} s out tok/s {d['output_throughput']:.0f} "
          f"TTFT med/p99 {d['median_ttft_ms']:.0f}/{d['p99_ttft_ms']:.0f} ms")
PY
done
W3_PROMPTS=${W3_PROMPTS:-200}
w2() { local name=$1; shift; timeout 100 $CLI bench throughput --model qwen3-0.6b --num-prompts 256 --seed 0 \
  --random-input-len-range 100 1024 --random-output-len-range 100 1024 --max-model-len 4096 \
  --disable-tqdm --output-json $OUT/w2_$name.json "$@" > $OUT/w2_$name.log 2>&1
  echo "W2 $name rc=$? $(grep -E 'Throughput' $OUT/w2_$name.log | tail -1)"; grep -E "KV cache:" $OUT/w2_$name.log | tail -1; }
w3() { local name=$1; shift; timeout 130 $CLI bench throughput --model llama-3.1-8b --num-prompts $W3_PROMPTS \
  --input-len 1024 --output-len 512 --max-model-len 2048 --dtype bfloat16 --disable-tqdm \
  --output-json $OUT/w3_$name.json "$@" > $OUT/w3_$name.log 2>&1
  echo "W3 $name rc=$? $(grep -E 'Throughput' $OUT/w3_$name.log | tail -1)"; }
left 400 && w2 bf16kv
left 440 && w2 fp8kv --kv-cache-dtype fp8
left 470 && w3 bf16
left 530 && w3 fp8 --quantization fp8
echo "elapsed $((SECONDS - START)) s"
