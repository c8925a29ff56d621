"""Engines on real weights shared across the integration tests (loading is the slow part)."""

from __future__ import annotations

import os

import pytest
import torch

PROMPTS = [
    "The capital of France is",
    "Hello, my name is Sarah and I work as a",
    "Write a haiku about the sea.",
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,",
    "In a shocking finding, scientists discovered a herd of unicorns living in a remote, "
    "previously unexplored valley in the Andes Mountains. Even more surprising to the "
    "researchers was the fact that the unicorns spoke perfect English.",
    "def fibonacci(n):",
    "Q: What is the boiling point of water at sea level?\nA:",
    "The quick brown fox jumps over the lazy dog while the farmer",
    "Once upon a time, in a land far, far away, there lived a young dragon who loved to read "
    "books about knights, castles and the old kings of the mountain,",
]


@pytest.fixture(scope="session")
def default_model_path() -> str:
    from pagellm.models.default_model import resolve_model_path
    return resolve_model_path("default")


@pytest.fixture(scope="session")
def hf_default_model(default_model_path):
    from transformers import AutoModelForCausalLM
    directory, name = os.path.split(default_model_path)
    return AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def default_llm():
    """The default model with a small KV cache (fast to allocate, still many blocks)."""
    from pagellm import LLM
    return LLM("default", kv_cache_memory_bytes=256 * 2**20, max_model_len=2048, dtype="float32")
