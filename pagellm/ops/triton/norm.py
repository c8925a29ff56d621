"""RMSNorm and fused residual-add + RMSNorm, in Triton: one program per row, float32 sums.

Torch twin and oracle: ``pagellm.ops.norm``. Rounding follows the twin step by step (the sum
rounded to the input dtype, the normalised row rounded to the input dtype before the weight
multiply) so half-precision results match it bit for bit or within one ulp.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(out_ptr, residual_out_ptr, x_ptr, residual_ptr, weight_ptr, hidden, eps,
                     stride_x_row, stride_residual_row, stride_out_row, stride_residual_out_row,
                     ADD_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr):
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


def _launch(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
            eps: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    hidden = x.shape[-1]
    rows = x.reshape(-1, hidden)                                       # [num_rows, hidden]
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = torch.empty(rows.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    residual_rows = residual_out = None
    if residual is not None:
        residual_rows = residual.reshape(-1, hidden)
        if residual_rows.stride(-1) != 1:
            residual_rows = residual_rows.contiguous()
        residual_out = torch.empty_like(rows)
    block = triton.next_power_of_2(hidden)
    num_warps = 4 if block <= 1024 else 8 if block <= 4096 else 16
    if rows.shape[0] > 0:
        _rms_norm_kernel[(rows.shape[0],)](
            out, residual_out if residual is not None else out, rows,
            residual_rows if residual is not None else rows, weight, hidden, eps,
            rows.stride(0), residual_rows.stride(0) if residual is not None else 0, out.stride(0),
            residual_out.stride(0) if residual is not None else 0,
            ADD_RESIDUAL=residual is not None, BLOCK=block, num_warps=num_warps)
    out = out.view(x.shape)
    return out, None if residual_out is None else residual_out.view(x.shape)


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / rms(x) * weight`` over the last dim; a new tensor. x: [..., hidden]; weight:
    [hidden] contiguous. Returns [..., hidden]."""
    return _launch(x, None, weight, eps)[0]


def fused_add_rms_norm_triton(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                              eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(rms_norm(x + residual), x + residual)`` as new tensors; neither input is
    mutated. x, residual: [..., hidden], same dtype."""
    out, new_residual = _launch(x, residual, weight, eps)
    return out, new_residual
