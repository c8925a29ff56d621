"""Tokenizers, chat templates and EOS ids, from a Hugging Face directory or a .gguf file.

A .gguf tokenizer takes seconds to convert, so the converted tokenizer is saved once in a cache
directory beside the file, keyed by the file's name, size and mtime, and reloaded from there.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pagellm.errors import ClientError

logger = logging.getLogger(__name__)

TOKENIZER_CACHE_DIR_NAME = ".pagellm-tokenizers"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def load_tokenizer(path: str | os.PathLike) -> Any:
    """A transformers tokenizer (fast when the files allow) for ``path``.

    ``path``: a Hugging Face directory, a .gguf file, or a directory holding exactly one .gguf
    and no tokenizer files. Raises ``ClientError`` when nothing loadable is there.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ClientError(f"tokenizer path {str(path)!r} does not exist", param="tokenizer")
    gguf_file = _gguf_file_of(path)
    if gguf_file is not None:
        return _load_gguf_tokenizer(gguf_file)
    return _from_pretrained(path)


def _gguf_file_of(path: Path) -> Path | None:
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ClientError(f"tokenizer path {str(path)!r} is a file but not a .gguf; pass a "
                              "model directory or a .gguf file", param="tokenizer")
        return path
    if any((path / name).exists() for name in _TOKENIZER_FILES):
        return None
    ggufs = sorted(path.glob("*.gguf"))
    return ggufs[0] if len(ggufs) == 1 else None


def _from_pretrained(directory: Path, **kwargs) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False,
                                                  local_files_only=True, **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ClientError(f"could not load a tokenizer from {str(directory)!r}: {error}",
                          param="tokenizer") from error
    if not getattr(tokenizer, "is_fast", True):
        logger.warning("tokenizer at %s is a slow (pure Python) tokenizer; detokenizing will be "
                       "slower", directory)
    return tokenizer


def gguf_tokenizer_cache_dir(gguf_file: Path) -> Path:
    """Where the converted tokenizer of ``gguf_file`` is cached: beside the file, keyed by its
    name, size and mtime so a changed file gets a fresh conversion."""
    stat = gguf_file.stat()
    key = f"{gguf_file.name}-{stat.st_size}-{stat.st_mtime_ns}"
    return gguf_file.parent / TOKENIZER_CACHE_DIR_NAME / key


def _load_gguf_tokenizer(gguf_file: Path) -> Any:
    cache = gguf_tokenizer_cache_dir(gguf_file)
    if (cache / "tokenizer_config.json").is_file():
        logger.debug("loading the cached tokenizer of %s from %s", gguf_file.name, cache)
        return _from_pretrained(cache)
    logger.info("converting the tokenizer of %s (once; cached in %s)", gguf_file, cache)
    tokenizer = _from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    _save_atomically(tokenizer, cache)
    return tokenizer


def _save_atomically(tokenizer: Any, cache: Path) -> None:
    # Save into a temporary directory and rename it into place, so a concurrent reader sees
    # either no cache or a complete one. A cache we cannot write is only a lost speed-up.
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=cache.name + ".", suffix=".partial", dir=cache.parent))
    except OSError as error:
        logger.warning("cannot cache the converted tokenizer in %s: %s", cache.parent, error)
        return
    try:
        tokenizer.save_pretrained(str(tmp))
        os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only; the cache may be shared
        os.rename(tmp, cache)
    except OSError as error:
        if not (cache / "tokenizer_config.json").is_file():
            logger.warning("cannot cache the converted tokenizer in %s: %s", cache, error)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def get_eos_token_ids(path: str | os.PathLike, tokenizer: Any) -> list[int]:
    """Token ids that end generation: the tokenizer's EOS, then the ids of
    ``generation_config.json``'s ``eos_token_id`` (an int or a list) in a model directory."""
    eos_ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        eos_ids.append(int(tokenizer.eos_token_id))
    config_file = Path(path).expanduser() / "generation_config.json"
    if config_file.is_file():
        try:
            value = json.loads(config_file.read_text()).get("eos_token_id")
        except (OSError, ValueError) as error:
            logger.warning("ignoring unreadable %s: %s", config_file, error)
            value = None
        values = value if isinstance(value, list) else [value]
        eos_ids.extend(int(v) for v in values if isinstance(v, int) and not isinstance(v, bool))
    return list(dict.fromkeys(eos_ids))


def config_eos_token_ids(hf_config) -> list[int]:
    """EOS ids from the model config alone (``eos_token_id``: an int or a list), for engines
    started with ``skip_tokenizer_init``."""
    value = getattr(hf_config, "eos_token_id", None)
    values = value if isinstance(value, list) else [value]
    return [int(v) for v in values if isinstance(v, int) and not isinstance(v, bool)]


def render_chat_template(tokenizer: Any, messages: list[dict], add_generation_prompt: bool = True,
                         chat_template: str | None = None, **template_kwargs) -> str:
    """The prompt text for ``messages`` (OpenAI chat format) under the chat template.

    ``chat_template`` overrides the tokenizer's own (from tokenizer_config.json, chat_template
    .jinja or the GGUF's ``tokenizer.chat_template``). Message content may be a string or a list
    of ``{"type": "text", "text": ...}`` parts, which are joined. Raises ``ClientError`` for
    malformed messages, a model without a template, or a template that rejects the messages.
    """
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if not template:
        raise ClientError(
            "this model's tokenizer has no chat template, so chat requests cannot be rendered; "
            "pass chat_template (a Jinja string) or send a plain completion prompt",
            param="chat_template")
    conversation = [_normalize_message(index, message) for index, message in enumerate(messages)]
    if not conversation:
        raise ClientError("messages must not be empty", param="messages")
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(
            conversation, chat_template=template, add_generation_prompt=add_generation_prompt,
            tokenize=False, **template_kwargs)
    except TemplateError as error:
        raise ClientError(f"the chat template rejected the messages: {error}",
                          param="messages") from error


def apply_chat_template(tokenizer: Any, messages: list[dict], add_generation_prompt: bool = True,
                        chat_template: str | None = None, **template_kwargs) -> list[int]:
    """The prompt token ids for ``messages``; see ``render_chat_template``.

    The template writes the special tokens itself (BOS included), so none are added here.
    """
    text = render_chat_template(tokenizer, messages, add_generation_prompt, chat_template,
                                **template_kwargs)
    return tokenizer.encode(text, add_special_tokens=False)


def _normalize_message(index: int, message: Any) -> dict:
    param = f"messages[{index}]"
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise ClientError(f"{param} must be an object with a string 'role'", param=param)
    content = message.get("content")
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" \
                    or not isinstance(part.get("text"), str):
                raise ClientError(f"{param}.content parts must be {{'type': 'text', 'text': str}}"
                                  "; only text is supported", param=param)
            texts.append(part["text"])
        content = "\n".join(texts)
    elif content is None:
        content = ""
    elif not isinstance(content, str):
        raise ClientError(f"{param}.content must be a string or a list of text parts",
                          param=param)
    return {**message, "content": content}
