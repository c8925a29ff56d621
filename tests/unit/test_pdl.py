"""Host-side rules of the decode GEMVs' programmatic dependent launch (``pagellm.ops.triton.pdl``)
and of the one-shot all-gather's row width: when PDL is on, how much of a weight is prefetched,
and which tensors the one-shot gather takes. (The kernels' instruction order is checked in
``test_triton_compile_sm90.py``, their behaviour on a GPU in ``tests/gpu/test_pdl_gpu.py``.)"""

from __future__ import annotations

import pytest
import torch

from pagellm.ops.triton import pdl
from pagellm.ops.triton.one_shot_all_reduce import gather_row


def test_pdl_off_on_cpu_and_when_disabled(monkeypatch):
    assert not pdl.pdl_enabled(torch.device("cpu"))
    monkeypatch.setenv("PAGELLM_PDL", "0")
    assert not pdl.pdl_enabled(torch.device("cuda", 0))       # decided before asking the GPU


def test_prefetch_whole_slices_when_the_weight_fits(monkeypatch):
    monkeypatch.setattr(pdl, "PREFETCH_BYTES", 8 << 20)
    weight = torch.empty(1024, 2048, dtype=torch.bfloat16)     # 4 MB
    assert pdl.prefetch_elements(weight, 1024, 512, 4, 256) == 512


@pytest.mark.parametrize("rows, k, block_k, want", [(6144, 4096, 256, 256), (28672, 4096, 512, 0)])
def test_prefetch_rounds_down_to_tiles(monkeypatch, rows, k, block_k, want):
    """8 MB over 6144 rows x 2 slices x 2 bytes = 341 elements a row slice: one 256 tile;
    over 28672 rows: 73, less than a tile: no prefetch."""
    monkeypatch.setattr(pdl, "PREFETCH_BYTES", 8 << 20)
    weight = torch.empty(rows, k, dtype=torch.bfloat16)
    assert pdl.prefetch_elements(weight, rows, k // 2, 2, block_k) == want


def test_prefetch_needs_16_byte_alignment(monkeypatch):
    monkeypatch.setattr(pdl, "PREFETCH_BYTES", 8 << 20)
    odd_rows = torch.empty(64, 1001, dtype=torch.bfloat16)     # a row is 2002 bytes
    assert pdl.prefetch_elements(odd_rows, 64, 1001, 1, 256) == 0
    odd_slice = torch.empty(64, 1024, dtype=torch.bfloat16)
    assert pdl.prefetch_elements(odd_slice, 64, 516 - 1, 2, 256) == 0    # 1030-byte slices


@pytest.mark.parametrize("numel, row", [(64128, 128), (128256, 256), (2048, 1024), (4096, 1024),
                                        (75968, 64), (500, 0), (2000, 16), (7, 0)])
def test_gather_row_width(numel, row):
    assert gather_row(numel) == row


def test_prefetch_budget_depends_on_tensor_parallel_size(monkeypatch):
    """4 MB at TP=1, 8 MB above (the measured defaults); the environment variable wins; the
    worker's ``configure`` sets the module budget the launchers read."""
    monkeypatch.delenv(pdl.PREFETCH_MB_ENV, raising=False)
    assert pdl.prefetch_budget(1) == 4 << 20
    assert pdl.prefetch_budget(2) == pdl.prefetch_budget(8) == 8 << 20
    monkeypatch.setenv(pdl.PREFETCH_MB_ENV, "1.5")
    assert pdl.prefetch_budget(1) == pdl.prefetch_budget(4) == 3 << 19
    monkeypatch.delenv(pdl.PREFETCH_MB_ENV)
    monkeypatch.setattr(pdl, "PREFETCH_BYTES", 0)
    pdl.configure(2)
    assert pdl.PREFETCH_BYTES == 8 << 20
