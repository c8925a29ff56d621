"""Pydantic models of the OpenAI HTTP API: requests, responses, streamed chunks and errors.

Requests (``OpenAIRequest``, in request_base.py) parse in three steps, each owned once for every
route and field:

1. every string anywhere in the body (values and keys, nested messages included) must be valid
   Unicode: a lone UTF-16 surrogate (``"\\ud800"``, legal JSON) fails with the field's path;
2. an explicit ``null`` for an optional field means its default, as in the OpenAI API;
3. field types and the bounds that protect the server from huge inputs (lengths, counts, ``n``)
   are checked here, and every field vLLM or OpenAI defines but this server does not implement
   yet fails with a 400 naming it (``NOT_SUPPORTED_YET``); unknown fields are ignored.

Semantic ranges (temperature >= 0, top_p in (0, 1], ...) are not checked here:
``SamplingParams`` owns them, and ``InputProcessor.validate`` owns the rules that depend on the
model (context length, vocabulary, max_logprobs), so HTTP and the offline ``LLM`` give the same
message for the same value. docs/openai_api_fields.md lists every field and what it does here.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (ConfigDict, Discriminator, Field, StrictInt, Tag, field_validator,
                      model_validator)
from pydantic_core import PydanticCustomError

from pagellm.entrypoints.openai.protocol_tools import (ChatCompletionToolsParam, DeltaToolCall,
                                                       ToolCall, ToolCallParam, ToolChoice,
                                                       resolve_tool_choice,
                                                       template_tool_calls, tool_json_schema)
from pagellm.entrypoints.openai.request_base import OpenAIBaseModel, OpenAIRequest
from pagellm.entrypoints.openai.structured_outputs import structured_outputs_of
from pagellm.errors import ClientError, NotSupportedError
from pagellm.sampling_params import SamplingParams, StructuredOutputsParams

MAX_N = 128
MAX_PROMPTS = 64
MAX_PROMPT_CHARS = 4_000_000
MAX_STOP_STRINGS = 16
MAX_STOP_STRING_CHARS = 512
MAX_STOP_TOKEN_IDS = 128
MAX_LOGIT_BIAS_ENTRIES = 1024
MAX_TOP_LOGPROBS = 20
"""OpenAI's documented range of top_logprobs is 0..20 (the engine's max_logprobs may be lower)."""
MAX_MESSAGES = 4096
MAX_TOOLS = 512
MAX_INT32 = 2**31 - 1
COMPLETION_DEFAULT_MAX_TOKENS = 16
"""OpenAI's default max_tokens for /v1/completions (chat has none: up to the context length)."""

TokenId = Annotated[StrictInt, Field(ge=0, le=MAX_INT32)]
TokenIds = Annotated[list[TokenId], Field(max_length=MAX_PROMPT_CHARS)]
PromptText = Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]

class StreamOptions(OpenAIRequest):
    include_usage: bool = False
    """Send one last chunk with token usage (and no choices) before ``data: [DONE]``."""
    continuous_usage_stats: bool = False
    """vLLM's extension: with include_usage, every chunk also carries the usage so far
    (completions only, for now)."""


