"""``compilation_config``: CUDA graph settings under vLLM's keys and modes.

vLLM's ``cudagraph_mode`` values and what pagellm builds for each (GPU only; ``enforce_eager``
means NONE):

| mode | vLLM | pagellm |
|---|---|---|
| NONE | no graphs | no graphs |
| FULL_DECODE_ONLY | full graphs for uniform decode batches, mixed batches eager | decode graphs (one token per request, split-KV attention); mixed and verify steps eager |
| FULL | full graphs for every batch the backend allows | decode graphs + full mixed graphs (padded token counts) for every other batch up to the largest size |
| FULL_AND_PIECEWISE (default) | full graphs for decode, piecewise graphs (attention eager) for mixed | as FULL: the mixed batches replay full graphs instead of piecewise ones |
| PIECEWISE | piecewise graphs for every batch | as FULL |

Piecewise graphs exist in vLLM for attention backends whose mixed-batch path reads host
metadata and so cannot sit inside a graph. pagellm's unified Triton attention kernel reads
every per-step value from device tensors and sizes its grid from the padded shapes only
(``pagellm/worker/cuda_graph.py``), so a full graph serves any mix; a piecewise graph would
replay the same padded GEMMs and add one eager attention launch per layer (64 launches for a
32-layer model) on top. Hence no piecewise graphs are built; PIECEWISE runs as FULL.

``level`` / ``mode`` (vLLM's torch.compile level, 0-3 or its name) are accepted and have no
effect: pagellm runs no torch.compile (its fused kernels are Triton; the graphs above are
captured from the eager model).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pagellm.errors import ClientError

CUDAGRAPH_MODES = ("NONE", "PIECEWISE", "FULL", "FULL_DECODE_ONLY", "FULL_AND_PIECEWISE")
COMPILATION_KEYS = ("cudagraph_mode", "cudagraph_capture_sizes", "max_cudagraph_capture_size",
                    "level", "mode")
COMPILATION_LEVELS = (0, 1, 2, 3, "NONE", "NO_COMPILATION", "STOCK_TORCH_COMPILE",
                      "DYNAMO_AS_IS", "DYNAMO_TRACE_ONCE", "DYNAMO_ONCE", "VLLM_COMPILE",
                      "PIECEWISE")
"""vLLM's torch.compile levels (``CompilationLevel`` / ``CompilationMode``): accepted, no effect."""
MAX_CAPTURE_SIZE = 512
"""vLLM's cap on the default ``max_cudagraph_capture_size``."""


@dataclass(frozen=True)
class CudaGraphOptions:
    """The parsed ``compilation_config``."""
    cudagraph_mode: str = "FULL_AND_PIECEWISE"
    """One of CUDAGRAPH_MODES (upper case)."""
    cudagraph_capture_sizes: tuple[int, ...] | None = None
    """Token counts to capture, sorted; None = the defaults (``pagellm.worker.cuda_graph``)."""
    max_cudagraph_capture_size: int | None = None
    """The largest token count captured; None = the largest of cudagraph_capture_sizes, or
    min(512, max_num_batched_tokens)."""

    @property
    def decode_graphs(self) -> bool:
        return self.cudagraph_mode != "NONE"

    @property
    def mixed_graphs(self) -> bool:
        """Full graphs for mixed and speculative-verify batches (every mode but NONE and
        FULL_DECODE_ONLY, see the module docstring)."""
        return self.cudagraph_mode not in ("NONE", "FULL_DECODE_ONLY")


def parse_compilation_config(options: dict | str | int | None) -> CudaGraphOptions:
    """``compilation_config`` -> CudaGraphOptions. As in vLLM it is a dict, a JSON object
    string, or an int (the optimization level alone); None is {}. ClientError (param
    ``compilation_config``) for another type or a string that is not a JSON object, and
    naming the key for an unknown key, mode or level, sizes that are not positive integers,
    or a max_cudagraph_capture_size that differs from the largest given size."""
    options = _as_dict(options)
    unknown = sorted(set(options) - set(COMPILATION_KEYS))
    if unknown:
        _fail(f"unknown key(s) {unknown}; pagellm accepts {list(COMPILATION_KEYS)}")
    for key in ("level", "mode"):
        if key in options and _upper(options[key]) not in COMPILATION_LEVELS:
            _fail(f"{key} must be one of {list(COMPILATION_LEVELS)}, got {options[key]!r}")
    mode = _upper(options.get("cudagraph_mode", "FULL_AND_PIECEWISE"))
    if mode not in CUDAGRAPH_MODES:
        _fail(f"cudagraph_mode must be one of {list(CUDAGRAPH_MODES)}, got "
              f"{options['cudagraph_mode']!r}")
    sizes = options.get("cudagraph_capture_sizes")
    if sizes is not None:
        if not isinstance(sizes, (list, tuple)) or not sizes or not all(map(_positive, sizes)):
            _fail(f"cudagraph_capture_sizes must be a non-empty list of positive integers, "
                  f"got {sizes!r}")
        sizes = tuple(sorted(set(sizes)))
    largest = options.get("max_cudagraph_capture_size")
    if largest is not None:
        if not _positive(largest):
            _fail(f"max_cudagraph_capture_size must be a positive integer, got {largest!r}")
        if sizes is not None and sizes[-1] != largest:
            _fail(f"max_cudagraph_capture_size={largest} must equal the largest of "
                  f"cudagraph_capture_sizes ({sizes[-1]}) when both are given")
    return CudaGraphOptions(mode, sizes, largest)


def _as_dict(options) -> dict:
    if options is None:
        return {}
    if isinstance(options, bool):
        _fail(f"expected a dict, a JSON object string or an int level, got {options!r}")
    if isinstance(options, int):
        return {"level": options}
    if isinstance(options, str):
        try:
            options = json.loads(options)
        except json.JSONDecodeError as error:
            _fail(f"expected a JSON object, got {options!r} ({error.msg})")
    if not isinstance(options, dict):
        _fail(f"expected a dict, a JSON object string or an int level, got {options!r}")
    return dict(options)


def _upper(value):
    return value.upper() if isinstance(value, str) else value


def _positive(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _fail(message: str) -> None:
    raise ClientError(f"compilation_config: {message}", param="compilation_config")


@dataclass(frozen=True)
class CompilationConfig:
    compilation_config: dict | None = None
    """CUDA graph settings (CUDA only), vLLM's keys: {"cudagraph_mode": "FULL_AND_PIECEWISE"
    (default) | "FULL" | "PIECEWISE" (both as FULL_AND_PIECEWISE: decode graphs and full graphs
    of padded token counts for mixed and speculative-verify steps) | "FULL_DECODE_ONLY" (decode
    graphs only) | "NONE", "cudagraph_capture_sizes": [token counts], e.g. [1, 2, 4, 8],
    "max_cudagraph_capture_size": N (default min(512, max_num_batched_tokens))}; "level" and
    "mode" (torch.compile) are accepted and have no effect."""

    def __post_init__(self) -> None:
        parse_compilation_config(self.compilation_config)     # ClientError when invalid

    @property
    def cuda_graph_options(self) -> CudaGraphOptions:
        return parse_compilation_config(self.compilation_config)
