"""Read HF safetensors checkpoints tensor by tensor, lazily: each tensor comes as a
``LazySlice`` that a weight loader narrows to its rank's shard before anything is read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors import safe_open

from pagellm.errors import ClientError


def safetensors_files(model_dir: str | Path) -> list[Path]:
    """The checkpoint's shard files: those named by model.safetensors.index.json, else every
    *.safetensors in the directory. ClientError if there are none."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = [model_dir / name for name in sorted(set(weight_map.values()))]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ClientError(f"{index} names shard files that are missing: {missing}", param="model")
        return files
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ClientError(f"no *.safetensors files in {model_dir}", param="model")
    return files


class LazySlice:
    """A rectangular part of one checkpoint tensor, read only by ``materialize``.

    Has the two tensor methods weight loaders use: ``shape`` and ``narrow``. Valid while its
    file is open (until the iterator moves to the next file).
    """

    def __init__(self, tensor_slice, bounds: list[tuple[int, int]], on_read: Callable[[int], None]):
        self._slice = tensor_slice
        self._bounds = bounds                          # (start, stop) per dim
        self._on_read = on_read

    @property
    def shape(self) -> torch.Size:
        return torch.Size(stop - start for start, stop in self._bounds)

    def narrow(self, dim: int, start: int, length: int) -> "LazySlice":
        """Like ``torch.Tensor.narrow``: ``length`` entries of ``dim`` from ``start``."""
        dim = dim % len(self._bounds)
        base, stop = self._bounds[dim]
        if start < 0 or length < 0 or base + start + length > stop:
            raise IndexError(f"narrow({dim}, {start}, {length}) is outside shape {tuple(self.shape)}")
        bounds = list(self._bounds)
        bounds[dim] = (base + start, base + start + length)
        return LazySlice(self._slice, bounds, self._on_read)

    def materialize(self) -> torch.Tensor:
        """Read this part from the file into a new CPU tensor; reports its bytes to on_read."""
        if not self._bounds:                           # a scalar
            tensor = self._slice[()]           # [:] raises on 0-dim tensors
        else:
            tensor = self._slice[tuple(slice(start, stop) for start, stop in self._bounds)]
        self._on_read(tensor.numel() * tensor.element_size())
        return tensor


def iter_safetensors_weights(model_dir: str | Path, on_read: Callable[[int], None] = lambda n: None
                             ) -> Iterator[tuple[str, LazySlice]]:
    """Yield (HF name, LazySlice of the whole tensor) for every tensor in every shard file;
    ``on_read(num_bytes)`` is called for every part actually read."""
    for path in safetensors_files(model_dir):
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                tensor_slice = f.get_slice(name)
                bounds = [(0, size) for size in tensor_slice.get_shape()]
                yield name, LazySlice(tensor_slice, bounds, on_read)


def has_safetensors(model_dir: str | Path) -> bool:
    model_dir = Path(model_dir)
    return model_dir.is_dir() and any(model_dir.glob("*.safetensors"))
