#!/usr/bin/env bash
# Session 10, third call (one H200; issues 10/12): which fp8 launch table wins at W1 in situ
# (the new sweep's split-free narrow blocks measured faster alone but W1 fp8 fell 341 -> 319
# tok/s): the shipped session-8 table vs the rules' defaults vs the new sweep, on the fp8 GEMV
# now running the dense GEMV's loop; GPTQ with the shipped W4A16 table; decode profiles of
# GPTQ and fp8 (top kernels per step). Command: bash benchmarks/gpu_s10_c.sh  (carry .whl)
source benchmarks/gpu_setup.sh
export PYTHONPATH=/tmp/site:.
START=$SECONDS
source benchmarks/w1_lib.sh
w1() { local name=$1; shift; w1_run "$name" 75 --dtype bfloat16 "$@" | grep W1; }
make_quantized_config gptq '{"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": false, "sym": true}'
python3 - <<'PY'
import dataclasses, json
from pagellm.ops.triton import quant_gemv as q
shapes = [(4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096)]
saved = dict(q.TUNED_CONFIGS); q.TUNED_CONFIGS.clear()
rule = [[["fp8", m, k, n, 132], dataclasses.asdict(q.fp8_gemv_config(m, n, k, 132))]
        for k, n in shapes for m in (1, 2)]
json.dump(rule, open("/tmp/fp8_rule.json", "w"))
print("rule:", [(e[0][2], e[0][3], e[1]["block_n"], e[1]["block_k"], e[1]["split_k"]) for e in rule if e[0][1] == 1])
PY
cat > /tmp/fp8_s10.json <<'J'
[[["fp8",1,4096,6144,132],{"block_m":1,"block_n":8,"block_k":512,"split_k":1,"num_warps":4,"num_stages":3}],
 [["fp8",1,4096,4096,132],{"block_m":1,"block_n":16,"block_k":1024,"split_k":1,"num_warps":8,"num_stages":3}],
 [["fp8",1,4096,28672,132],{"block_m":1,"block_n":8,"block_k":512,"split_k":1,"num_warps":4,"num_stages":3}],
 [["fp8",1,14336,4096,132],{"block_m":1,"block_n":8,"block_k":512,"split_k":2,"num_warps":4,"num_stages":3}]]
J
w1 fp8_table --model llama-3.1-8b --quantization fp8
PAGELLM_QUANT_GEMV_CONFIGS=/tmp/fp8_rule.json w1 fp8_rule --model llama-3.1-8b --quantization fp8
PAGELLM_QUANT_GEMV_CONFIGS=/tmp/fp8_s10.json w1 fp8_sweep --model llama-3.1-8b --quantization fp8
w1 gptq --model /tmp/w9-models/gptq --quantization gptq_marlin
timeout 90 python3 benchmarks/profile_decode.py --model /tmp/w9-models/gptq --quantization gptq_marlin > $OUT/prof_gptq.log 2>&1
echo "profile gptq rc=$?"; grep -v "^INFO\|^WARNING\|^DEBUG\|^\[" $OUT/prof_gptq.log | tail -22
timeout 90 python3 benchmarks/profile_decode.py --model llama-3.1-8b --quantization fp8 > $OUT/prof_fp8.log 2>&1
echo "profile fp8 rc=$?"; grep -v "^INFO\|^WARNING\|^DEBUG\|^\[" $OUT/prof_fp8.log | tail -22
echo "elapsed $((SECONDS - START)) s"
