"""pagellm models against transformers on the same weights: tiny random llama / qwen2 / qwen3
from safetensors, the real default SmolLM2 GGUF, llama3 rope scaling, dummy weights, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from pagellm.errors import ClientError
from pagellm.models import get_model_class, load_hf_config, load_model
from pagellm.models.gguf_loader import infer_llama3_rope_scaling
from tests.helpers.hf_reference import hf_greedy
from tests.helpers.tiny_gguf import write_tiny_gguf
from tests.helpers.paged import build_attn_metadata, positions_for, random_block_tables
from tests.helpers.tiny_models import make_tiny_model_dir

BLOCK_SIZE = 4
PROMPTS = [[5, 17, 99, 3, 200, 41, 8, 8, 150], [66], [12, 250, 7, 7, 31, 90]]


def load_ours(path, load_format="auto", dtype=torch.float32, seed=0):
    config = load_hf_config(str(path))
    return load_model(str(path), config, load_format, dtype, torch.device("cpu"), seed)


def new_kv_caches(model, num_blocks=64):
    shape = (2, num_blocks, BLOCK_SIZE, model.num_kv_heads, model.head_dim)
    return [torch.zeros(shape, dtype=model.dtype) for _ in range(model.num_layers)]


class PagedRunner:
    """Drives one of our models step by step for a fixed set of requests, like the runner."""

    def __init__(self, model, max_lens, seed=0):
        self.model = model
        self.kv_caches = new_kv_caches(model)
        self.tables = random_block_tables(max_lens, BLOCK_SIZE, 64, torch.Generator().manual_seed(seed))

    @torch.no_grad()
    def step(self, chunks: list[list[int]], num_computed: list[int]) -> torch.Tensor:
        """Run ``chunks[i]`` as the next tokens of request i after ``num_computed[i]`` cached
        ones; returns float32 logits of each chunk's last token: [num_reqs, vocab]."""
        query_lens = [len(c) for c in chunks]
        seq_lens = [n + q for n, q in zip(num_computed, query_lens)]
        meta = build_attn_metadata(query_lens, seq_lens, self.tables, BLOCK_SIZE)
        input_ids = torch.tensor([t for c in chunks for t in c])
        hidden = self.model(input_ids, positions_for(query_lens, seq_lens), self.kv_caches, meta)
        last = torch.tensor(meta.query_start_loc_cpu[1:]) - 1
        return self.model.compute_logits(hidden[last])


@torch.no_grad()
def hf_last_logits(hf_model, token_ids: list[int]) -> torch.Tensor:
    return hf_model(torch.tensor([token_ids])).logits[0, -1].float()


def check_prefill_then_decode(ours, hf_model, prompts, atol):
    runner = PagedRunner(ours, [len(p) + 1 for p in prompts])
    logits = runner.step(prompts, [0] * len(prompts))
    assert logits.dtype == torch.float32 and logits.shape == (len(prompts), ours.vocab_size)
    for i, prompt in enumerate(prompts):
        torch.testing.assert_close(logits[i], hf_last_logits(hf_model, prompt), atol=atol, rtol=0)
    next_tokens = logits.argmax(-1).tolist()
    logits = runner.step([[t] for t in next_tokens], [len(p) for p in prompts])
    for i, prompt in enumerate(prompts):
        torch.testing.assert_close(logits[i], hf_last_logits(hf_model, prompt + [next_tokens[i]]),
                                   atol=atol, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_tiny_model_prefill_and_decode_match_hf(tiny_model_dirs, arch):
    model_dir = tiny_model_dirs[arch]
    ours = load_ours(model_dir)
    hf_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    check_prefill_then_decode(ours, hf_model, PROMPTS, atol=1e-4)


def test_chunked_prefill_mixed_with_decode_matches_hf(tiny_model_dirs):
    model_dir = tiny_model_dirs["qwen3"]
    ours = load_ours(model_dir)
    hf_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    long_prompt, short_prompt = PROMPTS[0] + PROMPTS[2], PROMPTS[2]
    runner = PagedRunner(ours, [len(long_prompt), len(short_prompt) + 1])
    # step 1: first 6 tokens of the long prompt and the whole short prompt
    logits = runner.step([long_prompt[:6], short_prompt], [0, 0])
    next_token = int(logits[1].argmax())
    # step 2: the rest of the long prompt next to a decode of the short one
    logits = runner.step([long_prompt[6:], [next_token]], [6, len(short_prompt)])
    torch.testing.assert_close(logits[0], hf_last_logits(hf_model, long_prompt), atol=1e-4, rtol=0)
    torch.testing.assert_close(logits[1], hf_last_logits(hf_model, short_prompt + [next_token]),
                               atol=1e-4, rtol=0)


def test_llama3_rope_scaling_matches_hf(tmp_path):
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    model_dir = make_tiny_model_dir(tmp_path, "llama", rope_scaling=scaling)
    ours = load_ours(model_dir)
    hf_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    long_prompt = [(7 * i + 3) % 250 for i in range(100)]  # past the original context
    check_prefill_then_decode(ours, hf_model, [long_prompt, PROMPTS[0]], atol=1e-4)


def test_sharded_safetensors_load(tmp_path):
    model_dir = make_tiny_model_dir(tmp_path, "llama", max_shard_size="50KB")
    assert (model_dir / "model.safetensors.index.json").is_file()
    assert len(list(model_dir.glob("*.safetensors"))) > 1
    ours = load_ours(model_dir, load_format="safetensors")
    hf_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    check_prefill_then_decode(ours, hf_model, PROMPTS[:2], atol=1e-4)


def test_bfloat16_load_runs_close_to_float32(tiny_model_dirs):
    ours32 = load_ours(tiny_model_dirs["llama"])
    ours16 = load_ours(tiny_model_dirs["llama"], dtype=torch.bfloat16)
    assert ours16.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in ours16.parameters())
    logits32 = PagedRunner(ours32, [10]).step([PROMPTS[0]], [0])
    logits16 = PagedRunner(ours16, [10]).step([PROMPTS[0]], [0])
    assert logits16.dtype == torch.float32
    assert (logits16 - logits32).abs().max() < 0.25 * logits32.abs().max()


