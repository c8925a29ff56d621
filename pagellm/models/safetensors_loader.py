"""Read HF safetensors checkpoints tensor by tensor through mmap."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

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


def iter_safetensors_weights(model_dir: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (HF name, CPU tensor) for every tensor in every shard. Tensors are mmap-backed
    views of the files, valid until the next one is yielded; copy what you keep."""
    for path in safetensors_files(model_dir):
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def has_safetensors(model_dir: str | Path) -> bool:
    model_dir = Path(model_dir)
    return model_dir.is_dir() and any(model_dir.glob("*.safetensors"))
