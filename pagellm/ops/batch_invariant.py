"""Batch invariance: a token's result independent of the other tokens of its step, so a
speculative verify forward over 1 + k positions gives bit-identical logits to 1 + k single
decode steps (greedy speculation returns exactly the tokens of plain decoding).

Which CPU ops are batch-variant (measured, ``benchmarks/RESULTS.md`` "batch invariance"):

- Attention (torch backend): SDPA's CPU kernel blocks the query rows, so a query row's output
  changes with the number of rows in the call (decode = 1 row per request, verify = 1 + k),
  and a batched decode pads every context to the longest one.
- Dense fp32/bf16 GEMM (``pagellm.layers.linear.linear``: unquantized layers and LM head): the
  BLAS picks other kernels for other row counts (fp32 rows agree only for M % 4 == 0).
- Invariant already: torch's int4 matmul ``_weight_int4pack_mm_for_cpu`` (the default GGUF
  model's layers and LM head: any M from 1 to 40 gives the same rows), RMSNorm, rotary, SiLU,
  embedding lookups, and greedy sampling (row-wise).

Always on (cheap): a request with 2..16 query tokens (a verify) attends token by token, each
token exactly as a batch-1 decode step (``attend_per_token``; ``pagellm.ops.attention``).
With int4 GEMMs this makes the default model's verify equal batch-1 decoding.

``PAGELLM_BATCH_INVARIANT=1`` (vLLM's ``VLLM_BATCH_INVARIANT``), the strict mode, adds: every
query token of every request attends on its own (decode batches and prefills too), and dense
GEMMs run in blocks of exactly ``INVARIANT_GEMM_ROWS`` rows (``invariant_linear``), so any
model's results are independent of batch composition. Slower prefills (one SDPA call per
prompt token). Not covered: the Triton attention backend and CUDA GEMMs (vLLM uses its own
persistent kernels there); the mode is for the CPU path.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

BATCH_INVARIANT_ENV = "PAGELLM_BATCH_INVARIANT"
"""``PAGELLM_BATCH_INVARIANT=1`` turns the mode on (read at every call, so tests may set it)."""

INVARIANT_GEMM_ROWS = 8
"""Rows per GEMM call in the mode: fp32 rows agree across calls of the same row count; 8
covers a decode row and a verify of 1 + k <= 8 tokens in one call."""


def batch_invariant() -> bool:
    """Whether ``PAGELLM_BATCH_INVARIANT`` is set to 1 / true."""
    return os.environ.get(BATCH_INVARIANT_ENV, "").lower() in ("1", "true")


def invariant_linear(x: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` whose row i depends on ``x[i]`` only: x [M, in] is zero-padded to a
    multiple of ``INVARIANT_GEMM_ROWS`` rows and multiplied one block at a time (each block
    one ``torch.mm`` of the same shape), bias added elementwise. weight [out, in] -> [M, out]."""
    num_rows = x.shape[0]
    rows = INVARIANT_GEMM_ROWS
    padded = F.pad(x, (0, 0, 0, -num_rows % rows))                   # [ceil(M / 8) * 8, in]
    weight_t = weight.t()
    out = torch.cat([torch.mm(block, weight_t) for block in padded.split(rows)])[:num_rows]
    return out if bias is None else out + bias                       # [M, out]


def attend_per_token(query: torch.Tensor, kv_cache: torch.Tensor, block_table: torch.Tensor,
                     seq_len: int, scale: float, k_scale: float = 1.0,
                     v_scale: float = 1.0) -> torch.Tensor:
    """One request's query tokens (the last ``q_len`` of its ``seq_len`` positions), each in
    its own SDPA call over exactly its context (positions 0..its own), the query heads that
    share a KV head as that head's rows: the same call for a token whether it is a decode
    step or one row of a verify. query [q_len, num_heads, head_dim], block_table [max_blocks]
    -> [q_len, num_heads, head_dim]."""
    from pagellm.ops.attention import gather_context, is_fp8

    fp8 = is_fp8(kv_cache.dtype)
    q_len, num_heads, head_dim = query.shape
    num_kv_heads = kv_cache.shape[-2]
    # [1, num_kv_heads, seq_len, head_dim]
    key = gather_context(kv_cache[0], block_table, seq_len).to(query.dtype)
    value = gather_context(kv_cache[1], block_table, seq_len).to(query.dtype)
    key, value = key.transpose(0, 1).unsqueeze(0), value.transpose(0, 1).unsqueeze(0)
    output = torch.empty_like(query)
    for j in range(q_len):
        length = seq_len - q_len + j + 1
        grouped = query[j].reshape(1, num_kv_heads, num_heads // num_kv_heads, head_dim)
        out = F.scaled_dot_product_attention(
            grouped, key[:, :, :length], value[:, :, :length],
            scale=scale * k_scale if fp8 else scale)            # [1, kv_heads, groups, dim]
        output[j] = out.reshape(num_heads, head_dim)
    return output * v_scale if fp8 and v_scale != 1.0 else output