def test_dummy_weights_are_deterministic_by_seed(tiny_model_dirs):
    model_dir = tiny_model_dirs["qwen2"]
    first, again = load_ours(model_dir, "dummy", seed=1), load_ours(model_dir, "dummy", seed=1)
    other = load_ours(model_dir, "dummy", seed=2)
    for (name, p), (_, q), (_, r) in zip(first.named_parameters(), again.named_parameters(),
                                         other.named_parameters()):
        assert torch.equal(p, q), name
        if "norm" in name:
            assert torch.all(p == 1), name
        else:
            assert not torch.equal(p, r), name
            assert 0.01 < p.std() < 0.03, name
    logits = PagedRunner(first, [10]).step([PROMPTS[0]], [0])
    assert torch.isfinite(logits).all()


@pytest.mark.slow
def test_gguf_default_model_matches_hf(default_model_path, hf_default_model):
    """The real default model (fetched once into the cache): logits of a prefill and a decode
    step match HF on the same GGUF, and so do 8 greedy tokens decoded step by step."""
    path = Path(default_model_path)
    config = load_hf_config(str(path))
    assert config.architectures == ["LlamaForCausalLM"] and config.tie_word_embeddings
    assert config.max_position_embeddings == 8192
    ours = load_ours(path)
    prompts = [[1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018,
                411, 407, 19712, 8182, 2, 198], [504, 3458, 282, 4649, 314]]
    check_prefill_then_decode(ours, hf_default_model, prompts, atol=1e-3)
    num_tokens = 8
    runner = PagedRunner(ours, [len(p) + num_tokens for p in prompts])
    chunks, num_computed, generated = prompts, [0, 0], [[], []]
    for _ in range(num_tokens):
        next_tokens = runner.step(chunks, num_computed).argmax(-1).tolist()
        num_computed = [n + len(c) for n, c in zip(num_computed, chunks)]
        chunks = [[t] for t in next_tokens]
        for tokens, token in zip(generated, next_tokens):
            tokens.append(token)
    assert generated == [hf_greedy(hf_default_model, p, num_tokens) for p in prompts]


def test_unsupported_architecture_is_a_client_error(tmp_path):
    with pytest.raises(ClientError, match="LlamaForCausalLM"):
        get_model_class(["GPT2LMHeadModel"])
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2",
                                                       "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ClientError, match="GPT2LMHeadModel"):
        load_hf_config(str(tmp_path))


def test_missing_paths_are_client_errors(tmp_path):
    with pytest.raises(ClientError, match="does not exist"):
        load_hf_config(str(tmp_path / "nope.gguf"))
    with pytest.raises(ClientError, match="neither"):
        load_hf_config(str(tmp_path / "nope"))
    with pytest.raises(ClientError, match="config.json"):
        load_hf_config(str(tmp_path))


def test_missing_weight_is_named(tmp_path):
    model_dir = make_tiny_model_dir(tmp_path, "qwen2")
    weights = load_file(model_dir / "model.safetensors")
    del weights["model.layers.1.mlp.down_proj.weight"]
    save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ClientError, match=r"model\.layers\.1\.mlp\.down_proj\.weight"):
        load_ours(model_dir)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_tiny_gguf_matches_hf(tiny_model_dirs, tmp_path, arch):
    """A llama.cpp-style float32 GGUF of each tiny model (llama with permuted q/k rows, qwen
    without) loads to the same logits as HF on the safetensors."""
    model_dir = tiny_model_dirs[arch]
    hf_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    gguf_path = write_tiny_gguf(model_dir, hf_model.config, arch, tmp_path / f"tiny-{arch}.gguf")
    config = load_hf_config(str(gguf_path))
    assert config.architectures == hf_model.config.architectures
    assert config.tie_word_embeddings == hf_model.config.tie_word_embeddings
    ours = load_ours(gguf_path)
    assert ours.head_dim == hf_model.model.layers[0].self_attn.head_dim
    check_prefill_then_decode(ours, hf_model, PROMPTS, atol=1e-4)


def test_gguf_rope_freqs_become_llama3_scaling():
    """llama.cpp stores Llama 3.1 scaling as per-frequency divisors; we recover parameters."""
    head_dim, theta, factor = 128, 500000.0, 8.0
    wavelen = 2 * math.pi * theta ** (np.arange(0, head_dim, 2) / head_dim)
    smooth = (8192 / wavelen - 1.0) / (4.0 - 1.0)
    divisors = np.where(wavelen < 8192 / 4, 1.0,
                        np.where(wavelen > 8192, factor, 1 / ((1 - smooth) / factor + smooth)))
    params = infer_llama3_rope_scaling(divisors.astype(np.float32), head_dim, theta)
    assert params == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    with pytest.raises(ClientError, match="rope_freqs"):
        infer_llama3_rope_scaling(np.linspace(1, 3, head_dim // 2, dtype=np.float32), head_dim, theta)