class _SamplingRequest(OpenAIRequest):
    """Fields shared by completion and chat requests."""

    check_strings: ClassVar[bool] = True

    model: str | None = Field(None, max_length=1024)
    n: int = Field(1, le=MAX_N)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[StrictInt] | None = Field(None, max_length=MAX_STOP_TOKEN_IDS)
    max_tokens: int | None = None
    min_tokens: int = 0
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    logit_bias: dict[str, float] | None = Field(None, max_length=MAX_LOGIT_BIAS_ENTRIES)
    user: str | None = Field(None, max_length=1024)
    """An end-user id for the caller's own bookkeeping; it changes nothing in the output."""
    priority: int = Field(0, ge=-MAX_INT32, le=MAX_INT32)
    """Lower runs first when the scheduler uses priority scheduling (vLLM's extension)."""
    # Known fields whose features are not built yet: any value but "off" is a 400.
    use_beam_search: Any = None
    length_penalty: Any = None
    allowed_token_ids: Any = None
    bad_words: Any = None
    # Structured outputs (read by structured_outputs.structured_outputs_of).
    structured_outputs: dict[str, Any] | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    guided_decoding_backend: str | None = None
    guided_whitespace_pattern: str | None = None
    logits_processors: Any = None
    return_tokens_as_token_ids: Any = None
    return_token_ids: Any = None
    cache_salt: Any = None
    kv_transfer_params: Any = None
    vllm_xargs: Any = None
    request_id: Any = None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, stop):
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}")
        if any(len(text) > MAX_STOP_STRING_CHARS for text in stops):
            raise ValueError(f"stop strings must be at most {MAX_STOP_STRING_CHARS} characters")
        return stop

    @model_validator(mode="after")
    def _check_stream_options(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options can only be set when stream is true")
        return self

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        """Usage in every streamed chunk (stream_options.continuous_usage_stats)."""
        return self.include_usage and self.stream_options.continuous_usage_stats

    def _sampling_params(self, max_tokens: int | None, logprobs: int | None,
                         prompt_logprobs: int | None, detokenize: bool) -> SamplingParams:
        """The request's SamplingParams, final as the engine runs them (``output_kind``
        'delta': the server sums deltas itself). SamplingParams checks every range."""
        optional = {name: getattr(self, name) for name in (
            "temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
            "repetition_penalty") if getattr(self, name) is not None}
        return SamplingParams(
            n=self.n, seed=self.seed, stop=self.stop, stop_token_ids=self.stop_token_ids,
            max_tokens=max_tokens, min_tokens=self.min_tokens, ignore_eos=self.ignore_eos,
            logprobs=logprobs, prompt_logprobs=prompt_logprobs, detokenize=detokenize,
            skip_special_tokens=self.skip_special_tokens,
            spaces_between_special_tokens=self.spaces_between_special_tokens,
            include_stop_str_in_output=self.include_stop_str_in_output,
            logit_bias=self.logit_bias, structured_outputs=structured_outputs_of(self),
            output_kind="delta", **optional)


def _default_max_tokens(requested: int | None, default: int | None, max_model_len: int,
                        prompt_len: int) -> int | None:
    """``requested`` as is (the engine checks that it fits); without one, ``default`` capped
    by the room the prompt leaves (None: all of it, which the engine resolves)."""
    if requested is not None or default is None:
        return requested
    room = max_model_len - prompt_len
    return min(default, room) if room > 0 else default


def _check_prompt(prompt: Any) -> Any:
    """The shape of a completion prompt: text, token ids, or a list of either. Token id
    ranges are the engine's to check (it knows the vocabulary)."""
    if isinstance(prompt, str):
        return _checked_text(prompt, "prompt")
    if not isinstance(prompt, list) or not prompt:
        raise PydanticCustomError(
            "prompt_type", "prompt must be a non-empty string, a list of token ids, or a list "
                           "of strings or of token-id lists")
    if isinstance(prompt[0], list):
        for index, token_ids in enumerate(prompt):
            _checked_token_ids(token_ids, f"prompt[{index}]")
    elif isinstance(prompt[0], str):
        for index, text in enumerate(prompt):
            _checked_text(text, f"prompt[{index}]")
    else:
        _checked_token_ids(prompt, "prompt")
    return prompt


def _checked_text(text: Any, where: str) -> str:
    if not isinstance(text, str):
        raise PydanticCustomError("prompt_type", "{where} must be a string like the other "
                                  "prompts", {"where": where})
    if len(text) > MAX_PROMPT_CHARS:
        raise PydanticCustomError("prompt_too_long", "{where} must be at most {limit} "
                                  "characters", {"where": where, "limit": MAX_PROMPT_CHARS})
    return text


def _checked_token_ids(token_ids: Any, where: str) -> list[int]:
    if not isinstance(token_ids, list):
        raise PydanticCustomError("prompt_type", "{where} must be a list of token ids",
                                  {"where": where})
    if len(token_ids) > MAX_PROMPT_CHARS:
        raise PydanticCustomError("prompt_too_long", "{where} must be at most {limit} token "
                                  "ids", {"where": where, "limit": MAX_PROMPT_CHARS})
    for index, token_id in enumerate(token_ids):
        if type(token_id) is not int:
            raise PydanticCustomError("prompt_type", "{where}[{index}] must be a token id (an "
                                      "integer), got {got}", {"where": where, "index": index,
                                                              "got": type(token_id).__name__})
    return token_ids


class CompletionRequest(_SamplingRequest):
    """POST /v1/completions."""

    prompt: Any
    """One text, one list of token ids, or a list of either (one choice set per prompt)."""
    max_tokens: int | None = COMPLETION_DEFAULT_MAX_TOKENS
    logprobs: int | None = Field(None, ge=0, le=MAX_INT32)
    echo: bool = False
    best_of: int | None = Field(None, ge=1, le=MAX_N)
    suffix: str | None = Field(None, max_length=MAX_STOP_STRING_CHARS)
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_INT32)
    """vLLM's extension: logprobs of each prompt token (this many top ones, plus the token)."""
    add_special_tokens: bool = True
    """Let the tokenizer add its special tokens (BOS) to a text prompt."""
    truncate_prompt_tokens: int | None = Field(None, ge=-1, le=MAX_INT32)
    """Keep only the last k prompt tokens (-1: the last max_model_len - 1)."""
    response_format: Any = None
    prompt_embeds: Any = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _check_prompt_shape(cls, prompt):
        return _check_prompt(prompt)

    def prompts(self) -> list[str | list[int]]:
        """The prompts as a list (text or token ids each); ClientError for a too long batch
        and for options this server does not support."""
        if self.best_of is not None and self.best_of != self.n:
            raise NotSupportedError("best_of other than n is not supported", param="best_of")
        if self.suffix:
            raise NotSupportedError("suffix is not supported", param="suffix")
        if self.prompt_logprobs is not None and self.stream:
            raise ClientError("prompt_logprobs are not available when stream=true",
                              param="prompt_logprobs")
        prompt = self.prompt
        prompts = [prompt] if isinstance(prompt, str) or isinstance(prompt[0], int) \
            else list(prompt)
        if len(prompts) > MAX_PROMPTS:
            raise ClientError(f"at most {MAX_PROMPTS} prompts per request, got {len(prompts)}",
                              param="prompt")
        if len(prompts) * self.n > MAX_N:
            raise ClientError(f"prompts × n must be <= {MAX_N}, got {len(prompts) * self.n}",
                              param="n")
        return prompts

    def truncate(self, token_ids: list[int], max_model_len: int) -> list[int]:
        """``token_ids`` cut to their last ``truncate_prompt_tokens`` (vLLM's rule)."""
        keep = self.truncate_prompt_tokens
        if keep is None:
            return token_ids
        keep = max_model_len - 1 if keep == -1 else keep
        return token_ids[-keep:] if keep else []

    def to_sampling_params(self, max_model_len: int, prompt_len: int,
                           detokenize: bool = True) -> SamplingParams:
        """SamplingParams for one prompt of ``prompt_len`` tokens. With echo and logprobs,
        the prompt's logprobs are asked for too (unless prompt_logprobs says how many)."""
        prompt_logprobs = self.prompt_logprobs
        if prompt_logprobs is None and self.echo:
            prompt_logprobs = self.logprobs
        # OpenAI's default of 16 shrinks to fit a long prompt; an explicit value must fit.
        requested = self.max_tokens if "max_tokens" in self.model_fields_set else None
        max_tokens = _default_max_tokens(requested, COMPLETION_DEFAULT_MAX_TOKENS,
                                         max_model_len, prompt_len)
        return self._sampling_params(max_tokens, self.logprobs, prompt_logprobs, detokenize)


