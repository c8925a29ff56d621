"""Does deleting an ``LLM`` give its GPU memory back within the process?

Builds an engine (Qwen3-0.6B shape, random weights) sized by gpu_memory_utilization, runs a
few requests and deletes it (no gc.collect, no empty_cache), then builds a second engine the
same way: it must get a KV cache as large as the first one's.

    source benchmarks/gpu_setup.sh; python3 benchmarks/gpu_memory_release.py
"""

from __future__ import annotations

import torch

from pagellm import LLM, SamplingParams

GIB = 2**30


def report(label: str) -> float:
    free, total = torch.cuda.mem_get_info()
    print(f"{label:<28} free {free / GIB:6.2f} GiB  allocated {torch.cuda.memory_allocated() / GIB:6.2f}"
          f"  reserved {torch.cuda.memory_reserved() / GIB:6.2f}")
    return free


def build_and_run() -> int:
    llm = LLM("pagellm/bench/configs/qwen3-0.6b", load_format="dummy", skip_tokenizer_init=True,
              max_model_len=2048, gpu_memory_utilization=0.5)
    prompts = [{"prompt_token_ids": list(range(10, 200))} for _ in range(8)]
    llm.generate(prompts, SamplingParams(max_tokens=16, ignore_eos=True, detokenize=False),
                 use_tqdm=False)
    num_blocks = llm.llm_engine.engine_core.num_blocks
    report("engine built and used")
    del llm
    return num_blocks


def main() -> None:
    report("start")
    first = build_and_run()
    report("after del (no gc, no empty_cache)")
    second = build_and_run()            # the worker collects and empties the cache itself
    verdict = "OK" if second >= 0.95 * first else "LEAK: the second engine got less memory"
    print(f"KV blocks: first {first}, second {second}: {verdict}")


if __name__ == "__main__":
    main()
