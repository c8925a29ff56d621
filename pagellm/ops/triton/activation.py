"""SiLU-and-mul (SwiGLU on a fused gate/up projection), in Triton.

Torch twin and oracle: ``pagellm.ops.activation.silu_and_mul``. Computes in float32 and
rounds ``silu(gate)`` to the input dtype before the multiply, as the twin does.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _silu_and_mul_kernel(out_ptr, x_ptr, d, stride_x_row, stride_out_row, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < d
    gate = tl.load(x_ptr + row * stride_x_row + cols, mask=mask, other=0.0)
    up = tl.load(x_ptr + row * stride_x_row + d + cols, mask=mask, other=0.0).to(tl.float32)
    gate_float = gate.to(tl.float32)
    activated = (gate_float * tl.sigmoid(gate_float)).to(gate.dtype).to(tl.float32)
    tl.store(out_ptr + row * stride_out_row + cols, (activated * up).to(out_ptr.dtype.element_ty),
             mask=mask)


def silu_and_mul_triton(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``silu(gate) * up`` for x: [..., 2 * d] holding ``[gate | up]``. Writes ``out``
    (contiguous [..., d]) if given, else a new tensor; returns it."""
    d = x.shape[-1] // 2
    rows = x.reshape(-1, 2 * d)                                        # [num_rows, 2 * d]
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    if out is None:
        out = torch.empty(*x.shape[:-1], d, dtype=x.dtype, device=x.device)
    out_rows = out.view(-1, d)                                         # [num_rows, d]
    block = min(1024, triton.next_power_of_2(d))
    if rows.shape[0] > 0:
        _silu_and_mul_kernel[(rows.shape[0], triton.cdiv(d, block))](
            out_rows, rows, d, rows.stride(0), out_rows.stride(0), BLOCK=block, num_warps=4)
    return out
