#!/usr/bin/env bash
# W13 (../shared/BENCHMARKS.md): `pagellm tune` on Llama-3.1-8B shapes (random weights, no
# tokenizer: token-id prompts) with W4's requests (random 1024 in / 128 out, EOS ignored) swept
# over request rates, SLOs P99 TTFT <= 500 ms and P99 TPOT <= 50 ms, a 15-minute budget. The
# report compares the tuned configuration's goodput with the guide's preset for the closest
# scenario (api_service for this workload: pagellm.config.presets must be merged), measured
# on the same requests; the target is >= 1.2x.
#
#   source benchmarks/gpu_setup.sh; bash benchmarks/w13_tuner.sh                 # on one H200
#   W13_BUDGET=2m W13_NUM_PROMPTS=50 W13_RATES="8 16" bash benchmarks/w13_tuner.sh   # smoke
#
# W13_SLOS replaces the SLO flags, e.g. an interactive-streaming SLO (100 tok/s per user):
#   W13_SLOS="--slo ttft_p99_ms=500 --slo tpot_p99_ms=10" bash benchmarks/w13_tuner.sh
#
# Writes the study, trial logs, best_config.yaml, report.md/html and pareto.png under $OUT
# (default /tmp/w13) and prints the report's summary last.
set -u
OUT=${OUT:-/tmp/w13}
PY=${PYTHON:-python3}
MODEL=pagellm/bench/configs/${W13_MODEL:-llama-3.1-8b}
# shellcheck disable=SC2086  # W13_RATES, W13_SLOS and W13_TUNE_FLAGS are lists
$PY -m pagellm.entrypoints.cli.main tune "$MODEL" \
    --serve-args "--load-format dummy --skip-tokenizer-init --max-model-len 4096 ${W13_SERVER_FLAGS:-}" \
    --num-prompts "${W13_NUM_PROMPTS:-200}" --random-input-len 1024 --random-output-len 128 \
    --request-rate ${W13_RATES:-8 16 24 32} \
    ${W13_SLOS:---slo ttft_p99_ms=500 --slo tpot_p99_ms=50} \
    --time-budget "${W13_BUDGET:-15m}" --n-trials 200 --study-dir "$OUT" --html ${W13_TUNE_FLAGS:-}
status=$?
sed -n '1,40p' "$OUT/report.md"
exit $status
