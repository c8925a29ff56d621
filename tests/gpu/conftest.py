"""Everything here needs a CUDA device and triton; without them the whole directory skips."""

from __future__ import annotations

import gc

import pytest
import torch


@pytest.fixture(autouse=True)
def _needs_cuda_and_triton():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    pytest.importorskip("triton")


@pytest.fixture
def free_engines():
    """Each engine sizes its KV cache from free memory: release the previous ones first (and
    this test's after it). Use with ``pytest.mark.usefixtures("free_engines")``."""
    gc.collect()
    torch.cuda.empty_cache()
    yield
    gc.collect()
    torch.cuda.empty_cache()
