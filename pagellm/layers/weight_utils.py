"""What every ``weight_loader`` shares: reading a (possibly lazy) checkpoint tensor, shape
checks, and the attributes a parameter carries for the loader.

A checkpoint tensor handed to a weight loader is either a ``torch.Tensor`` or a lazy slice
(``pagellm.models.safetensors_loader.LazySlice``) with the same ``shape`` and ``narrow``;
``materialize`` reads it. Loaders narrow first, then materialize, so a rank reads only its
shard from a safetensors file.
"""

from __future__ import annotations

import torch

from pagellm.errors import ClientError


def set_weight_attrs(param: torch.Tensor, attrs: dict | None) -> None:
    """Attach loader attributes (``weight_loader``, ``output_dim``, ``input_dim``,
    ``loaded_shapes``) to a parameter; raises if one is already set (a layer bug)."""
    for key, value in (attrs or {}).items():
        assert not hasattr(param, key), f"parameter already has attribute {key}"
        setattr(param, key, value)


def materialize(loaded_weight) -> torch.Tensor:
    """A CPU or device tensor with the data of ``loaded_weight`` (reads a lazy slice)."""
    if isinstance(loaded_weight, torch.Tensor):
        return loaded_weight
    return loaded_weight.materialize()


def check_shape(loaded_weight, expected: tuple[int, ...]) -> None:
    """ClientError when a checkpoint tensor's full shape is not ``expected`` (the loader adds
    the tensor's name)."""
    if tuple(loaded_weight.shape) != tuple(expected):
        raise ClientError(f"checkpoint tensor has shape {tuple(loaded_weight.shape)}, the model "
                          f"expects {tuple(expected)}", param="model")


def copy_into(destination: torch.Tensor, loaded_weight) -> None:
    """Copy a (narrowed) checkpoint tensor into a parameter slice, casting dtype and device."""
    check_shape(loaded_weight, tuple(destination.shape))
    destination.copy_(materialize(loaded_weight))


def default_weight_loader(param: torch.Tensor, loaded_weight, shard_id=None) -> None:
    """Whole-tensor copy for parameters that are not sharded (norms)."""
    assert shard_id is None, "a replicated parameter has no shards"
    copy_into(param.data, loaded_weight)


def divide(numerator: int, denominator: int, what: str = "size") -> int:
    """``numerator // denominator``; ValueError naming both when it does not divide."""
    if numerator % denominator != 0:
        raise ValueError(f"{what} {numerator} is not divisible by tensor_parallel_size "
                         f"{denominator}")
    return numerator // denominator
