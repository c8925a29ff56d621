"""``pagellm plan``: will a model fit on a GPU (or CPU budget), and how many requests at once?

``plan(PlanInputs)`` computes, per GPU: the weight bytes (from the model's shapes, sharded by
tensor parallelism and split by pipeline stage, at the quantization's bytes per weight), the
activation reserve of the engine's profiling forward, the CUDA-graph reserve, the KV bytes per
token and per block, the KV blocks, and the concurrency they allow. The KV arithmetic is the
engine's own (``pagellm.config.kv_sizing``: the same functions ``Worker.determine_num_blocks``
calls), so on CPU the block count is the engine's exactly; on a GPU the engine measures the
activation peak and the CUDA context where the plan estimates them (``ACTIVATION_ESTIMATE``).

``suggest_fixes`` walks the guides' OOM order (004 §五, 003 §内存优化): max_model_len down,
then quantization, then tensor_parallel_size up, then gpu_memory_utilization up, and returns
the first changes that make the plan fit.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from pagellm.config.cache import CacheConfig
from pagellm.config.kv_sizing import (GiB, cpu_kv_budget, cuda_kv_budget, kv_bytes_per_block,
                                      kv_heads_per_rank, num_kv_blocks)
from pagellm.config.parallel import stage_layer_counts
from pagellm.config.scheduler import DEFAULT_MAX_NUM_BATCHED_TOKENS
from pagellm.config.seeds import SEED_V1, SEED_V1_LONG, cite
from pagellm.errors import ClientError

GPUS_GIB = {
    "H200": 140.4, "H100-80G": 79.6, "H100-94G": 93.0, "H20": 95.0, "A100-80G": 79.2,
    "A100-40G": 39.4, "L40S": 44.5, "L40": 44.5, "L4": 22.0, "A10G": 22.0, "A10": 22.0,
    "RTX-4090": 23.6, "RTX-3090": 23.6, "V100-32G": 31.7, "V100-16G": 15.8, "T4": 14.6,
}
"""Total memory per GPU in GiB as ``torch.cuda.mem_get_info`` reports it (a bit under the
marketing size, which counts GB and includes reserved memory)."""

DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}
QUANT_BYTES_PER_WEIGHT = {"fp8": 1.0, "int8": 1.0, "w8a8": 1.0, "awq": 0.5 + 4 / 128,
                          "gptq": 0.5 + 4 / 128, "int4": 0.5 + 4 / 128, "gguf-q4_1": 0.625}
"""Bytes per linear-layer weight; int4 kinds carry a 16-bit scale and zero per group of 128.
Embeddings, norms and the LM head stay in the model dtype (``--quantization fp8`` quantizes
online at load; int4 needs an AWQ / GPTQ / compressed-tensors checkpoint)."""
KV_DTYPE_BYTES = {"fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}
CUDA_CONTEXT_BYTES = 512 * 1024**2
"""Memory outside torch per GPU process (CUDA context, cuBLAS workspaces): an estimate; the
engine measures it."""
CUDA_GRAPH_BYTES_PER_SIZE = 2 * 1024**2
"""Graph-pool memory per captured batch size beyond the activations: an estimate."""
ACTIVATION_ESTIMATE = ("peak activation ~ tokens x (4 hidden + 2 intermediate/tp + q/kv width) x "
                       "dtype bytes + float32 logits of the sampled rows x 2")
OOM_ORDER = cite(SEED_V1_LONG, "五、vLLM 关键参数配置建议总结") + "; " + cite(
    SEED_V1, "内存优化建议")


@dataclass(frozen=True)
class ModelShape:
    """What sizing needs from a config.json."""

    name: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    max_position_embeddings: int
    dtype: str
    qkv_bias: bool = False


@dataclass(frozen=True)
class PlanInputs:
    model: ModelShape
    dtype: str = "auto"
    quantization: str | None = None
    kv_cache_dtype: str = "auto"
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1
    device: str = "cuda"
    gpu_memory_gib: float | None = None
    gpu_memory_utilization: float = 0.9
    kv_cache_memory_bytes: int | None = None
    max_model_len: int | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None
    block_size: int = 16
    cudagraph_capture_sizes: tuple[int, ...] | None = None
    enforce_eager: bool = False
    typical_lengths: tuple[int, ...] = (1024, 4096)
    swap_space: float = 4.0


@dataclass
class PlanResult:
    inputs: PlanInputs
    max_model_len: int
    weight_bytes_per_gpu: int
    activation_bytes: int
    cuda_graph_bytes: int
    non_torch_bytes: int
    kv_budget_bytes: int
    kv_bytes_per_token: int
    kv_bytes_per_block: int
    num_blocks: int
    num_swap_blocks: int
    max_concurrency_at_max_len: float
    concurrency_at: dict[int, int]
    fits: bool
    problems: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)


def load_model_shape(spec: str) -> ModelShape:
    """A model's shape from a directory holding config.json, a config.json file, or the name
    of a shipped shape (``pagellm/bench/configs``). ClientError naming what was tried."""
    from pagellm.bench.common import SHIPPED_CONFIGS_DIR
    from pagellm.models.default_model import DEFAULT_MODEL_NAMES

    if spec in DEFAULT_MODEL_NAMES or spec.endswith(".gguf"):
        return _shape_from_gguf(spec)
    path = Path(spec).expanduser()
    candidates = [path / "config.json", path, SHIPPED_CONFIGS_DIR / spec / "config.json"]
    config_file = next((c for c in candidates if c.is_file()), None)
    if config_file is None:
        shipped = ", ".join(sorted(p.name for p in SHIPPED_CONFIGS_DIR.iterdir() if p.is_dir()))
        raise ClientError(f"model {spec!r} is not a directory with config.json, a config.json "
                          f"file, or a shipped shape ({shipped})", param="model")
    try:
        data = json.loads(config_file.read_text())
        return _shape_from_config(spec, data)
    except (ValueError, KeyError, TypeError) as error:
        raise ClientError(f"{config_file}: not a usable model config ({error})",
                          param="model") from None


def _shape_from_gguf(spec: str) -> ModelShape:
    """The shape of the default model or a GGUF file (its metadata read through
    transformers, as the engine does); weights are then sized by dtype or ``--quantization``
    (``gguf-q4_1`` for the default model kept quantized)."""
    from pagellm.models.default_model import resolve_model_path
    from pagellm.models.hf_config import load_hf_config

    hf_config = load_hf_config(resolve_model_path(spec))
    return _shape_from_config(spec, hf_config.to_dict())


def _shape_from_config(name: str, data: dict) -> ModelShape:
    heads = int(data["num_attention_heads"])
    hidden = int(data["hidden_size"])
    model_type = data.get("model_type", "")
    return ModelShape(
        name=name, num_layers=int(data["num_hidden_layers"]), hidden_size=hidden,
        intermediate_size=int(data["intermediate_size"]), num_heads=heads,
        num_kv_heads=int(data.get("num_key_value_heads") or heads),
        head_dim=int(data.get("head_dim") or hidden // heads), vocab_size=int(data["vocab_size"]),
        tie_word_embeddings=bool(data.get("tie_word_embeddings", False)),
        max_position_embeddings=int(data["max_position_embeddings"]),
        dtype=str(data.get("torch_dtype") or data.get("dtype") or "bfloat16"),
        qkv_bias=model_type == "qwen2" or bool(data.get("attention_bias", False)))


def _resolved_dtype(inputs: PlanInputs) -> str:
    """The engine's ``auto``: float32 on CPU, else the checkpoint's half dtype or bfloat16."""
    if inputs.dtype != "auto":
        return inputs.dtype
    if inputs.device == "cpu":
        return "float32"
    return inputs.model.dtype if inputs.model.dtype in ("float16", "bfloat16") else "bfloat16"


def weight_bytes_per_gpu(inputs: PlanInputs) -> int:
    """Weights on the busiest GPU: layers of the largest pipeline stage sharded by TP, plus the
    embedding (first stage) and LM head (last stage), vocabulary-sharded by TP."""
    m, tp = inputs.model, inputs.tensor_parallel_size
    dtype_bytes = DTYPE_BYTES[_resolved_dtype(inputs)]
    linear_bytes = QUANT_BYTES_PER_WEIGHT.get(inputs.quantization, dtype_bytes) \
        if inputs.quantization else dtype_bytes
    q, kv = m.num_heads * m.head_dim, m.num_kv_heads * m.head_dim
    linear = (m.hidden_size * (q + 2 * kv) + q * m.hidden_size
              + 3 * m.hidden_size * m.intermediate_size)      # qkv, o, gate/up/down
    norms_and_bias = 2 * m.hidden_size + (q + 2 * kv) * m.qkv_bias
    layer = linear / tp * linear_bytes + norms_and_bias * dtype_bytes
    stages = stage_layer_counts(m.num_layers, inputs.pipeline_parallel_size)
    embedding = m.vocab_size * m.hidden_size / tp * dtype_bytes
    first = stages[0] * layer + embedding
    last = stages[-1] * layer + (0 if m.tie_word_embeddings and len(stages) == 1 else embedding)
    if len(stages) == 1:
        return int(stages[0] * layer + embedding * (1 if m.tie_word_embeddings else 2))
    return int(max(first, last, *(n * layer for n in stages[1:-1])))


def activation_bytes(inputs: PlanInputs, num_tokens: int) -> int:
    """The profiling forward's activation peak at ``num_tokens`` (``ACTIVATION_ESTIMATE``)."""
    m, tp = inputs.model, inputs.tensor_parallel_size
    width = 4 * m.hidden_size + 2 * m.intermediate_size / tp + (m.num_heads + 2 * m.num_kv_heads) \
        * m.head_dim / tp
    num_reqs = min(num_tokens, inputs.max_num_seqs)
    logits = num_reqs * m.vocab_size * 4 * 2
    return int(num_tokens * width * DTYPE_BYTES[_resolved_dtype(inputs)] + logits)


