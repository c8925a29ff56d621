"""Compile Triton launches for an H100/H200 (sm_90) on a machine without a GPU: the frontend,
the optimizer passes and ptxas run as they would at the first launch on the device, so a
kernel that cannot compile fails here instead of on scarce GPU time (one such error reached
the H200: a ``tl.constexpr`` reassigned inside a ``static_range`` loop, which the interpreter
accepts).

``compiling_for_sm90()`` patches ``JITFunction.run`` while active: every launch that the code
under test makes (with CPU tensors) is compiled for sm_90 from the arguments' types instead of
being run, and recorded in the returned list as ``(kernel name, constexprs)`` (the compiled
kernels, whose ``asm["ptx"]`` and ``metadata`` tests may inspect, in its ``binaries``). Nothing is
launched, so outputs stay unwritten; callers check only that compilation succeeded.
"""

from __future__ import annotations

import contextlib

import torch
import triton
from triton._C.libtriton import native_specialize_impl
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import CUDABackend
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

TARGET = GPUTarget("cuda", 90, 32)
_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
           torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8",
           torch.uint8: "u8", torch.bool: "i1", torch.float8_e4m3fn: "fp8e4nv",
           torch.float8_e5m2: "fp8e5"}
_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg", "enable_fp_fusion", "launch_pdl")


def _specialize(param, value) -> tuple[str, object]:
    """(Triton type or "constexpr", specialization) of one runtime argument, as a GPU launch
    computes it: pointers and integers divisible by 16 get ``tt.divisibility = 16`` (so loads
    vectorize as they do on the device), an integer equal to 1 becomes a constant."""
    if isinstance(value, torch.Tensor) and value.dtype not in _DTYPES:
        raise TypeError(f"no Triton type for {value.dtype}")
    return native_specialize_impl(CUDABackend, value, False, not param.do_not_specialize,
                                  not param.do_not_specialize_on_alignment)


def compile_launch(kernel: JITFunction, args: tuple, kwargs: dict):
    """Compile one launch of ``kernel`` (positional ``args`` then keyword ``kwargs``, as given
    to ``kernel[grid](...)``) for sm_90 with the launch's argument specialization; returns the
    CompiledKernel. Raises Triton's CompilationError (or ptxas' error) when it does not
    compile."""
    options = {k: kwargs.pop(k) for k in _OPTIONS if k in kwargs}
    values = dict(zip(kernel.arg_names, args)) | kwargs
    signature, constexprs, attrs = {}, {}, {}
    for index, param in enumerate(kernel.params):
        value = values.get(param.name, param.default)
        if param.is_constexpr or value is None:
            signature[param.name] = "constexpr"
            constexprs[param.name] = value
            continue
        kind, spec = _specialize(param, value)
        if kind == "constexpr":
            signature[param.name] = "constexpr"
            constexprs[param.name] = spec
            continue
        signature[param.name] = kind
        if isinstance(spec, str) and spec:
            attrs[(index,)] = CUDABackend.parse_attr(spec)
    return triton.compile(ASTSource(kernel, signature, constexprs=constexprs, attrs=attrs),
                          target=TARGET, options=options)


class CompiledLaunches(list):
    """``(kernel name, constexprs)`` per compiled launch, in order; ``binaries``: the compiled
    kernels, in the same order."""

    def __init__(self):
        super().__init__()
        self.binaries = []


@contextlib.contextmanager
def compiling_for_sm90():
    """While active, Triton launches compile for sm_90 instead of running; yields the list of
    ``(kernel name, constexprs)`` compiled."""
    compiled = CompiledLaunches()
    original = JITFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        compiled.binaries.append(compile_launch(self, args, dict(kwargs)))
        compiled.append((self.__name__, {p.name: kwargs.get(p.name) for p in self.params
                                         if p.is_constexpr}))

    JITFunction.run = run
    try:
        yield compiled
    finally:
        JITFunction.run = original