class ChatMessageParam(OpenAIRequest):
    """One message of a conversation; extra keys (reasoning_content, ...) go to the chat
    template. Only assistant messages carry ``tool_calls``; ``tool`` messages answer one by its
    ``tool_call_id``."""

    model_config = ConfigDict(extra="allow")
    role: str = Field(max_length=64)
    content: str | list[dict[str, Any]] | None = None
    name: str | None = Field(None, max_length=256)
    tool_calls: list[ToolCallParam] | None = Field(None, max_length=MAX_N * 8)
    tool_call_id: str | None = Field(None, max_length=256)

    @field_validator("tool_calls")
    @classmethod
    def _tool_calls_from_assistant(cls, value, info):
        if value is not None and info.data.get("role") != "assistant":
            raise PydanticCustomError("tool_calls_role", "only assistant messages carry "
                                      "tool_calls")
        return value

    @field_validator("tool_call_id")
    @classmethod
    def _tool_call_id_of_tool(cls, value, info):
        if value is not None and info.data.get("role") != "tool":
            raise PydanticCustomError("tool_call_id_role", "only tool messages carry a "
                                      "tool_call_id")
        return value

    @model_validator(mode="after")
    def _content_unless_assistant(self):
        """OpenAI requires ``content`` on every message but an assistant's (which may carry
        only ``tool_calls``, or be the reply's start)."""
        if self.content is None and self.role != "assistant":
            raise PydanticCustomError("missing_content", "a {role} message needs 'content'",
                                      {"role": self.role})
        return self

    def template_dict(self, index: int) -> dict:
        """The message as the chat template takes it (tool call arguments as dicts)."""
        message = self.model_dump(exclude_none=True)
        if self.role == "tool" and self.tool_call_id is None:
            raise ClientError(f"messages[{index}] has role 'tool' but no tool_call_id (the id "
                              "of the call it answers)", param="messages")
        if "tool_calls" in message:
            message["tool_calls"] = template_tool_calls(message["tool_calls"],
                                                        f"messages[{index}].tool_calls")
        return message


