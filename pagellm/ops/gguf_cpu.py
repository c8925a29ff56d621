"""A multi-row twin of torch's CPU int4 matmul for kept-quantized GGUF weights.

torch's ``_weight_int4pack_mm_for_cpu`` reads the whole weight once per block of 4 rows
(and splits 5 rows 4 + 1 across its threads unevenly), so a speculative verify of 1 + k rows
costs up to 3x a 1-row decode product (benchmarks/RESULTS.md, session 7).
``csrc/gguf_int4_mm.cpp`` does up to 8 rows per pass with the same arithmetic per output
element (dequantize with one float32 FMA, accumulate with FMAs in k order, round to
bfloat16 like torch): each row's result is bit-identical to torch's kernel on that row
alone, so a verify row gets the logits a decode step would and greedy speculation keeps its
tokens. Compiled with the system C++ compiler on first use (about 2 s, cached under
``~/.cache/pagellm``); where that fails, or on a CPU without AVX-512 (torch's packing then
differs), ``available()`` is False and callers keep torch's kernel.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import subprocess
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "gguf_int4_mm.cpp"
FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-fopenmp", "-mavx512f", "-mavx512bw",
         "-mavx512vl", "-mavx512dq", "-mfma"]
"""AVX-512 like torch's own AVX512 kernels; ``-fopenmp`` links libgomp.so.1, which resolves
to the copy torch already loaded (one OpenMP runtime, torch's thread count)."""
BLOCK_COLS = 64
"""Columns per packed block of torch's AVX-512 int4 layout (N must be a multiple)."""
calls = 0
"""Calls of ``gguf_int4_mm`` in this process (tests assert the path ran)."""


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "pagellm"


def _build(source: bytes) -> Path:
    """Compile ``source`` into a shared library named by its hash and the flags (built
    once; a concurrent build writes its own temporary file and renames it in place)."""
    digest = hashlib.sha256(source + " ".join(FLAGS).encode()).hexdigest()[:16]
    target = _cache_dir() / f"gguf_int4_mm-{digest}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so", delete=False) as tmp:
        partial = Path(tmp.name)
    try:
        subprocess.run([os.environ.get("CXX", "g++"), *FLAGS, str(SOURCE), "-o", str(partial)],
                       check=True, capture_output=True, timeout=120)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    """The compiled kernel, or None (logged once) where it cannot be built or used."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AVX512_BF16"):
        return None             # torch packs int4 for another block width there
    try:
        library = ctypes.CDLL(str(_build(SOURCE.read_bytes())))
    except (OSError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", b"") or b""
        logger.warning("GGUF multi-row CPU kernel unavailable (%s %s): torch's int4 kernel "
                       "does every row count", error, detail.decode(errors="replace")[-500:])
        return None
    function = library.gguf_int4_mm
    function.restype = None
    function.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                         ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                         ctypes.c_int]
    return library


def available() -> bool:
    return _library() is not None


def supports(qweight: torch.Tensor) -> bool:
    """Whether a packed weight [N, K / 2] fits the kernel: N a multiple of 64."""
    return qweight.shape[0] % BLOCK_COLS == 0 and available()


def gguf_int4_mm(x: torch.Tensor, qweight: torch.Tensor, scales_and_zeros: torch.Tensor,
                 group_size: int = 32, out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """``torch.ops.aten._weight_int4pack_mm_for_cpu(x, qweight, group_size,
    scales_and_zeros)`` bit for bit, row by row, with every row in one pass per 8 rows.

    x: bfloat16 [M, K] (contiguous); qweight: uint8 [N, K / 2] from
    ``_convert_weight_to_int4pack_for_cpu`` (N % 64 == 0, ``supports``);
    scales_and_zeros: bfloat16 [K / group_size, N, 2]. Returns [M, N] in ``out_dtype``
    (bfloat16, or float32 holding the bfloat16 values: the same as ``.float()`` of the
    bfloat16 result, one op fewer). Requires ``available()``."""
    global calls
    calls += 1
    num_rows, num_cols = x.shape
    num_out = qweight.shape[0]
    x = x.contiguous()
    out = torch.empty(num_rows, num_out, dtype=out_dtype)
    _library().gguf_int4_mm(x.data_ptr(), num_rows, num_cols, qweight.data_ptr(), num_out,
                            scales_and_zeros.data_ptr(), group_size, out.data_ptr(),
                            int(out_dtype == torch.float32))
    return out
