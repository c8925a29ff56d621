#!/usr/bin/env bash
# W12 (../shared/BENCHMARKS.md, issue 16): Llama-3.1-70B shapes (random bf16 weights,
# load_format=dummy) on 4 and 8 H200s of one host, and Llama-3.1-8B data parallel.
#
#   source benchmarks/gpu_setup.sh; bash benchmarks/w12_70b.sh all      # on nvidia-h200-x8
#   bash benchmarks/w12_70b.sh w1|w3|w4|dp|memory                       # one part
#   W12_DRY_RUN=1 bash benchmarks/w12_70b.sh all                        # any machine: print the
#       commands and the capacity planner's memory per GPU for every layout (no GPU needed)
#   W12_MODEL=llama-3.1-8b W12_TP="1 2" W12_PP_LAYOUT="1x2" W12_DP="2" bash benchmarks/w12_70b.sh all
#       # the same scripts on two GPUs with the smaller model (the fallback the issue allows)
#
# W1: batch 1, prompt 128, 256 output tokens, per TP size; the bandwidth ceiling is weights per
# GPU / copy bandwidth (benchmarks/ceilings.py measures the copy bandwidth in the same run).
# W3: 1024 in / 512 out, $W3_PROMPTS requests, at each TP size and TPxPP layout. W4: serving at
# rates inf and 4. DP: Llama-3.1-8B W3 at DP=1 and each of $W12_DP. Logs and JSON under $OUT.
set -u
OUT=${OUT:-/tmp/w12}
mkdir -p "$OUT"
MODEL=${W12_MODEL:-llama-3.1-70b}
TP_SIZES=${W12_TP:-4 8}
PP_LAYOUTS=${W12_PP_LAYOUT:-4x2}          # TPxPP
DP_SIZES=${W12_DP:-4 8}
W3_PROMPTS=${W3_PROMPTS:-500}
PY=${PYTHON:-python3}
CLI="$PY -m pagellm.entrypoints.cli.main"
DRY=${W12_DRY_RUN:-0}

run() {  # name, timeout, command...: run it (or print it in a dry run), log under $OUT
    local name=$1 limit=$2; shift 2
    if [ "$DRY" = 1 ]; then echo "DRY $name: $*"; return 0; fi
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "$name rc=$? $(grep -E 'decode|Throughput' "$OUT/$name.log" | tail -1)"
    grep -E "Loaded|KV cache:" "$OUT/$name.log" | sed -E 's/^[A-Z]+ [0-9-]+ [0-9:.]+ //' | sort -u | head -4
}

memory() {  # the planner's weights and KV per GPU for every layout (CPU only, no launch)
    for layout in $(for t in $TP_SIZES; do echo "${t}x1"; done) $PP_LAYOUTS; do
        local tp=${layout%x*} pp=${layout#*x}
        echo "plan $MODEL tp=$tp pp=$pp on H200:"
        $CLI plan "$MODEL" --gpu H200 -tp "$tp" -pp "$pp" --max-model-len 4096 2>&1 \
            | grep -E "weights per GPU|KV cache budget|KV blocks|fits" | sed 's/^/  /'
    done
}

w1() {
    [ "$DRY" = 1 ] || $PY benchmarks/ceilings.py > "$OUT/ceilings.log" 2>&1
    for tp in $TP_SIZES; do
        run "w1_tp$tp" 400 $CLI bench latency --model "$MODEL" --input-len 128 --output-len 256 \
            --batch-size 1 --num-iters-warmup 1 --num-iters 3 --max-model-len 2048 -tp "$tp" \
            --output-json "$OUT/w1_tp$tp.json"
    done
}

w3() {
    for layout in $(for t in $TP_SIZES; do echo "${t}x1"; done) $PP_LAYOUTS; do
        local tp=${layout%x*} pp=${layout#*x}
        run "w3_tp${tp}_pp$pp" 590 $CLI bench throughput --model "$MODEL" \
            --num-prompts "$W3_PROMPTS" --input-len 1024 --output-len 512 --max-model-len 2048 \
            --disable-tqdm -tp "$tp" -pp "$pp" --output-json "$OUT/w3_tp${tp}_pp$pp.json"
    done
}

w4() {
    for tp in $TP_SIZES; do
        if [ "$DRY" = 1 ]; then
            echo "DRY w4_tp$tp: W4_MODEL=$MODEL W4_SERVER_FLAGS='-tp $tp' bash benchmarks/w4_serving.sh inf 4"
            continue
        fi
        OUT="$OUT/w4_tp$tp" W4_MODEL="$MODEL" W4_SERVER_FLAGS="-tp $tp" W4_NUM_PROMPTS=500 \
            timeout 590 bash benchmarks/w4_serving.sh inf 4 | tail -4
    done
}

dp() {
    for dp in 1 $DP_SIZES; do
        run "w3_8b_dp$dp" 590 $CLI bench throughput --model llama-3.1-8b \
            --num-prompts "$W3_PROMPTS" --input-len 1024 --output-len 512 --max-model-len 2048 \
            --disable-tqdm -dp "$dp" --output-json "$OUT/w3_8b_dp$dp.json"
    done
}

case "${1:-all}" in
    w1) w1 ;;
    w3) w3 ;;
    w4) w4 ;;
    dp) dp ;;
    memory) memory ;;
    all) memory; w1; w3; w4; dp ;;
    *) echo "usage: $0 [all|w1|w3|w4|dp|memory]" >&2; exit 2 ;;
esac
