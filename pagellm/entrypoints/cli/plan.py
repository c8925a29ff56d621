"""``pagellm plan MODEL``: will the model fit, and how many requests at once?

MODEL is a directory with config.json, a config.json file, or a shipped shape name
(``pagellm bench`` configs: llama-3.1-8b, llama-3.1-70b, qwen3-0.6b). Give the GPU by name
(--gpu H100-80G; the table is ``pagellm.tuning.planner.GPUS_GIB``) or size
(--gpu-memory-gib), or plan the CPU engine (--device cpu, the 2 GiB or
--kv-cache-memory-bytes budget). The report lists weights
per GPU, the activation and CUDA-graph reserves, KV bytes per token, KV blocks, concurrency at
max_model_len and at --typical-lengths, whether it fits, and what to change when it does not
(the guides' OOM order: max_model_len, quantization, tensor_parallel_size,
gpu_memory_utilization). Exit status 0 when it fits, 1 when not, 2 for bad input.
"""

from __future__ import annotations

import argparse
import json



def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model directory, config.json, or shipped shape name")
    parser.add_argument("--gpu", default=None, help="GPU type, e.g. H100-80G, H200, A100-40G, "
                                                      "L40S, A10G, RTX-4090")
    parser.add_argument("--gpu-memory-gib", type=float, default=None,
                        help="GPU memory in GiB (instead of --gpu)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--quantization", default=None,
                        help="fp8, int8, awq, gptq, int4 (bytes per weight; planning only)")
    parser.add_argument("--kv-cache-dtype", default="auto", help="auto or fp8")
    parser.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    parser.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1)
    parser.add_argument("--data-parallel-size", "-dp", type=int, default=1)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--kv-cache-memory-bytes", type=int, default=None)
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int, default=None)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--swap-space", type=float, default=4.0)
    parser.add_argument("--cudagraph-capture-sizes", type=_int_list, default=None,
                        help="comma-separated batch sizes (default: the engine's)")
    parser.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    parser.add_argument("--typical-lengths", type=_int_list, default=(1024, 4096),
                        help="request lengths (tokens) to report concurrency at")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def main(args: argparse.Namespace) -> int:
    from pagellm.tuning.planner import (PlanInputs, format_plan, gpu_memory_gib, load_model_shape,
                                        plan, result_json, suggest_fixes)

    inputs = PlanInputs(
        model=load_model_shape(args.model), dtype=args.dtype, quantization=args.quantization,
        kv_cache_dtype=args.kv_cache_dtype, tensor_parallel_size=args.tensor_parallel_size,
        pipeline_parallel_size=args.pipeline_parallel_size,
        data_parallel_size=args.data_parallel_size, device=args.device,
        gpu_memory_gib=gpu_memory_gib(args.gpu, args.gpu_memory_gib),
        gpu_memory_utilization=args.gpu_memory_utilization,
        kv_cache_memory_bytes=args.kv_cache_memory_bytes, max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        block_size=args.block_size, swap_space=args.swap_space,
        cudagraph_capture_sizes=args.cudagraph_capture_sizes, enforce_eager=args.enforce_eager,
        typical_lengths=args.typical_lengths)
    result = plan(inputs)
    result.fixes = suggest_fixes(inputs, result)
    print(json.dumps(result_json(result), indent=2) if args.json else format_plan(result))
    return 0 if result.fits else 1



