"""W11: multi-LoRA overhead. Llama-3.1-8B shapes (random weights, load_format=dummy), W2-style
load (256 requests, input and output lengths uniform in [100, 1024], seed 0) where request i
uses adapter i % 8 of 8 random rank-16 adapters on q/k/v/o/gate/up/down; plus batch-1 decode
(one 128-token prompt, 256 output tokens) with one adapter. Reports output tokens/s and the
ratio to the base model alone (target >= 0.9; the guides quote < 5% overhead) and the batch-1
time per output token. Both modes run with CUDA graphs (LoRA decode steps replay graphs
captured with the LoRA kernels); ``--modes base base-eager lora`` adds the eager base model.

GPU (one H200; each mode runs in its own process so their memory never overlaps):
    PYTHONPATH=. python benchmarks/w11_lora.py --adapter-dir /tmp/w11-adapters
Smaller check on CPU (minutes): PYTHONPATH=. python benchmarks/w11_lora.py --model qwen3-0.6b \\
    --num-prompts 8 --max-len 64 --max-model-len 512 --device cpu --adapter-dir /tmp/w11-cpu
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NUM_ADAPTERS, RANK = 8, 16


def write_adapters(config_dir: str, out_dir: Path) -> list[Path]:
    """8 random rank-16 PEFT adapters (bf16 safetensors) for the model's shapes."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig

    from pagellm.lora.peft import lora_module_shapes

    hf_config = AutoConfig.from_pretrained(config_dir)
    shapes = lora_module_shapes(hf_config)
    paths = []
    for index in range(NUM_ADAPTERS):
        path = out_dir / f"adapter{index}"
        paths.append(path)
        if (path / "adapter_model.safetensors").exists():
            continue
        path.mkdir(parents=True, exist_ok=True)
        generator = torch.Generator().manual_seed(index)
        tensors = {}
        for layer in range(hf_config.num_hidden_layers):
            for module in MODULES:
                in_features, out_features = shapes[module]
                part = "self_attn" if module in MODULES[:4] else "mlp"
                prefix = f"base_model.model.model.layers.{layer}.{part}.{module}"
                tensors[f"{prefix}.lora_A.weight"] = (
                    torch.randn(RANK, in_features, generator=generator) * 0.01).bfloat16()
                tensors[f"{prefix}.lora_B.weight"] = (
                    torch.randn(out_features, RANK, generator=generator) * 0.01).bfloat16()
        save_file(tensors, str(path / "adapter_model.safetensors"))
        (path / "adapter_config.json").write_text(json.dumps({
            "peft_type": "LORA", "r": RANK, "lora_alpha": 32, "target_modules": list(MODULES),
            "bias": "none", "use_rslora": False}))
    return paths


def w2_requests(num_prompts: int, max_len: int, vocab_size: int, seed: int = 0):
    rng = random.Random(seed)
    prompts, lengths = [], []
    for _ in range(num_prompts):
        prompts.append([rng.randrange(vocab_size // 8, vocab_size - vocab_size // 8)
                        for _ in range(rng.randint(min(100, max_len), max_len))])
        lengths.append(rng.randint(min(100, max_len), max_len))
    return prompts, lengths


def run_mode(args) -> dict:
    from pagellm import LLM, LoRARequest, SamplingParams
    from pagellm.bench.common import resolve_bench_model

    model = resolve_bench_model(args.model)
    engine = dict(load_format="dummy", skip_tokenizer_init=True, max_model_len=args.max_model_len,
                  device=args.device, enforce_eager=args.mode == "base-eager")
    if args.mode == "lora":
        engine.update(enable_lora=True, max_loras=NUM_ADAPTERS, max_lora_rank=RANK)
    if args.device == "cpu":
        engine["kv_cache_memory_bytes"] = 2 * 2**30
    llm = LLM(model, **engine)
    adapters = [LoRARequest(f"adapter{i}", i + 1, str(Path(args.adapter_dir) / f"adapter{i}"))
                for i in range(NUM_ADAPTERS)]
    vocab_size = llm.llm_engine.input_processor.vocab_size
    prompts, lengths = w2_requests(args.num_prompts, args.max_len, vocab_size)
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, detokenize=False)
              for n in lengths]
    loras = [adapters[i % NUM_ADAPTERS] for i in range(len(prompts))] if args.mode == "lora" \
        else None
    warm = SamplingParams(max_tokens=16, ignore_eos=True, detokenize=False)
    llm.generate(prompts[:8], warm, use_tqdm=False, lora_request=loras[:8] if loras else None)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False, lora_request=loras)
    elapsed = time.perf_counter() - start
    output_tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    one = SamplingParams(temperature=0.0, max_tokens=256, ignore_eos=True, detokenize=False)
    single = adapters[0] if args.mode == "lora" else None
    llm.generate([prompts[0][:128]], one, use_tqdm=False, lora_request=single)
    start = time.perf_counter()
    llm.generate([prompts[0][:128]], one, use_tqdm=False, lora_request=single)
    batch1_s = time.perf_counter() - start
    graphs = llm.llm_engine.engine_core.executor.worker.runner.cuda_graphs
    return {"mode": args.mode, "output_tokens": output_tokens, "seconds": elapsed,
            "output_tokens_per_s": output_tokens / elapsed,
            "batch1_ms_per_token": 1000 * batch1_s / 256,
            "graph_replays": sum(graphs.num_replays.values()) if graphs else 0,
            "lora_graph_replays": sum(graphs.num_lora_replays.values()) if graphs else 0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--adapter-dir", required=True)
    parser.add_argument("--num-prompts", type=int, default=256)
    parser.add_argument("--max-len", type=int, default=1024)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--mode", choices=["base", "base-eager", "lora"], default=None,
                        help="run one mode in this process (the driver runs --modes)")
    parser.add_argument("--modes", nargs="+", choices=["base", "base-eager", "lora"],
                        default=["base", "lora"])
    args = parser.parse_args()
    if args.mode is not None:
        print("RESULT " + json.dumps(run_mode(args)), flush=True)
        return
    from pagellm.bench.common import resolve_bench_model
    write_adapters(resolve_bench_model(args.model), Path(args.adapter_dir))
    results = {}
    for mode in args.modes:
        command = [sys.executable, __file__, "--mode", mode] + sys.argv[1:]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results[mode] = json.loads(next(line for line in out.splitlines()
                                        if line.startswith("RESULT "))[7:])
        print(json.dumps(results[mode]), flush=True)
    if "lora" not in results:
        return
    lora = results["lora"]
    for mode in ("base", "base-eager"):
        if mode in results:
            print(json.dumps({
                f"throughput_ratio_vs_{mode}":
                    lora["output_tokens_per_s"] / results[mode]["output_tokens_per_s"],
                f"batch1_overhead_vs_{mode}":
                    lora["batch1_ms_per_token"] / results[mode]["batch1_ms_per_token"] - 1}))


if __name__ == "__main__":
    main()