def _capture_sizes(inputs: PlanInputs) -> list[int]:
    if inputs.cudagraph_capture_sizes:
        return sorted(set(inputs.cudagraph_capture_sizes))
    limit = min(inputs.max_num_seqs, 512)       # cuda_graph.default_capture_sizes
    sizes = [s for s in (1, 2, 4, 8) if s <= limit] + list(range(16, limit + 1, 8))
    return sizes if sizes[-1] == limit else sizes + [limit]


def kv_geometry(inputs: PlanInputs) -> tuple[int, int]:
    """(KV bytes per token, per block) on the busiest rank (the engine takes the minimum block
    count over ranks, i.e. the stage with the most layers)."""
    m = inputs.model
    layers = max(stage_layer_counts(m.num_layers, inputs.pipeline_parallel_size))
    heads = kv_heads_per_rank(m.num_kv_heads, inputs.tensor_parallel_size)
    element = KV_DTYPE_BYTES.get(inputs.kv_cache_dtype, DTYPE_BYTES[_resolved_dtype(inputs)])
    per_block = kv_bytes_per_block(layers, inputs.block_size, heads, m.head_dim, element)
    return per_block // inputs.block_size, per_block


def plan(inputs: PlanInputs) -> PlanResult:
    """The plan for ``inputs``. ClientError for inputs that cannot describe a deployment."""
    _validate(inputs)
    m = inputs.model
    max_model_len = inputs.max_model_len or m.max_position_embeddings
    per_token, per_block = kv_geometry(inputs)
    weights = weight_bytes_per_gpu(inputs)
    cache = CacheConfig(block_size=inputs.block_size, swap_space=inputs.swap_space,
                        gpu_memory_utilization=inputs.gpu_memory_utilization,
                        kv_cache_memory_bytes=inputs.kv_cache_memory_bytes)
    tokens = inputs.max_num_batched_tokens or DEFAULT_MAX_NUM_BATCHED_TOKENS[inputs.device]
    problems = []
    if inputs.device == "cpu" or inputs.kv_cache_memory_bytes is not None:
        activation = graphs = non_torch = 0
        budget = cpu_kv_budget(cache)
    else:
        total = int(inputs.gpu_memory_gib * GiB)
        activation, non_torch = activation_bytes(inputs, tokens), CUDA_CONTEXT_BYTES
        graphs = 0 if inputs.enforce_eager or inputs.pipeline_parallel_size > 1 else (
            len(_capture_sizes(inputs)) * CUDA_GRAPH_BYTES_PER_SIZE
            + activation_bytes(inputs, max(_capture_sizes(inputs))))
        budget = cuda_kv_budget(inputs.gpu_memory_utilization, total, weights + activation,
                                non_torch)
        if budget + weights + activation + non_torch + graphs > total:
            problems.append(f"CUDA graphs ({graphs / GiB:.2f} GiB, captured after the KV cache "
                            "is sized) do not fit in the memory left above "
                            "gpu_memory_utilization")
    num_blocks, num_swap = num_kv_blocks(max(budget, 0), per_block, inputs.swap_space)
    if budget <= 0:
        problems.append(f"weights ({weights / GiB:.2f} GiB) and activations leave no KV cache at "
                        f"gpu_memory_utilization={inputs.gpu_memory_utilization}")
    elif num_blocks * inputs.block_size < max_model_len:
        problems.append(f"the KV cache holds {num_blocks * inputs.block_size} tokens but "
                        f"max_model_len={max_model_len} needs more")
    blocks_per = {n: -(-n // inputs.block_size) for n in (*inputs.typical_lengths, max_model_len)}
    return PlanResult(
        inputs=inputs, max_model_len=max_model_len, weight_bytes_per_gpu=weights,
        activation_bytes=activation, cuda_graph_bytes=graphs, non_torch_bytes=non_torch,
        kv_budget_bytes=budget, kv_bytes_per_token=per_token, kv_bytes_per_block=per_block,
        num_blocks=num_blocks, num_swap_blocks=num_swap,
        max_concurrency_at_max_len=num_blocks * inputs.block_size / max_model_len,
        concurrency_at={n: min(inputs.max_num_seqs, num_blocks // blocks_per[n])
                        for n in inputs.typical_lengths if n <= max_model_len},
        fits=not problems, problems=problems)


def _validate(inputs: PlanInputs) -> None:
    m = inputs.model
    if inputs.device not in ("cpu", "cuda"):
        raise ClientError(f"device must be cpu or cuda, got {inputs.device!r}", param="device")
    if inputs.device == "cuda" and inputs.kv_cache_memory_bytes is None and (
            inputs.gpu_memory_gib is None or inputs.gpu_memory_gib <= 0):
        raise ClientError("name a GPU (--gpu, one of " + ", ".join(GPUS_GIB) + ") or give "
                          "--gpu-memory-gib > 0", param="gpu")
    _dtype = _resolved_dtype(inputs)
    if _dtype not in DTYPE_BYTES:
        raise ClientError(f"dtype must be one of auto, {', '.join(DTYPE_BYTES)}; got "
                          f"{inputs.dtype!r}", param="dtype")
    if inputs.quantization and inputs.quantization not in QUANT_BYTES_PER_WEIGHT:
        raise ClientError(f"quantization must be one of {', '.join(QUANT_BYTES_PER_WEIGHT)}; got "
                          f"{inputs.quantization!r}", param="quantization")
    if inputs.kv_cache_dtype != "auto" and inputs.kv_cache_dtype not in KV_DTYPE_BYTES:
        raise ClientError(f"kv_cache_dtype must be auto or one of {', '.join(KV_DTYPE_BYTES)}",
                          param="kv_cache_dtype")
    length = inputs.max_model_len
    if length is not None and not 1 <= length <= m.max_position_embeddings:
        raise ClientError(f"max_model_len must be in [1, {m.max_position_embeddings}] (the "
                          f"model's max_position_embeddings), got {inputs.max_model_len}",
                          param="max_model_len")
    tp = inputs.tensor_parallel_size
    if tp < 1 or m.num_heads % tp or (m.num_kv_heads % tp and tp % m.num_kv_heads):
        raise ClientError(f"tensor_parallel_size={tp} must be >= 1 and divide "
                          f"num_attention_heads={m.num_heads} (and num_key_value_heads="
                          f"{m.num_kv_heads}, or be a multiple of it)",
                          param="tensor_parallel_size")
    if inputs.data_parallel_size < 1:
        raise ClientError("data_parallel_size must be >= 1", param="data_parallel_size")
    if not 0 < inputs.gpu_memory_utilization <= 1:
        raise ClientError("gpu_memory_utilization must be in (0, 1]",
                          param="gpu_memory_utilization")
    if inputs.max_num_seqs < 1:
        raise ClientError("max_num_seqs must be >= 1", param="max_num_seqs")
    stage_layer_counts(m.num_layers, inputs.pipeline_parallel_size)   # ClientError if too many
    CacheConfig(block_size=inputs.block_size)                         # ClientError if not 2^k


def suggest_fixes(inputs: PlanInputs, result: PlanResult) -> list[str]:
    """The guides' OOM order, tried one step at a time: each entry is a change that alone
    makes the plan fit, in the order the guides prefer. [] when it already fits or nothing
    in reach helps."""
    if result.fits:
        return []
    candidates = []
    if result.kv_budget_bytes > 0 and result.num_blocks * inputs.block_size >= inputs.block_size:
        fitting = result.num_blocks * inputs.block_size
        candidates.append((f"--max-model-len {fitting} (or lower)",
                           dataclasses.replace(inputs, max_model_len=fitting)))
    quantize = {"fp8": "quantize to fp8 (--quantization fp8, online at load)",
                "int4": "an int4 checkpoint (AWQ / GPTQ / compressed-tensors W4A16)"}
    for quant, text in quantize.items():
        if inputs.quantization is None:
            candidates.append((text, dataclasses.replace(inputs, quantization=quant)))
    if inputs.device == "cpu":
        # one host's memory: more ranks do not add any; a larger KV budget does
        blocks = -(-result.max_model_len // inputs.block_size) + 1      # one request, whole
        budget = -(-blocks * result.kv_bytes_per_block // 2**20) * 2**20   # MiB-rounded
        candidates.append((f"--kv-cache-memory-bytes {budget}",
                           dataclasses.replace(inputs, kv_cache_memory_bytes=budget)))
        return _fitting(candidates)
    tp = inputs.tensor_parallel_size
    for bigger in (2 * tp, 4 * tp, 8 * tp):
        candidates.append((f"--tensor-parallel-size {bigger}",
                           dataclasses.replace(inputs, tensor_parallel_size=bigger)))
    if inputs.gpu_memory_utilization < 0.95:
        candidates.append(("--gpu-memory-utilization 0.95",
                           dataclasses.replace(inputs, gpu_memory_utilization=0.95)))
    return _fitting(candidates)


def _fitting(candidates: list[tuple[str, "PlanInputs"]]) -> list[str]:
    """The texts of the candidate changes whose plan fits, in order."""
    fixes = []
    for text, changed in candidates:
        try:
            if plan(changed).fits:
                fixes.append(text)
        except ClientError:
            continue            # e.g. a TP size the heads cannot split into
    return fixes


def gpu_memory_gib(gpu: str | None, override: float | None) -> float | None:
    """``--gpu-memory-gib`` when given, else the table's size for ``--gpu`` (case and dashes
    ignored). ClientError for an unknown GPU name."""
    if override is not None:
        return override
    if gpu is None:
        return None
    key = gpu.upper().replace("_", "-").replace(" ", "-")
    for name, size in GPUS_GIB.items():
        if name.replace("-", "") == key.replace("-", ""):
            return size
    raise ClientError(f"unknown GPU {gpu!r}: choose from {', '.join(GPUS_GIB)}, or give "
                      "--gpu-memory-gib", param="gpu")


def format_plan(result: PlanResult) -> str:
    """The human-readable report."""
    i = result.inputs
    place = ("CPU" if i.device == "cpu" else f"GPU {i.gpu_memory_gib:g} GiB x "
             f"{i.tensor_parallel_size * i.pipeline_parallel_size * i.data_parallel_size}")
    lines = [f"Plan for {i.model.name} on {place} (tp={i.tensor_parallel_size}, "
             f"pp={i.pipeline_parallel_size}, dp={i.data_parallel_size}, dtype="
             f"{_resolved_dtype(i)}, quantization={i.quantization or 'none'})",
             f"  {'weights per ' + ('rank:' if i.device == 'cpu' else 'GPU:'):<28}"
             f"{result.weight_bytes_per_gpu / GiB:8.2f} GiB",
             f"  activation reserve:         {result.activation_bytes / GiB:8.2f} GiB"]
    if i.device != "cpu":
        lines += [f"  CUDA-graph reserve:         {result.cuda_graph_bytes / GiB:8.2f} GiB",
                  f"  other (CUDA context):       {result.non_torch_bytes / GiB:8.2f} GiB"]
    lines += [f"  KV cache budget:            {max(result.kv_budget_bytes, 0) / GiB:8.2f} GiB",
             f"  KV bytes per token:         {result.kv_bytes_per_token:8d}",
             f"  KV blocks (of {i.block_size}):         {result.num_blocks:8d}",
             f"  max concurrency at max_model_len={result.max_model_len}: "
             f"{result.max_concurrency_at_max_len:.2f}x"]
    for length, n in result.concurrency_at.items():
        lines.append(f"  concurrent requests at {length} tokens: {n} (max_num_seqs="
                     f"{i.max_num_seqs}) per replica, {n * i.data_parallel_size} in all")
    lines.append(f"  fits: {'yes' if result.fits else 'NO'}")
    lines += [f"  problem: {p}" for p in result.problems]
    if result.fixes:
        lines.append(f"  what to change (the guides' OOM order, {OOM_ORDER}):")
        lines += [f"    - {fix}" for fix in result.fixes]
    elif not result.fits:
        lines.append("  no single change in the guides' OOM order makes it fit: a smaller "
                     "model or more GPUs")
    return "\n".join(lines)


def result_json(result: PlanResult) -> dict:
    data = dataclasses.asdict(result)
    data["inputs"]["model"] = dataclasses.asdict(result.inputs.model)
    data["concurrency_at"] = {str(k): v for k, v in result.concurrency_at.items()}
    if math.isinf(data["max_concurrency_at_max_len"]):
        data["max_concurrency_at_max_len"] = None
    return data
