"""What every quantization method shares: the config built from a checkpoint's
``quantization_config`` (vLLM's QuantizationConfig) and the helpers its linear methods use
to create loader-ready quantized parameters.

A quantized parameter keeps the linear layers' loader contract (``pagellm.layers.linear``):
``output_dim`` / ``input_dim`` say which dims are sharded, ``size_divisors`` how many logical
features one entry covers along them (a packing factor or a group size), ``loaded_shapes``
the full checkpoint shape of each shard (derived here from the dense [out, in] shapes the
layer passes), ``dummy_fill`` how ``load_format="dummy"`` fills it when normal noise does
not fit (packed ints, scales, group indices).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Callable

import torch
from torch import nn

from pagellm.errors import ClientError
from pagellm.layers.weight_utils import check_shape, materialize, set_weight_attrs

DEFAULT_PACKED_MODULES = {"qkv_proj": ["q_proj", "k_proj", "v_proj"],
                          "gate_up_proj": ["gate_proj", "up_proj"]}
"""Fused pagellm module -> the checkpoint modules stacked into it (the model class's
``packed_modules_mapping`` replaces it when it has one)."""


class QuantizationConfig(ABC):
    """A checkpoint's quantization, as its ``quantization_config`` describes it."""

    packed_modules_mapping: dict[str, list[str]] = DEFAULT_PACKED_MODULES

    @classmethod
    @abstractmethod
    def get_name(cls) -> str:
        """The method's vLLM name (``quant_method`` in config.json)."""

    @classmethod
    @abstractmethod
    def from_config(cls, config: dict) -> "QuantizationConfig":
        """Build from the checkpoint's ``quantization_config`` dict; ClientError naming the
        unsupported setting and what is supported."""

    @abstractmethod
    def get_quant_method(self, layer: nn.Module, prefix: str):
        """The LinearMethodBase for the linear layer named ``prefix`` (its checkpoint name,
        e.g. ``model.layers.0.self_attn.qkv_proj``), or None to leave it unquantized."""

    def checkpoint_names(self, prefix: str) -> list[str]:
        """The checkpoint module names a (possibly fused) layer loads from:
        ``...qkv_proj`` -> ``[...q_proj, ...k_proj, ...v_proj]``."""
        parent, _, name = prefix.rpartition(".")
        pieces = self.packed_modules_mapping.get(name)
        if not pieces:
            return [prefix]
        return [f"{parent}.{piece}" if parent else piece for piece in pieces]


def matches_module(name: str, patterns) -> bool:
    """Whether module ``name`` is listed in ``patterns``: exact names, name suffixes at a
    dot (``lm_head``, ``mlp.down_proj``) or ``re:<regex>`` entries (compressed-tensors)."""
    for pattern in patterns or ():
        if pattern.startswith("re:"):
            if re.match(pattern[3:], name):
                return True
        elif name == pattern or name.endswith("." + pattern):
            return True
    return False


def all_or_none(names: list[str], predicate: Callable[[str], bool], what: str) -> bool:
    """``predicate`` over the checkpoint pieces of one fused layer: all True or all False
    (a fused GEMM has one scheme); ClientError when they disagree."""
    results = {name: predicate(name) for name in names}
    if len(set(results.values())) > 1:
        raise ClientError(f"{what} differs between the pieces {sorted(results)} that pagellm "
                          "fuses into one layer; quantize them alike", param="model")
    return next(iter(results.values()))


def create_quant_param(layer: nn.Module, name: str, shape: tuple[int, ...], dtype: torch.dtype,
                       extra_weight_attrs: dict, output_dim: int | None = None,
                       input_dim: int | None = None, size_divisors: dict | None = None,
                       dummy_fill: Callable | None = None) -> nn.Parameter:
    """Register parameter ``name`` [shape] (this rank's shard) on ``layer`` with the layer's
    ``weight_loader`` and its checkpoint shapes derived from the dense ``loaded_shapes``
    ((shard id, (out_features, in_features)) per shard) in ``extra_weight_attrs``."""
    divisors = dict(size_divisors or {})
    param = nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad=False)
    loaded_shapes = []
    for shard_id, (out_features, in_features) in extra_weight_attrs["loaded_shapes"]:
        full = list(shape)
        if output_dim is not None:
            full[output_dim] = out_features // divisors.get(output_dim, 1)
        if input_dim is not None:
            full[input_dim] = in_features // divisors.get(input_dim, 1)
        loaded_shapes.append((shard_id, tuple(full)))
    attrs = {"weight_loader": extra_weight_attrs["weight_loader"], "loaded_shapes": loaded_shapes,
             "size_divisors": divisors}
    if output_dim is not None:
        attrs["output_dim"] = output_dim
    if input_dim is not None:
        attrs["input_dim"] = input_dim
    if dummy_fill is not None:
        attrs["dummy_fill"] = dummy_fill
    set_weight_attrs(param, attrs)
    layer.register_parameter(name, param)
    return param


def create_per_shard_scalar(layer: nn.Module, name: str, extra_weight_attrs: dict,
                            dummy_value: float = 1.0) -> nn.Parameter:
    """A float32 [num_shards] parameter holding one checkpoint scalar per fused piece (a
    per-tensor scale: ``q_proj.weight_scale`` -> entry 0 of ``qkv_proj.weight_scale``)."""
    shards = [shard_id for shard_id, _ in extra_weight_attrs["loaded_shapes"]]
    param = nn.Parameter(torch.empty(len(shards), dtype=torch.float32), requires_grad=False)

    def load_scalar(param: nn.Parameter, loaded_weight, shard_id=None) -> None:
        if tuple(loaded_weight.shape) not in ((), (1,)):
            check_shape(loaded_weight, (1,))
        param.data[shards.index(shard_id)] = materialize(loaded_weight).reshape(())

    set_weight_attrs(param, {"weight_loader": load_scalar,
                             "loaded_shapes": [(shard_id, ()) for shard_id in shards],
                             "dummy_fill": lambda full, generator: full.fill_(dummy_value)})
    layer.register_parameter(name, param)
    return param


def replace_param(layer: nn.Module, name: str, data: torch.Tensor | None) -> None:
    """Swap ``layer.<name>`` for a plain parameter holding ``data`` (None: remove it); the
    loader attributes are dropped (loading is over)."""
    layer._parameters.pop(name, None)
    layer.register_parameter(name, None if data is None else nn.Parameter(data, requires_grad=False))


def random_int32(full: torch.Tensor, generator: torch.Generator) -> None:
    """Dummy fill of packed int32 words: uniformly random bits."""
    full.copy_(torch.randint(-2**31, 2**31 - 1, full.shape, generator=generator,
                             dtype=torch.int32, device=full.device))


def random_scales(typical: float) -> Callable:
    """Dummy fill of quantization scales: uniform in [0.5, 1.5] x ``typical``."""
    def fill(full: torch.Tensor, generator: torch.Generator) -> None:
        values = torch.rand(full.shape, generator=generator, device=full.device)
        full.copy_((0.5 + values) * typical)
    return fill
