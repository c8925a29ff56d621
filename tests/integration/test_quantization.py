"""Quantized checkpoints written by the real quantizers (tests/helpers/quantized_models.py),
loaded by pagellm on CPU:

- weight-only schemes (compressed-tensors W4A16 / W8A16 / per-channel / GPTQ asymmetric
  g32, AutoAWQ GEMM, native GPTQ 4/8-bit, v1/v2, desc_act with g_idx) give the greedy tokens of the checkpoint
  dequantized by the quantizer's own code into a dense float32 model, logprobs within 1e-3
  (measured: under 2e-5; the dense path multiplies dequantized weights, ours dequantizes per
  call: only float32 rounding differs);
- activation-quantized schemes (FP8 dynamic and static, W8A8-INT8) match transformers
  running the same compressed-tensors checkpoint (it applies the same activation
  quantization): greedy tokens equal; prompt logprobs within 1e-3 for FP8 (measured 0.0) and
  0.1 for INT8 (measured 0.055: an int8 activation that rounds the other way on a random
  tiny model whose weights have std 0.2);
- online fp8 (``quantization="fp8"`` on the float32 checkpoint) equals llm-compressor's
  FP8_DYNAMIC checkpoint of it (the same per-channel weight quantization);
- the loaded weights occupy exactly the quantized size (a formula from the shapes), per rank
  under TP=2, where the tokens equal TP=1's;
- a quantization= that contradicts the checkpoint fails before any worker starts.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from pagellm import LLM, ClientError, SamplingParams
from pagellm.models import load_hf_config, load_model
from pagellm.models.loader import LoadStats
from tests.helpers.hf_reference import hf_greedy, hf_prompt_logprobs
from tests.helpers.quantized_models import (TINY_QUANT_SHAPES, autoawq_checkpoint,
                                            dequantized_copy, gptq_from_compressed_tensors,
                                            llmcompressor_checkpoint)
from tests.helpers.tiny_models import make_tiny_model_dir

ENGINE = dict(device="cpu", dtype="float32", kv_cache_memory_bytes=8 * 2**20, block_size=4)
PROMPTS = [list(range(3, 3 + n)) for n in (1, 6, 13)]
MAX_TOKENS = 12
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=0)


def _int_group(bits: int, group_size: int | None, symmetric: bool, actorder=None,
               strategy: str = "group") -> dict:
    weights = {"num_bits": bits, "type": "int", "symmetric": symmetric, "strategy": strategy,
               "group_size": group_size, "actorder": actorder}
    return {"group_0": {"targets": ["Linear"], "weights": weights}}


# name -> how it is written; the byte layout each one loads into (for the size formula)
CHECKPOINTS = {
    "ct-w4a16": dict(scheme="W4A16"),
    "ct-w8a16": dict(scheme="W8A16"),
    "ct-w4-channel": dict(scheme=_int_group(4, None, True, strategy="channel")),
    "ct-gptq-w4-g32-asym": dict(scheme=_int_group(4, 32, False, "weight"), gptq=True),
    "ct-fp8-dynamic": dict(scheme="FP8_DYNAMIC"),
    "ct-fp8-static": dict(scheme="FP8", calibrate=True),
    "ct-w8a8-int8": dict(scheme="W8A8"),
}
LAYOUTS = {
    "ct-w4a16": dict(kind="wna16", bits=4, group=128, zeros=False, g_idx=False),
    "ct-w8a16": dict(kind="wna16", bits=8, group=128, zeros=False, g_idx=False),
    "ct-w4-channel": dict(kind="wna16", bits=4, group=-1, zeros=False, g_idx=False),
    "ct-gptq-w4-g32-asym": dict(kind="wna16", bits=4, group=32, zeros=True, g_idx=False),
    "ct-fp8-dynamic": dict(kind="w8a8"), "ct-fp8-static": dict(kind="w8a8", static=True),
    "ct-w8a8-int8": dict(kind="w8a8"), "vllm-fp8-static": dict(kind="w8a8", static=True),
    "awq-g64": dict(kind="wna16", bits=4, group=64, zeros=True, g_idx=False),
    "gptq-desc-act-asym-g32": dict(kind="wna16", bits=4, group=32, zeros=True, g_idx=True),
    # symmetric GPTQ checkpoints store zero points; these are all 2**(bits - 1), which the loader
    # drops (zero points of any other value are kept, whatever the config says)
    "gptq-8bit-g128": dict(kind="wna16", bits=8, group=128, zeros=False, g_idx=False),
    "gptq-v2-channel": dict(kind="wna16", bits=4, group=-1, zeros=False, g_idx=False),
}
WEIGHT_ONLY = ["ct-w4a16", "ct-w8a16", "ct-w4-channel", "ct-gptq-w4-g32-asym",
               "awq-g64", "gptq-desc-act-asym-g32", "gptq-8bit-g128", "gptq-v2-channel"]
# native GPTQ (fallback writer) -> (compressed-tensors source, checkpoint_format)
NATIVE_GPTQ = {"gptq-desc-act-asym-g32": ("ct-gptq-w4-g32-asym", "gptq", True),
               "gptq-8bit-g128": ("ct-w8a16", "gptq", False),
               "gptq-v2-channel": ("ct-w4-channel", "gptq_v2", False)}


@pytest.fixture(scope="session")
def quantized_dirs(tmp_path_factory) -> dict:
    """{name: checkpoint directory}, plus "base" (the float32 model) and "dense:<name>" (the
    dequantized twin of each weight-only checkpoint); written once per session."""
    root = tmp_path_factory.mktemp("quantized")
    base = make_tiny_model_dir(root, "llama", **TINY_QUANT_SHAPES)
    dirs = {"base": base}
    for name, how in CHECKPOINTS.items():
        dirs[name] = llmcompressor_checkpoint(base, root / name, **how)
    dirs["awq-g64"] = autoawq_checkpoint(base, root / "awq-g64", group_size=64)
    for name, (source, fmt, desc_act) in NATIVE_GPTQ.items():
        dirs[name] = gptq_from_compressed_tensors(dirs[source], root / name, fmt, desc_act)
    dirs["vllm-fp8-static"] = _as_vllm_fp8(dirs["ct-fp8-static"], root / "vllm-fp8-static")
    for name in WEIGHT_ONLY:
        dirs[f"dense:{name}"] = dequantized_copy(dirs[name], root / f"dense-{name}")
    return dirs


def _as_vllm_fp8(ct_dir, out_dir):
    """vLLM's fp8 checkpoint format (AutoFP8's): the same tensors (fp8 weight, per-tensor
    weight_scale and input_scale) under ``quant_method: fp8, activation_scheme: static``."""
    shutil.copytree(ct_dir, out_dir)
    config = json.loads((out_dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "static",
                                     "ignored_layers": ["lm_head"]}
    (out_dir / "config.json").write_text(json.dumps(config))
    return out_dir


_OUTPUTS: dict = {}


def generate(model_dir, **engine_args):
    """(greedy token ids, chosen-token logprobs) per prompt, memoized per directory/args."""
    key = (str(model_dir), tuple(sorted(engine_args.items())))
    if key not in _OUTPUTS:
        llm = LLM(str(model_dir), **{**ENGINE, **engine_args})
        outputs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
        _OUTPUTS[key] = ([o.outputs[0].token_ids for o in outputs],
                         [[next(iter(step.values())).logprob for step in o.outputs[0].logprobs]
                          for o in outputs],
                         llm.llm_engine.engine_core.executor.load_stats)
        llm.shutdown()
    return _OUTPUTS[key]


def max_logprob_gap(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for row_a, row_b in zip(a, b) for x, y in zip(row_a, row_b))


@pytest.mark.parametrize("name", WEIGHT_ONLY)
def test_weight_only_matches_dequantized_dense_model(quantized_dirs, name):
    tokens, logprobs, _ = generate(quantized_dirs[name])
    dense_tokens, dense_logprobs, _ = generate(quantized_dirs[f"dense:{name}"])
    assert tokens == dense_tokens
    assert max_logprob_gap(logprobs, dense_logprobs) < 1e-3


@pytest.mark.parametrize("name, tolerance", [("ct-fp8-dynamic", 1e-3), ("ct-fp8-static", 1e-3),
                                             ("ct-w8a8-int8", 0.1), ("ct-w4a16", 1e-3)])
def test_compressed_tensors_matches_transformers(quantized_dirs, name, tolerance):
    hf_model = AutoModelForCausalLM.from_pretrained(str(quantized_dirs[name]),
                                                    dtype=torch.float32).eval()
    tokens, logprobs, _ = generate(quantized_dirs[name])
    assert tokens == [hf_greedy(hf_model, prompt, MAX_TOKENS) for prompt in PROMPTS]
    for prompt, generated, ours in zip(PROMPTS, tokens, logprobs):
        theirs = hf_prompt_logprobs(hf_model, prompt + generated)[len(prompt) - 1:]
        assert (torch.tensor(ours) - theirs).abs().max() < tolerance


def test_online_fp8_equals_llmcompressor_fp8_dynamic(quantized_dirs):
    online_tokens, online_logprobs, online_stats = generate(quantized_dirs["base"],
                                                            quantization="fp8")
    tokens, logprobs, stats = generate(quantized_dirs["ct-fp8-dynamic"])
    assert online_tokens == tokens
    assert max_logprob_gap(online_logprobs, logprobs) < 1e-5
    assert online_stats[0].param_bytes == stats[0].param_bytes


def test_vllm_fp8_format_equals_compressed_tensors_fp8(quantized_dirs):
    vllm_tokens, vllm_logprobs, _ = generate(quantized_dirs["vllm-fp8-static"])
    tokens, logprobs, _ = generate(quantized_dirs["ct-fp8-static"])
    assert vllm_tokens == tokens and max_logprob_gap(vllm_logprobs, logprobs) < 1e-5


def expected_param_bytes(hf_config, layout: dict, tp_size: int = 1) -> int:
    """This rank's parameter bytes from the shapes alone: every linear at its quantized size
    (bits/8 per weight, float32 scales, packed zero points, int32 g_idx, fp32 per-channel
    scales for W8A8) and the dense rest (embedding, LM head, norms) in float32."""
    hidden, inter = hf_config.hidden_size, hf_config.intermediate_size
    head_dim = hidden // hf_config.num_attention_heads
    qkv = (hf_config.num_attention_heads + 2 * hf_config.num_key_value_heads) * head_dim
    # (N, K, row-parallel) per decoder layer
    linears = [(qkv, hidden, False), (hidden, hf_config.num_attention_heads * head_dim, True),
               (2 * inter, hidden, False), (hidden, inter, True)]
    total = 0
    for n, k, row in linears:
        n_rank, k_rank = (n, k // tp_size) if row else (n // tp_size, k)
        if layout["kind"] == "w8a8":
            total += n_rank * k_rank + n_rank * 4 + (4 if layout.get("static") else 0)
            continue
        group = layout["group"]
        if group == -1:
            groups = 1
        elif layout["g_idx"] and row and tp_size > 1:
            groups = k // group                    # act-order: every rank keeps all groups
        else:
            groups = k_rank // group
        total += n_rank * k_rank * layout["bits"] // 8 + groups * n_rank * 4
        total += groups * n_rank * layout["bits"] // 8 if layout["zeros"] else 0
        total += k_rank * 4 if layout["g_idx"] else 0
    vocab_rows = math.ceil(hf_config.vocab_size / tp_size)
    dense = 2 * vocab_rows * hidden * 4 + (2 * hf_config.num_hidden_layers + 1) * hidden * 4
    return hf_config.num_hidden_layers * total + dense


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_loaded_weights_are_the_quantized_size(quantized_dirs, name):
    path = str(quantized_dirs[name])
    hf_config = load_hf_config(path)
    stats = LoadStats()
    model = load_model(path, hf_config, "auto", torch.float32, torch.device("cpu"), stats=stats)
    assert stats.param_bytes == expected_param_bytes(hf_config, LAYOUTS[name])
    layer = model.model.layers[0].mlp.down_proj
    weight = layer.qweight if hasattr(layer, "qweight") else layer.weight
    assert weight.dtype in (torch.int32, torch.int8, torch.float8_e4m3fn)
    assert not any(p.dtype == torch.float32 and p.dim() == 2 and p.shape == (128, 256)
                   for p in layer.parameters()), "a dense copy of the weight was kept"


def test_tensor_parallel_2_shards_quantized_weights(quantized_dirs):
    """AWQ: groups and packed zero words sharded (act-order and fp8 sharding: the spawned
    layer checks in tests/unit/test_parallel_layers.py)."""
    name = "awq-g64"
    tokens, logprobs, _ = generate(quantized_dirs[name])
    tp_tokens, tp_logprobs, tp_stats = generate(quantized_dirs[name], tensor_parallel_size=2)
    assert tp_tokens == tokens
    assert max_logprob_gap(tp_logprobs, logprobs) < 1e-4
    hf_config = load_hf_config(str(quantized_dirs[name]))
    expected = expected_param_bytes(hf_config, LAYOUTS[name], tp_size=2)
    assert [stats.param_bytes for stats in tp_stats] == [expected, expected]


def test_quantization_mismatch_fails_before_workers(quantized_dirs):
    with pytest.raises(ClientError, match="does not match the checkpoint's quantization method "
                                          "'compressed-tensors'"):
        LLM(str(quantized_dirs["ct-w4a16"]), tensor_parallel_size=2, quantization="awq",
            **ENGINE)
    with pytest.raises(ClientError, match="needs a checkpoint quantized with gptq"):
        LLM(str(quantized_dirs["base"]), quantization="gptq_marlin", **ENGINE)


def test_gptq_marlin_name_runs_the_gptq_checkpoint(quantized_dirs):
    name = "gptq-8bit-g128"
    assert generate(quantized_dirs[name], quantization="gptq_marlin")[0] == \
        generate(quantized_dirs[name])[0]
