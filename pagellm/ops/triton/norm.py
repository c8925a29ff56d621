"""RMSNorm and fused residual-add + RMSNorm, in Triton: one program per row, float32 sums.

Torch twin and oracle: ``pagellm.ops.norm``. Rounding follows the twin step by step (the sum
rounded to the input dtype, the normalised row rounded to the input dtype before the weight
multiply) so half-precision results match it bit for bit or within one ulp.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagellm.ops.triton.pdl import launch_dependents


@triton.jit
def _rms_norm_kernel(out_ptr, residual_out_ptr, x_ptr, residual_ptr, weight_ptr, hidden, eps,
                     stride_x_row, stride_residual_row, stride_out_row, stride_residual_out_row,
                     ADD_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr):
    launch_dependents()         # the next GEMV may start its weight prefetch (``pdl``)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * stride_x_row + cols, mask=mask, other=0.0)
    if ADD_RESIDUAL:
        residual = tl.load(residual_ptr + row * stride_residual_row + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + residual.to(tl.float32)).to(x.dtype)
        tl.store(residual_out_ptr + row * stride_residual_out_row + cols, x, mask=mask)
    x_float = x.to(tl.float32)
    variance = tl.sum(x_float * x_float, 0) / hidden
    normed = (x_float * tl.rsqrt(variance + eps)).to(x.dtype).to(tl.float32)
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_out_row + cols, (normed * weight).to(out_ptr.dtype.element_ty),
             mask=mask)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """[..., hidden] as [num_rows, hidden] with unit stride on the last dim."""
    rows = t.reshape(-1, t.shape[-1])
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def _launch(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float,
            out: torch.Tensor, residual_out: torch.Tensor | None) -> None:
    """x, residual: [..., hidden]; out, residual_out: contiguous [..., hidden], written."""
    x_rows, out_rows = _rows(x), out.view(-1, x.shape[-1])             # [num_rows, hidden]
    add_residual = residual is not None
    residual_rows = _rows(residual) if add_residual else x_rows
    residual_out_rows = residual_out.view(-1, x.shape[-1]) if add_residual else out_rows
    block = triton.next_power_of_2(x.shape[-1])
    num_warps = 4 if block <= 1024 else 8 if block <= 4096 else 16
    if x_rows.shape[0] > 0:
        _rms_norm_kernel[(x_rows.shape[0],)](
            out_rows, residual_out_rows, x_rows, residual_rows, weight, x.shape[-1], eps,
            x_rows.stride(0), residual_rows.stride(0), out_rows.stride(0),
            residual_out_rows.stride(0), ADD_RESIDUAL=add_residual, BLOCK=block,
            num_warps=num_warps)


def _new_out(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return torch.empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """``x / rms(x) * weight`` over the last dim. x: [..., hidden]; weight: [hidden]
    contiguous. Writes ``out`` (contiguous, same shape) if given, else a new tensor; returns it."""
    out = _new_out(x, weight) if out is None else out
    _launch(x, None, weight, eps, out, None)
    return out


def fused_add_rms_norm_triton(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                              eps: float, out: torch.Tensor | None = None,
                              residual_out: torch.Tensor | None = None,
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(rms_norm(x + residual), x + residual)``, written into ``out`` and
    ``residual_out`` (contiguous, x's shape) if given, else new tensors; ``x`` and ``residual``
    are not mutated. x, residual: [..., hidden], same dtype."""
    out = _new_out(x, weight) if out is None else out
    if residual_out is None:
        residual_out = torch.empty_like(x, memory_format=torch.contiguous_format)
    _launch(x, residual, weight, eps, out, residual_out)
    return out, residual_out
