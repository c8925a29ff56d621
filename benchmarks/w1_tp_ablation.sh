#!/usr/bin/env bash
# W1 (Llama-3.1-8B shapes, batch 1, 128 in / 256 out) at TP=1 and TP=2 with async scheduling and
# the custom all-reduce switched on and off, in one run (two GPUs of one host):
#   bash benchmarks/w1_tp_ablation.sh
# Also times a device-to-device copy for the bandwidth ceiling. Logs and JSON go to $OUT.
source benchmarks/gpu_setup.sh
CLI="python3 -m pagellm.entrypoints.cli.main"
python3 benchmarks/ceilings.py
run() {
  local name=$1; shift
  timeout 170 $CLI bench latency --model llama-3.1-8b --input-len 128 --output-len 256 \
    --batch-size 1 --num-iters-warmup 1 --num-iters 3 --max-model-len 2048 \
    --output-json $OUT/w1_$name.json "$@" > $OUT/w1_$name.log 2>&1
  echo "W1 $name rc=$? $(grep -E 'decode' $OUT/w1_$name.log | tail -1)"
  grep -h "custom all-reduce" $OUT/w1_$name.log | head -1 | cut -c1-400
}
run tp1_sync --no-async-scheduling
run tp1_async --async-scheduling
run tp2_sync_nccl -tp 2 --no-async-scheduling --disable-custom-all-reduce
run tp2_async_nccl -tp 2 --async-scheduling --disable-custom-all-reduce
run tp2_async_custom -tp 2 --async-scheduling
