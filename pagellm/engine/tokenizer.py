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
import weakref
from pathlib import Path
from typing import Any

from pagellm.engine.chat_template import render_chat
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
                         chat_template: str | None = None, continue_final_message: bool = False,
                         tools: list[dict] | None = None, **template_kwargs) -> str:
    """The prompt text for ``messages`` (OpenAI chat format) under the chat template.

    ``chat_template`` overrides the tokenizer's own (from tokenizer_config.json, chat_template
    .jinja or the GGUF's ``tokenizer.chat_template``). Message content may be a string or a list
    of ``{"type": "text", "text": ...}`` parts, which are joined. The template renders in the
    bounded sandbox of ``pagellm.engine.chat_template`` (same text as transformers'
    ``apply_chat_template``), so this blocks for up to its time bound: call it off the event
    loop. ``continue_final_message``: the prompt ends inside the final assistant message (see
    ``chat_template.render_chat``); ``tools``: passed to the template as ``tools``. Raises ``ClientError`` for malformed messages, a model
    without a template, or a template that fails, rejects the messages or passes a bound.
    """
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):      # named templates: transformers picks "default"
        template = template.get("default")
    if not template:
        raise ClientError(
            "this model's tokenizer has no chat template, so chat requests cannot be rendered; "
            "start the server with --chat-template FILE (offline: LLM.chat(chat_template=...)) "
            "or send a plain completion prompt",
            param="chat_template")
    conversation = [_normalize_message(index, message) for index, message in enumerate(messages)]
    if not conversation:
        raise ClientError("messages must not be empty", param="messages")
    return render_chat(template, conversation, add_generation_prompt=add_generation_prompt,
                       continue_final_message=continue_final_message,
                       special_tokens=_special_tokens(tokenizer), template_kwargs=template_kwargs,
                       tools=tools)


def _special_tokens(tokenizer: Any) -> dict[str, Any]:
    """The special-token variables transformers gives a template (``bos_token``, ...)."""
    tokens = getattr(tokenizer, "special_tokens_map", None)
    return dict(tokens) if isinstance(tokens, dict) else {}


def apply_chat_template(tokenizer: Any, messages: list[dict], add_generation_prompt: bool = True,
                        chat_template: str | None = None, continue_final_message: bool = False,
                        **template_kwargs) -> list[int]:
    """The prompt token ids for ``messages``; see ``render_chat_template``.

    The template writes the special tokens itself (BOS included), so none are added here.
    """
    text = render_chat_template(tokenizer, messages, add_generation_prompt, chat_template,
                                continue_final_message, **template_kwargs)
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


# ---- a prompt too long to tokenize --------------------------------------------------------------

_LOSSLESS_PRE_TOKENIZERS = frozenset({"ByteLevel", "Metaspace", "Digits", "Split", "Punctuation"})
_DROPPING_BEHAVIOR = "Removed"
_max_chars_cache: "weakref.WeakKeyDictionary[Any, int | None]" = weakref.WeakKeyDictionary()


def max_chars_per_token(tokenizer: Any) -> int | None:
    """L, the most characters of text one token can stand for, or None when this tokenizer
    gives no such bound. Cached per tokenizer.

    Only for tokenizers that keep every character of the input: a BPE model that is byte-level
    (each vocabulary character is one byte) or has byte fallback, with no normalizer and only
    pre-tokenizers that split without dropping anything. Then a token covers at most
    ``len(token string)`` bytes (an added token: its content), so ``L`` is the longest of those
    and a text of ``c`` characters has at least ``c / L`` tokens. Tokenizers that may drop or
    merge characters (WordPiece dropping spaces, an NFC normalizer, unknown-word tokens) get
    None.
    """
    try:
        return _max_chars_cache[tokenizer]
    except (KeyError, TypeError):
        pass
    bound = _compute_max_chars_per_token(tokenizer)
    try:
        _max_chars_cache[tokenizer] = bound
    except TypeError:           # not weak-referenceable: computed again next time
        pass
    return bound


def _compute_max_chars_per_token(tokenizer: Any) -> int | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    try:
        spec = json.loads(backend.to_str())
    except (AttributeError, ValueError, TypeError):
        return None
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or spec.get("normalizer") is not None:
        return None
    pre_tokenizers = _flatten_pre_tokenizers(spec.get("pre_tokenizer"))
    if any(p.get("type") not in _LOSSLESS_PRE_TOKENIZERS or p.get("behavior") ==
           _DROPPING_BEHAVIOR for p in pre_tokenizers):
        return None
    byte_level = any(p.get("type") == "ByteLevel" for p in pre_tokenizers)
    if not (byte_level or model.get("byte_fallback")):
        return None
    vocab = model.get("vocab") or {}
    added = [token.get("content", "") for token in spec.get("added_tokens") or ()]
    return max([1, *(len(token) for token in vocab), *(len(token) for token in added)])


def _flatten_pre_tokenizers(spec: dict | None) -> list[dict]:
    if spec is None:
        return []
    if spec.get("type") == "Sequence":
        return [p for child in spec.get("pretokenizers") or () for p in _flatten_pre_tokenizers(child)]
    return [spec]


def check_prompt_chars(tokenizer: Any, text: str, max_model_len: int, param: str = "prompt"
                       ) -> None:
    """Refuse, before tokenizing, a text that certainly has too many tokens: with ``L`` from
    ``max_chars_per_token``, a text of more than ``L * max_model_len`` characters has more than
    ``max_model_len`` tokens (a prompt may have at most ``max_model_len - 1``). Raises
    ``ClientError`` with the usual "maximum context length" message; does nothing when the
    tokenizer gives no bound."""
    chars_per_token = max_chars_per_token(tokenizer)
    if chars_per_token is None or len(text) <= chars_per_token * max_model_len:
        return
    at_least = -(-len(text) // chars_per_token)
    raise ClientError(
        f"This model's maximum context length is {max_model_len} tokens, but the prompt has at "
        f"least {at_least} tokens ({len(text)} characters). Please shorten the prompt.",
        param=param)
