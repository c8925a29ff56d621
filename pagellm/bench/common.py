"""What the offline benchmarks share: model names, engine arguments, vocabulary, JSON output.

Shipped model shapes: ``pagellm/bench/configs/<name>/config.json`` holds the real
hyperparameters of a model (no weights, no tokenizer), so ``--model llama-3.1-8b`` runs that
shape with random weights (``load_format=dummy``) and token-id prompts.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from pagellm.config.cli_args import engine_kwargs_from_args

logger = logging.getLogger(__name__)

SHIPPED_CONFIGS_DIR = Path(__file__).parent / "configs"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def shipped_model_names() -> list[str]:
    """Names of the model shapes in ``pagellm/bench/configs`` (e.g. 'llama-3.1-8b')."""
    return sorted(p.parent.name for p in SHIPPED_CONFIGS_DIR.glob("*/config.json"))


def resolve_bench_model(model: str | None) -> str:
    """A shipped shape's name -> its config directory; anything else unchanged (an existing
    path of the same name wins). ``None`` -> 'default'."""
    if model is None:
        return "default"
    if model in shipped_model_names() and not Path(model).exists():
        return str(SHIPPED_CONFIGS_DIR / model)
    return model


def has_tokenizer_files(model: str) -> bool:
    """False only for a directory with neither tokenizer files nor a .gguf (a config-only
    directory); 'default', .gguf files and unknown paths count as having a tokenizer."""
    path = Path(model).expanduser()
    if not path.is_dir():
        return True
    return any((path / name).exists() for name in _TOKENIZER_FILES) or any(path.glob("*.gguf"))


def bench_engine_kwargs(args: argparse.Namespace) -> dict:
    """Engine arguments for a benchmark: the engine flags the user gave, the model resolved
    (shipped shapes included), ``load_format=dummy`` for a directory without weights and
    ``skip_tokenizer_init=True`` for one without a tokenizer, unless the user chose otherwise."""
    kwargs = engine_kwargs_from_args(args)
    model = resolve_bench_model(kwargs.get("model"))
    kwargs["model"] = model
    path = Path(model)
    if path.is_dir() and "load_format" not in kwargs and not _has_weights(path):
        logger.info("%s holds no weights: using random weights (load_format=dummy)", model)
        kwargs["load_format"] = "dummy"
    if ("skip_tokenizer_init" not in kwargs and "tokenizer" not in kwargs
            and not has_tokenizer_files(model)):
        logger.info("%s holds no tokenizer: prompts are token ids (skip_tokenizer_init)", model)
        kwargs["skip_tokenizer_init"] = True
    return kwargs


def _has_weights(path: Path) -> bool:
    return any(path.glob("*.safetensors")) or any(path.glob("*.gguf"))


def vocabulary(llm, model: str) -> tuple[int, set[int]]:
    """(vocab_size, special token ids) to draw random prompt tokens from: the tokenizer's base
    vocabulary (capped by config.json's vocab_size) minus its special tokens; without a
    tokenizer, config.json's vocab_size minus its bos/eos/pad ids."""
    config = _read_config_json(model)
    tokenizer = llm.get_tokenizer()
    if tokenizer is not None:
        vocab_size = min(tokenizer.vocab_size, config.get("vocab_size", tokenizer.vocab_size))
        return vocab_size, set(tokenizer.all_special_ids)
    if "vocab_size" not in config:
        raise ValueError(f"{model}: no tokenizer and no config.json vocab_size")
    special: set[int] = set()
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = config.get(key)
        special.update(value if isinstance(value, list) else [] if value is None else [value])
    return config["vocab_size"], special


def _read_config_json(model: str) -> dict:
    config_file = Path(model).expanduser() / "config.json"
    if not config_file.is_file():
        return {}
    return json.loads(config_file.read_text())


def write_json(path: str, results: dict) -> None:
    with open(path, "w", encoding="utf-8") as file:
        json.dump(results, file, indent=4)
        file.write("\n")