class ChatCompletionRequest(_SamplingRequest):
    """POST /v1/chat/completions."""

    messages: list[ChatMessageParam] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = None
    """Takes precedence over the deprecated max_tokens."""
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    """Start the reply with the last message's content when its role is the reply's role."""
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    """End the prompt inside the last (assistant) message so the reply continues it (vLLM's
    extension); needs add_generation_prompt=false."""
    chat_template: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[ChatCompletionToolsParam] | None = Field(None, max_length=MAX_TOOLS)
    """Functions the model may call, rendered by the chat template (``tools=``)."""
    tool_choice: ToolChoice | None = None
    """none, auto (the default with tools: needs --enable-auto-tool-choice), required, or a
    named function; see protocol_tools."""
    response_format: dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    """False: at most one tool call (later ones are dropped; "required" allows one item)."""
    add_special_tokens: bool = False
    """vLLM's default: the chat template already holds the special tokens."""
    prompt_logprobs: int | None = None
    truncate_prompt_tokens: int | None = None
    include_reasoning: bool = True
    """With --reasoning-parser: false drops the reasoning from the response."""
    metadata: dict[str, Any] | None = Field(None, max_length=16)
    """OpenAI tags stored completions with it; nothing is stored (store=true is refused)."""
    prediction: dict[str, Any] | None = None
    """A hint that only speeds up OpenAI's decoding; the output is the same without it."""
    prompt_cache_key: str | None = Field(None, max_length=1024)
    """Routes to OpenAI's prompt caches; prefix caching here is automatic: no effect."""
    safety_identifier: str | None = Field(None, max_length=1024)
    """An end-user id for abuse monitoring, like user: no effect on the output."""
    mm_processor_kwargs: Any = None
    documents: Any = None
    reasoning_effort: Any = None
    web_search_options: Any = None
    audio: Any = None
    modalities: Any = None
    functions: Any = None
    function_call: Any = None
    store: Any = None
    service_tier: Any = None
    verbosity: Any = None

    def check_supported(self) -> None:
        """ClientError for OpenAI features this server does not implement, and for
        combinations that contradict each other."""
        self.effective_tool_choice()
        if self.top_logprobs and not self.logprobs:
            raise ClientError("top_logprobs needs logprobs=true", param="top_logprobs")
        if self.add_special_tokens:
            raise NotSupportedError("add_special_tokens=true is not supported yet on chat",
                                    param="add_special_tokens")
        for name in ("prompt_logprobs", "truncate_prompt_tokens"):
            if getattr(self, name) is not None:
                raise NotSupportedError(f"{name} is not supported yet on chat (it is on "
                                        "/v1/completions)", param=name)
        if self.continuous_usage:
            raise NotSupportedError("stream_options.continuous_usage_stats is not supported yet "
                                    "on chat (it is on /v1/completions)", param="stream_options")

    def message_dicts(self) -> list[dict]:
        return [message.template_dict(index) for index, message in enumerate(self.messages)]

    def effective_tool_choice(self) -> str | Any:
        """'none', 'auto', 'required' or the named choice (``resolve_tool_choice``)."""
        return resolve_tool_choice(self.tools, self.tool_choice,
                                   "tool_choice" in self.model_fields_set)

    def tool_dicts(self) -> list[dict] | None:
        """The tools as the chat template takes them (transformers' ``tools=``)."""
        return None if not self.tools else [tool.model_dump(exclude_none=True)
                                            for tool in self.tools]

    def to_sampling_params(self, max_model_len: int, prompt_len: int,
                           max_logprobs: int | None = None) -> SamplingParams:
        """SamplingParams for the rendered conversation of ``prompt_len`` tokens
        (``max_logprobs`` is the engine's to check and unused here)."""
        self.check_supported()
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        if self.max_completion_tokens is not None:
            max_tokens = self.max_completion_tokens
        else:
            max_tokens = self.max_tokens
        params = self._sampling_params(max_tokens, logprobs, None, detokenize=True)
        schema = tool_json_schema(self.tools, self.effective_tool_choice(),
                                  self.parallel_tool_calls)
        if schema is not None:     # "required" or a named function: the output must match
            params.structured_outputs = StructuredOutputsParams(json=schema)
        return params


