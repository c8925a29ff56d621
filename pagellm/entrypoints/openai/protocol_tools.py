"""Tool calling in the OpenAI chat API: the request's ``tools`` and ``tool_choice``, tool calls
inside messages, tool calls in responses and streamed deltas (pydantic models), and the rules
vLLM applies to them.

- ``tool_choice`` defaults to ``"auto"`` when tools are sent, else ``"none"``; any other
  choice needs ``tools``; a named choice must name one of them; ``"required"`` with an empty
  ``tools`` list behaves as ``"none"`` (OpenAI's rule).
- ``"required"`` and a named function are enforced by structured outputs: the output must match
  ``tool_json_schema`` (the function's parameters; or a non-empty JSON array of
  ``{"name", "parameters"}`` items, one schema per tool).
- Assistant messages carry ``tool_calls`` (arguments as JSON text, as OpenAI sends them); the
  chat template receives the arguments as a dict (transformers' convention, and vLLM's).
"""

from __future__ import annotations

import json
import secrets
import string
import uuid
from typing import Any, Literal

from pydantic import Field

from pagellm.entrypoints.openai.request_base import OpenAIBaseModel, OpenAIRequest
from pagellm.errors import ClientError

MAX_NAME_CHARS = 256
MAX_ID_CHARS = 256

# ---- requests -----------------------------------------------------------------------------


class FunctionDefinition(OpenAIRequest):
    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    """The arguments' JSON schema (None: no arguments)."""
    strict: bool | None = None
    """OpenAI's strict schema adherence: accepted; "required" and named choices are always
    enforced here."""


class ChatCompletionToolsParam(OpenAIRequest):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class ChatCompletionNamedFunction(OpenAIRequest):
    name: str = Field(max_length=MAX_NAME_CHARS)


class ChatCompletionNamedToolChoiceParam(OpenAIRequest):
    type: Literal["function"] = "function"
    function: ChatCompletionNamedFunction


ToolChoice = Literal["none", "auto", "required"] | ChatCompletionNamedToolChoiceParam


class FunctionCallParam(OpenAIRequest):
    name: str = Field(max_length=MAX_NAME_CHARS)
    arguments: str = "{}"
    """JSON text of an object (OpenAI's form)."""


class ToolCallParam(OpenAIRequest):
    """A tool call in an assistant message of the conversation."""

    id: str = Field(max_length=MAX_ID_CHARS)
    type: Literal["function"] = "function"
    function: FunctionCallParam


# ---- responses ----------------------------------------------------------------------------


class FunctionCall(OpenAIBaseModel):
    name: str
    arguments: str


class ToolCall(OpenAIBaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class DeltaFunctionCall(OpenAIBaseModel):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(OpenAIBaseModel):
    """One streamed piece of a tool call: the first carries ``id``, ``type`` and
    ``function.name`` (arguments ``""``); later ones argument text for the same ``index``."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunctionCall | None = None


# ---- rules --------------------------------------------------------------------------------


def resolve_tool_choice(tools: list[ChatCompletionToolsParam] | None, tool_choice: Any,
                        tool_choice_sent: bool) -> str | ChatCompletionNamedToolChoiceParam:
    """The effective choice (vLLM's rules, see the module docstring); ClientError (param
    ``tool_choice``) with vLLM's messages when it contradicts ``tools``."""
    if not tool_choice_sent:
        return "auto" if tools else "none"
    if tool_choice == "none":
        return "none"
    if tools is None:
        raise ClientError("When using `tool_choice`, `tools` must be set.", param="tool_choice")
    if tool_choice == "required" and not tools:
        raise ClientError('`tool_choice` "required" needs at least one tool in `tools`',
                          param="tool_choice")
    if isinstance(tool_choice, ChatCompletionNamedToolChoiceParam):
        name = tool_choice.function.name
        if not name:
            raise ClientError("Invalid `name` in `function`: `` in `tool_choice`! Correct usage: "
                              '`{"type": "function", "function": {"name": "my_function"}}`',
                              param="tool_choice")
        if all(tool.function.name != name for tool in tools):
            raise ClientError("The tool specified in `tool_choice` does not match any of the "
                              "specified `tools`", param="tool_choice")
    return tool_choice


def tool_json_schema(tools: list[ChatCompletionToolsParam] | None, tool_choice: Any,
                     parallel_tool_calls: bool | None) -> dict | None:
    """The JSON schema the output must match for ``tool_choice`` (already resolved): a named
    function's parameters; for "required", a JSON array (at least one item; at most one when
    ``parallel_tool_calls`` is false) of ``{"name", "parameters"}`` objects, one schema per
    tool, their ``$defs`` merged (ClientError when two tools define one name differently).
    None for "auto" and "none"."""
    if isinstance(tool_choice, ChatCompletionNamedToolChoiceParam):
        tool = next(t for t in tools if t.function.name == tool_choice.function.name)
        return tool.function.parameters or _EMPTY_OBJECT
    if tool_choice != "required":
        return None
    definitions: dict[str, Any] = {}
    items = []
    for tool in tools:
        parameters = dict(tool.function.parameters or _EMPTY_OBJECT)
        for name, schema in (parameters.pop("$defs", None) or {}).items():
            if definitions.setdefault(name, schema) != schema:
                raise ClientError(f"Tool definition '{name}' has multiple schemas, which is "
                                  "not supported.", param="tools")
        items.append({"properties": {"name": {"type": "string", "enum": [tool.function.name]},
                                     "parameters": parameters},
                      "required": ["name", "parameters"]})
    schema: dict[str, Any] = {"type": "array", "minItems": 1,
                              "items": {"type": "object", "anyOf": items}}
    if parallel_tool_calls is False:
        schema["maxItems"] = 1
    if definitions:
        schema["$defs"] = definitions
    return schema


_EMPTY_OBJECT = {"type": "object", "properties": {}}
_MISTRAL_ID_CHARS = string.ascii_letters + string.digits


def new_tool_call_id(id_format: str = "random") -> str:
    """vLLM's ids: ``chatcmpl-tool-<32 hex>``, or 9 alphanumerics for Mistral."""
    if id_format == "mistral":
        return "".join(secrets.choice(_MISTRAL_ID_CHARS) for _ in range(9))
    return f"chatcmpl-tool-{uuid.uuid4().hex}"


def template_tool_calls(tool_calls: list[dict], param: str) -> list[dict]:
    """Tool calls of a message as chat templates take them: ``arguments`` parsed into a dict
    (empty text: ``{}``). ClientError naming ``param[j].function.arguments`` when it is not
    JSON."""
    converted = []
    for index, call in enumerate(tool_calls):
        function = dict(call["function"])
        text = function.get("arguments") or "{}"
        try:
            function["arguments"] = json.loads(text)
        except ValueError:
            where = f"{param}[{index}].function.arguments"
            raise ClientError(f"{where} must be JSON text (OpenAI's form of tool call "
                              f"arguments), got {text[:100]!r}", param=param.split("[")[0]) \
                from None
        converted.append({**call, "function": function})
    return converted
