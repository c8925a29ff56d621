"""Shared fixtures, and the skip guard: a test not marked ``gpu`` that skips fails the session
(tests/helpers/skip_guard.py). Tiny random HF models come from tests/helpers/tiny_models.py."""

from __future__ import annotations

import os

import pytest

from tests.helpers.skip_guard import SkipGuard
from tests.helpers.tiny_models import make_tiny_model_dir


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(SkipGuard(), "pagellm_skip_guard")
    # The HF-equality tests compare float32 numerics, so GGUF models load dequantized in tests
    # (servers they spawn inherit it); tests of the kept-quantized GGUF path unset it.
    os.environ.setdefault("PAGELLM_GGUF_DEQUANTIZE", "1")


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict:
    """{arch: directory} of the three tiny random models, written once per session."""
    root = tmp_path_factory.mktemp("tiny_models")
    return {arch: make_tiny_model_dir(root, arch) for arch in ("llama", "qwen2", "qwen3")}
