"""LoRA ops on CPU: the torch twin equals a per-token reference (and leaves base tokens
alone), the Triton kernels equal the twin under TRITON_INTERPRET=1 (subprocess: the variable
must be set before triton is imported; also expanding into a column slice of a wider output,
as fully sharded row-parallel layers do), PEFT scaling (alpha / r, rsLoRA alpha / sqrt r) and
LoRALayer packing of q/k/v pieces into block-diagonal slots."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import numpy as np
import torch

from pagellm.lora.ops import lora_delta_torch
from pagellm.lora.peft import _scaling

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_twin_equals_per_token_reference():
    torch.manual_seed(0)
    x = torch.randn(9, 12)                                  # [T, K]
    a_slots, b_slots = torch.randn(3, 4, 12), torch.randn(3, 10, 4)
    token_slots = [-1, 0, 2, 0, -1, 1, 2, 2, -1]
    out = torch.randn(9, 10)
    expected = out.clone()
    for t, s in enumerate(token_slots):
        if s >= 0:
            expected[t] += b_slots[s] @ (a_slots[s] @ x[t])
    slots = torch.tensor(token_slots)
    groups = [(s, torch.nonzero(slots == s).flatten()) for s in range(3)]
    before = out.clone()
    lora_delta_torch(x, a_slots, b_slots, groups, out)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(out[slots == -1], before[slots == -1])


def test_triton_kernels_in_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO_ROOT))
    code = ("import torch\nfrom tests.gpu.lora_cases import check_lora_kernels\n"
            "assert check_lora_kernels(7, 3, 8, 40, 24, 'cpu', torch.float32) < 1e-5\n"
            "assert check_lora_kernels(5, 2, 24, 130, 70, 'cpu', torch.float32, seed=1) < 1e-5\n"
            # fully sharded: 3 pieces x R/tp = 12 A rows; expand into a column slice
            "assert check_lora_kernels(4, 2, 12, 40, 20, 'cpu', torch.float32, seed=2, "
            "column_offset=20) < 1e-5\n"
            # > 64 tokens (64-token blocks) and split-K partial sums (few tokens, K >= 1024)
            "assert check_lora_kernels(70, 3, 16, 96, 40, 'cpu', torch.float32, seed=3) < 1e-5\n"
            "assert check_lora_kernels(3, 2, 8, 1100, 24, 'cpu', torch.float32, seed=4) < 1e-5\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_make_mapping_segments_group_tokens_by_slot():
    from pagellm.lora.ops import make_mapping
    from pagellm.ops.triton.lora import shrink_split_k

    mapping = make_mapping(np.array([-1, 2, 0, 2, -1, 0, 2]), 4, torch.device("cpu"))
    assert mapping.token_slots.tolist() == [-1, 2, 0, 2, -1, 0, 2]
    sorted_tokens, seg_start, seg_len = mapping.segments
    assert sorted_tokens.tolist()[:5] == [2, 5, 1, 3, 6]          # slot 0's tokens, then slot 2's
    assert seg_start.tolist() == [0, 2, 2, 5] and seg_len.tolist() == [2, 0, 3, 0]
    assert [(slot, index.tolist()) for slot, index in mapping.groups] == [(0, [2, 5]),
                                                                         (2, [1, 3, 6])]
    empty = make_mapping(np.array([-1, -1]), 2, torch.device("cpu"))
    assert empty.groups == [] and empty.seg_len.tolist() == [0, 0]
    assert [shrink_split_k(t, k) for t, k in ((1, 4096), (64, 14336), (65, 4096), (8, 100))] \
        == [8, 16, 1, 1]


def test_peft_scaling():
    assert _scaling({"lora_alpha": 16}, 8) == 2.0
    assert _scaling({"lora_alpha": 16, "use_rslora": True}, 4) == 8.0
    assert math.isclose(_scaling({"lora_alpha": 16, "use_rslora": True}, 8), 16 / math.sqrt(8))
    assert _scaling({}, 8) == 1.0


def test_packed_qkv_slots_are_block_diagonal():
    from pagellm.layers.linear import QKVParallelLinear
    from pagellm.lora.layers import LoRAContext, LoRALayer

    layer = QKVParallelLinear(16, 4, 4, 2, bias=False)      # q 16, k 8, v 8 outputs
    lora_layer = LoRALayer(layer, [("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v")],
                           max_loras=2, max_rank=4, dtype=torch.float32,
                           device=torch.device("cpu"), context=LoRAContext())
    a_q, b_q = torch.randn(2, 16), torch.randn(16, 2)       # rank 2 < max rank 4
    a_v, b_v = torch.randn(2, 16), torch.randn(8, 2)
    lora_layer.set_slot(1, {"q_proj": (a_q, b_q), "v_proj": (a_v, b_v)})
    a, b = lora_layer.a_slots[1], lora_layer.b_slots[1]      # [12, 16], [32, 12]
    assert torch.equal(a[0:2], a_q) and torch.equal(a[8:10], a_v)
    assert not a[2:8].any() and not a[10:].any()
    assert torch.equal(b[:16, 0:2], b_q) and torch.equal(b[24:, 8:10], b_v)
    assert not b[16:24].any()                               # k has no adapter
    assert not lora_layer.a_slots[0].any() and not lora_layer.b_slots[0].any()
