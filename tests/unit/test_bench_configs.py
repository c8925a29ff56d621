"""The shipped model shapes hold the real hyperparameters and resolve by name."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from transformers import AutoConfig

from pagellm.bench.common import (SHIPPED_CONFIGS_DIR, bench_engine_kwargs, resolve_bench_model,
                                  shipped_model_names)
from pagellm.config.cli_args import add_engine_args

LLAMA_31_COMMON = dict(
    architectures=["LlamaForCausalLM"], num_key_value_heads=8, vocab_size=128256,
    rope_theta=500000.0, max_position_embeddings=131072, rms_norm_eps=1e-5,
    tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001,
    rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                      original_max_position_embeddings=8192))
"""What Llama-3.1 8B and 70B share (Meta's config.json files)."""

EXPECTED = {
    "llama-3.1-8b": dict(LLAMA_31_COMMON, hidden_size=4096, num_hidden_layers=32,
                         num_attention_heads=32, intermediate_size=14336),
    "llama-3.1-70b": dict(LLAMA_31_COMMON, hidden_size=8192, num_hidden_layers=80,
                          num_attention_heads=64, intermediate_size=28672),
    "qwen3-0.6b": dict(
        architectures=["Qwen3ForCausalLM"], hidden_size=1024, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, intermediate_size=3072,
        vocab_size=151936, rope_theta=1000000, max_position_embeddings=40960,
        rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645),
}


def test_shipped_names():
    assert shipped_model_names() == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_config_hyperparameters(name):
    directory = resolve_bench_model(name)
    raw = json.loads((Path(directory) / "config.json").read_text())
    for key, value in EXPECTED[name].items():
        actual = raw[key]
        if key == "rope_scaling":
            actual = {k: actual[k] for k in value}
        assert actual == value, key
    assert raw["torch_dtype"] == "bfloat16"
    config = AutoConfig.from_pretrained(directory)     # transformers reads it
    assert config.architectures == EXPECTED[name]["architectures"]


def test_resolution_and_engine_defaults_for_a_shipped_shape(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_bench_model("qwen3-0.6b") == str(SHIPPED_CONFIGS_DIR / "qwen3-0.6b")
    assert resolve_bench_model(None) == "default"
    assert resolve_bench_model("some/dir") == "some/dir"
    parser = add_engine_args(argparse.ArgumentParser())
    kwargs = bench_engine_kwargs(parser.parse_args(["--model", "llama-3.1-8b", "--dtype",
                                                    "bfloat16"]))
    assert kwargs == {"model": str(SHIPPED_CONFIGS_DIR / "llama-3.1-8b"), "dtype": "bfloat16",
                      "load_format": "dummy", "skip_tokenizer_init": True}
    kwargs = bench_engine_kwargs(parser.parse_args(["--model", "qwen3-0.6b",
                                                    "--no-skip-tokenizer-init"]))
    assert kwargs["skip_tokenizer_init"] is False


def test_existing_directory_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("qwen3-0.6b").mkdir()
    assert resolve_bench_model("qwen3-0.6b") == "qwen3-0.6b"
