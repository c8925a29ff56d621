"""The default model (SmolLM2-135M Q4_1, Q8_0 tied embedding) kept quantized on CPU vs the
dequantized float32 path.

Not greedy-equal by construction: the int4 kernel takes bfloat16 activations and bfloat16
scales (the GGUF scales are fp16) and returns bfloat16, so logits move by ~1e-2 and near-ties
flip. The check is therefore perplexity on a fixed text within 0.5% of the dequantized path
(the issue's alternative), with greedy agreement printed. The loaded weights take exactly the
documented bytes: Q4_1 tensors their own file size, Q8_0 1.25 bytes per weight, floats 4."""

from __future__ import annotations

import math

import pytest
import torch
from gguf import GGMLQuantizationType as T

from pagellm import LLM, SamplingParams
from pagellm.models.gguf_loader import open_gguf
from tests.integration.conftest import PROMPTS

TEXT = " ".join(PROMPTS)


def perplexity(llm: LLM, token_ids: list[int]) -> float:
    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
    output = llm.generate([token_ids], params, use_tqdm=False)[0]
    logprobs = [p[t].logprob for t, p in zip(token_ids[1:], output.prompt_logprobs[1:])]
    return math.exp(-sum(logprobs) / len(logprobs))


def worker_model(llm: LLM):
    return llm.llm_engine.engine_core.executor.worker.model


@pytest.fixture(scope="module")
def quantized_llm(default_model_path):
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("PAGELLM_GGUF_DEQUANTIZE", raising=False)
        return LLM(default_model_path, kv_cache_memory_bytes=64 * 2**20, max_model_len=1024,
                   dtype="float32")


def test_weight_bytes_are_the_quantized_size(quantized_llm, default_model_path):
    per_weight = {T.Q4_1: 0.625, T.Q8_0: 1.25, T.F32: 4}
    reader = open_gguf(default_model_path)
    expected = sum(int(t.n_elements * per_weight[t.tensor_type]) for t in reader.tensors)
    q4_1_file_bytes = sum(int(t.n_bytes) for t in reader.tensors if t.tensor_type == T.Q4_1)
    model = worker_model(quantized_llm)
    q4_bytes = sum(p.numel() * p.element_size() for name, p in model.named_parameters()
                   if ".layers." in name and ("qweight" in name or "scales_and_zeros" in name))
    assert q4_bytes == q4_1_file_bytes
    assert sum(p.numel() * p.element_size() for p in model.parameters()) == expected
    assert not any(name.endswith(".weight") and p.dim() == 2 for name, p in model.named_parameters())


def test_perplexity_within_half_a_percent_of_dequantized(quantized_llm, default_llm):
    token_ids = default_llm.get_tokenizer().encode(TEXT)
    assert len(token_ids) > 120
    quantized, dense = perplexity(quantized_llm, token_ids), perplexity(default_llm, token_ids)
    greedy = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    pairs = [(a, b) for q, d in zip(quantized_llm.generate(PROMPTS, greedy, use_tqdm=False),
                                    default_llm.generate(PROMPTS, greedy, use_tqdm=False))
             for a, b in zip(q.outputs[0].token_ids, d.outputs[0].token_ids)]
    print(f"perplexity kept quantized {quantized:.4f} vs dequantized {dense:.4f} "
          f"({100 * (quantized / dense - 1):+.3f}%); greedy position agreement "
          f"{sum(a == b for a, b in pairs) / len(pairs):.3f}")
    assert abs(quantized / dense - 1) < 0.005


def test_every_kept_type_loads_quantized_on_cpu(tmp_path, monkeypatch):
    """A tiny GGUF of Q4_0/Q4_1/Q8_0/Q4_K/Q5_K/Q6_K tensors: every module becomes nibble
    planes; Q6_K (and the fused qkv that holds a Q6_K piece) as folded sub-blocks."""
    from pagellm.layers.gguf_linear import GGUFLinearMethod
    from tests.helpers.quantized_gguf import load_both_ways
    quantized, _, logits_q, logits_d = load_both_ways(tmp_path, monkeypatch, "cpu")
    methods = {name: m.quant_method for name, m in quantized.named_modules()
               if hasattr(m, "quant_method")}
    assert len(methods) == 9 and all(isinstance(m, GGUFLinearMethod) for m in methods.values())
    assert sorted(name for name, m in methods.items() if m.folded) == [
        "model.layers.0.mlp.down_proj", "model.layers.0.self_attn.qkv_proj"]
    assert not any(n.endswith("proj.weight") for n, _ in quantized.named_parameters())
    rel = ((logits_q - logits_d).norm() / logits_d.norm()).item()
    # bfloat16 activations / scales in the int4 kernel, amplified by random blocks (0.086)
    assert 0 < rel < 0.15, rel


def test_gpu_layout_model_equals_dequantized(tmp_path, monkeypatch):
    """The CUDA method (GPU layout, here through its float32 torch twin) for every type,
    the fused qkv of Q4_K + Q6_K pieces regrouped to 16: logits equal the dequantized load."""
    import pagellm.models.gguf_quantized as gguf_quantized
    from pagellm.layers.gguf_linear import GGUFTritonLinearMethod
    from tests.helpers.quantized_gguf import load_both_ways
    choose = gguf_quantized._method_for
    monkeypatch.setattr(gguf_quantized, "_method_for",
                        lambda module, name, types, cuda: choose(module, name, types, True))
    quantized, _, logits_q, logits_d = load_both_ways(tmp_path, monkeypatch, "cpu")
    methods = [m.quant_method for m in quantized.modules() if hasattr(m, "quant_method")]
    assert len(methods) == 9 and all(isinstance(m, GGUFTritonLinearMethod) for m in methods)
    assert quantized.model.layers[0].self_attn.qkv_proj.scales.shape == (256 // 16, 512)
    torch.testing.assert_close(logits_q, logits_d, rtol=1e-5, atol=1e-4)