# ---- responses ----------------------------------------------------------------------------

class UsageInfo(OpenAIBaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class CompletionLogProbs(OpenAIBaseModel):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class PromptLogprob(OpenAIBaseModel):
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


class CompletionResponseChoice(OpenAIBaseModel):
    index: int
    text: str
    logprobs: CompletionLogProbs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    """vLLM's extension: the stop string or token id that ended the choice."""
    prompt_logprobs: list[dict[int, PromptLogprob] | None] | None = None
    """vLLM's extension (with prompt_logprobs): per prompt token, token id -> its logprob;
    None for the first token, which has no context."""


class CompletionResponse(OpenAIBaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionResponseChoice]
    usage: UsageInfo


class CompletionStreamResponse(OpenAIBaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionResponseChoice]
    usage: UsageInfo | None = None


class ChatCompletionLogProb(OpenAIBaseModel):
    token: str
    logprob: float = -9999.0
    bytes: list[int] | None = None


class ChatCompletionLogProbsContent(ChatCompletionLogProb):
    top_logprobs: list[ChatCompletionLogProb] = Field(default_factory=list)


class ChatCompletionLogProbs(OpenAIBaseModel):
    content: list[ChatCompletionLogProbsContent] | None = None


class ChatMessage(OpenAIBaseModel):
    role: str
    content: str | None = None
    reasoning_content: str | None = None
    """With --reasoning-parser: the model's reasoning, apart from the content."""
    reasoning: str | None = None
    """The same reasoning under vLLM's newer name."""
    tool_calls: list[ToolCall] = Field(default_factory=list)


class DeltaMessage(OpenAIBaseModel):
    role: str | None = None
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChatCompletionResponseChoice(OpenAIBaseModel):
    index: int
    message: ChatMessage
    logprobs: ChatCompletionLogProbs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionResponse(OpenAIBaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatCompletionResponseChoice]
    usage: UsageInfo


class ChatCompletionStreamChoice(OpenAIBaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatCompletionLogProbs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionStreamResponse(OpenAIBaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatCompletionStreamChoice]
    usage: UsageInfo | None = None


class ModelCard(OpenAIBaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "pagellm"
    root: str | None = None
    parent: str | None = None
    """A LoRA adapter's base model id (None for the base model)."""
    max_model_len: int | None = None


class ModelList(OpenAIBaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard] = Field(default_factory=list)


class ErrorInfo(OpenAIBaseModel):
    message: str
    type: str
    param: str | None = None
    code: int
    """The HTTP status code, as vLLM sends it."""


class ErrorResponse(OpenAIBaseModel):
    error: ErrorInfo

    @property
    def status_code(self) -> int:
        return self.error.code


# ---- tokenize / detokenize ----------------------------------------------------------------

class TokenizeCompletionRequest(OpenAIRequest):
    check_strings: ClassVar[bool] = True
    model: str | None = Field(None, max_length=1024)
    prompt: PromptText
    add_special_tokens: bool = True
    return_token_strs: bool = False
    """vLLM's extension: also return each token's string (``token_strs``)."""


class TokenizeChatRequest(OpenAIRequest):
    check_strings: ClassVar[bool] = True
    model: str | None = Field(None, max_length=1024)
    messages: list[ChatMessageParam] = Field(min_length=1, max_length=MAX_MESSAGES)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    return_token_strs: bool = False
    add_special_tokens: bool = False
    """vLLM's default for chat; true is not supported yet."""
    chat_template_kwargs: Any = None
    tools: Any = None
    mm_processor_kwargs: Any = None
    documents: Any = None
    prompt: None = None
    """Refused: a body holds either a prompt or messages (which to tokenize would be a guess)."""

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_beside_messages(cls, value):
        if value is not None:
            raise PydanticCustomError("tokenize_both", "must not be sent together with "
                                      "messages: /tokenize takes one of the two")
        return value

    @field_validator("add_special_tokens", "chat_template_kwargs", "tools")
    @classmethod
    def _not_supported_on_tokenize(cls, value, info):
        if value:
            raise PydanticCustomError("not_supported", "{field} is not supported yet on "
                                      "/tokenize", {"field": info.field_name})
        return value


def tokenize_request_kind(body: Any) -> str:
    """Which tokenize request a body is: 'chat' when it has messages, else 'completion'
    (``TokenizeChatRequest`` refuses a prompt beside the messages)."""
    return "chat" if isinstance(body, dict) and "messages" in body else "completion"


TokenizeRequest = Annotated[
    Annotated[TokenizeCompletionRequest, Tag("completion")]
    | Annotated[TokenizeChatRequest, Tag("chat")],
    Discriminator(tokenize_request_kind)]
"""The body of POST /tokenize: parsed as one kind or the other, so errors name its fields."""


class TokenizeResponse(OpenAIBaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(OpenAIRequest):
    check_strings: ClassVar[bool] = True
    model: str | None = Field(None, max_length=1024)
    tokens: TokenIds


class DetokenizeResponse(OpenAIBaseModel):
    prompt: str


REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "/v1/completions": ("prompt",), "/v1/chat/completions": ("messages",),
    "/tokenize": ("prompt (or messages)",), "/detokenize": ("tokens",)}
"""Route -> the fields an empty body lacks (FastAPI reports only that the body is missing)."""


class LoadLoRAAdapterRequest(OpenAIBaseModel):
    """POST /v1/load_lora_adapter (vLLM's)."""
    lora_name: str
    lora_path: str


class UnloadLoRAAdapterRequest(OpenAIBaseModel):
    """POST /v1/unload_lora_adapter (vLLM's; lora_int_id is accepted and ignored)."""
    lora_name: str
    lora_int_id: int | None = None
