"""Chat templates rendered as Hugging Face's ``apply_chat_template`` renders them, but in the
bounded sandbox of ``template_sandbox`` (time, memory and size bounds; see there).

The environment matches transformers' (``trim_blocks``, ``lstrip_blocks``, the ``loopcontrols``
extension, ``raise_exception``, ``strftime_now``, a ``tojson`` filter that does not escape HTML,
``dict`` and an underscore-refusing ``namespace``), and so does the context: the tokenizer's
special tokens (``bos_token``, ``eos_token``, ...), then the caller's template kwargs, then
``messages``, ``tools``, ``documents`` and ``add_generation_prompt``. The text is therefore
identical to ``tokenizer.apply_chat_template(..., tokenize=False)`` for every template that
stays within the bounds.

``continue_final_message`` works as in transformers (and so in vLLM): the final message's
content is tagged, rendered without a generation prompt, and the text is cut right after that
content, so the model continues the message instead of starting a new one.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2.exceptions import SecurityError, TemplateError

from pagellm.engine.template_sandbox import (BoundedSandbox, TemplateLimitError, TemplateLimits,
                                             render_bounded)
from pagellm.errors import ClientError

_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
_COMPILED_CACHE_SIZE = 64
DEFAULT_LIMITS = TemplateLimits()


def render_chat(template: str, messages: list[dict], *, add_generation_prompt: bool = True,
                continue_final_message: bool = False, special_tokens: dict | None = None,
                template_kwargs: dict | None = None, tools: list[dict] | None = None,
                limits: TemplateLimits = DEFAULT_LIMITS) -> str:
    """The prompt text of ``messages`` (dicts with string content) under ``template``.

    ``special_tokens``: the tokenizer's ``special_tokens_map``; ``template_kwargs``: extra
    variables (plain JSON data), which override the special tokens; ``tools``: the tools'
    JSON schemas (``{"type": "function", "function": {...}}`` each, as transformers passes
    them; a template that does not mention ``tools`` renders without them). Raises ``ClientError`` when
    the template fails, passes a bound of ``limits``, or (``continue_final_message``) the final
    message is not an assistant message or does not survive rendering.
    """
    if continue_final_message and add_generation_prompt:
        raise ClientError("add_generation_prompt and continue_final_message cannot both be true: "
                          "continue_final_message continues the last assistant message, "
                          "add_generation_prompt starts a new one", param="continue_final_message")
    if len(template) > limits.max_template_chars:
        raise ClientError(f"the chat template has {len(template)} characters; at most "
                          f"{limits.max_template_chars} are accepted", param="chat_template")
    conversation = _alias_reasoning_fields(messages)
    final_content = None
    if continue_final_message:
        final_content = _tag_final_message(template, conversation)
    context = {**(special_tokens or {}), **(template_kwargs or {}), "messages": conversation,
               "tools": tools, "documents": None, "add_generation_prompt": add_generation_prompt}
    try:
        text = render_bounded(lambda: _compiled(template, limits), context, limits)
    except TemplateLimitError as error:
        raise ClientError(f"the chat template was stopped: {error}",
                          param="chat_template") from None
    except SecurityError as error:
        raise ClientError(f"the chat template did something the sandbox forbids: {error}",
                          param="chat_template") from None
    except (TemplateError, RecursionError, MemoryError) as error:
        raise ClientError(f"the chat template rejected the messages: {_short(error)}",
                          param="messages") from None
    except Exception as error:      # TypeError, ValueError, ... raised by template code
        raise ClientError(f"the chat template failed on these messages: "
                          f"{type(error).__name__}: {_short(error)}", param="messages") from None
    return text if final_content is None else _cut_after_final(text, final_content)


def _short(error: BaseException, limit: int = 500) -> str:
    text = str(error)
    return text if len(text) <= limit else text[:limit] + "..."


def _alias_reasoning_fields(messages: list[dict]) -> list[dict]:
    """Copies of ``messages``; a message's reasoning under any of transformers' names is also
    given as ``reasoning_content`` and ``thinking`` (as transformers does)."""
    aliased = []
    for message in messages:
        reasoning = next((message[key] for key in _REASONING_FIELDS
                          if message.get(key) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        aliased.append(dict(message))
    return aliased


def _tag_final_message(template: str, conversation: list[dict]) -> str:
    """Mark the end of the final (assistant) message's content; returns that content."""
    final = conversation[-1]
    if final.get("role") != "assistant":
        raise ClientError("continue_final_message needs the last message to be an assistant "
                          f"message, got role {final.get('role')!r}",
                          param="continue_final_message")
    if "content" not in template:
        raise ClientError("continue_final_message: this chat template does not render message "
                          "content", param="continue_final_message")
    content = final.get("content") or ""
    final["content"] = content + _CONTINUE_TAG
    return content


def _cut_after_final(text: str, final_content: str) -> str:
    """``text`` up to the end of the final message's content (transformers' rule: the tag
    marks it; when the template trimmed the tag's trailing space, trailing spaces go too)."""
    tag = _CONTINUE_TAG.strip()
    if final_content.strip() not in text or tag not in text:
        raise ClientError("continue_final_message: the final message does not appear in the "
                          "rendered chat (the template changes or drops it)",
                          param="continue_final_message")
    tag_at = text.rindex(tag)
    if text[tag_at:tag_at + len(_CONTINUE_TAG)] == _CONTINUE_TAG:
        return text[:tag_at]
    return text[:tag_at].rstrip()


@functools.lru_cache(maxsize=_COMPILED_CACHE_SIZE)
def _compiled(template: str, limits: TemplateLimits) -> jinja2.Template:
    return _environment(limits).from_string(template)


@functools.lru_cache(maxsize=8)
def _environment(limits: TemplateLimits) -> BoundedSandbox:
    env = BoundedSandbox(limits, trim_blocks=True, lstrip_blocks=True,
                         extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now,
                       dict=_TemplateDict(), namespace=_TemplateNamespace)
    env.guard_filters()
    return env


def _raise_exception(message: Any) -> None:
    text = message if isinstance(message, str) else "the chat template raised an exception"
    raise TemplateError(text)


def _tojson(value: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    """transformers' tojson: plain json.dumps, no HTML escaping."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _TemplateDict:
    """``dict(...)`` and ``dict.fromkeys`` without the type object itself (transformers')."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """A namespace that refuses underscore-prefixed names (transformers')."""

    def __init__(*args: Any, **kwargs: Any):  # noqa: N805 (Jinja's signature trick)
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _check_namespace_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _check_namespace_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)


def _check_namespace_name(name: Any) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise SecurityError(f"a chat template cannot store {name!r} on a namespace")
