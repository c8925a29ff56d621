"""Pydantic models of the OpenAI HTTP API: requests, responses, streamed chunks and errors.

Requests accept unknown fields and ignore them (clients send many optional OpenAI fields), but
every known field is bounded, so a malformed request fails at parsing with a message that names
the field. ``to_sampling_params`` then applies the limits that depend on the model and the
prompt (``max_model_len``, ``max_logprobs``) and raises ``ClientError`` naming the parameter.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from pagellm.errors import ClientError, NotSupportedError
from pagellm.sampling_params import SamplingParams

MAX_N = 128
MAX_PROMPTS = 64
MAX_PROMPT_CHARS = 4_000_000
MAX_STOP_STRINGS = 16
MAX_STOP_STRING_CHARS = 512
MAX_STOP_TOKEN_IDS = 128
MAX_LOGIT_BIAS_ENTRIES = 1024
MAX_TOP_LOGPROBS = 20
MAX_MESSAGES = 4096
MAX_INT32 = 2**31 - 1
MAX_SEED = 2**63 - 1

TokenId = Annotated[StrictInt, Field(ge=0, le=MAX_INT32)]
TokenIds = Annotated[list[TokenId], Field(max_length=MAX_PROMPT_CHARS)]
PromptText = Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]


class OpenAIBaseModel(BaseModel):
    """Unknown fields are ignored, as OpenAI clients send fields this server does not use."""

    model_config = ConfigDict(extra="ignore")


class StreamOptions(OpenAIBaseModel):
    include_usage: bool = False
    """Send one last chunk with token usage (and no choices) before ``data: [DONE]``."""


class _SamplingRequest(OpenAIBaseModel):
    """Fields shared by completion and chat requests."""

    model: str | None = Field(None, max_length=1024)
    n: int = Field(1, ge=1, le=MAX_N)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1, le=MAX_INT32)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    seed: int | None = Field(None, ge=-MAX_SEED, le=MAX_SEED)
    stop: str | list[str] | None = None
    stop_token_ids: list[TokenId] | None = Field(None, max_length=MAX_STOP_TOKEN_IDS)
    max_tokens: int | None = Field(None, ge=1, le=MAX_INT32)
    min_tokens: int = Field(0, ge=0, le=MAX_INT32)
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    logit_bias: dict[str, float] | None = Field(None, max_length=MAX_LOGIT_BIAS_ENTRIES)
    user: str | None = Field(None, max_length=1024)
    priority: int = Field(0, ge=-MAX_INT32, le=MAX_INT32)
    """Lower runs first when the scheduler uses priority scheduling (vLLM's extension)."""

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, stop):
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}")
        for text in stops:
            if not text or len(text) > MAX_STOP_STRING_CHARS:
                raise ValueError(f"stop strings must be 1 to {MAX_STOP_STRING_CHARS} characters")
        return stop

    @field_validator("logit_bias")
    @classmethod
    def _check_logit_bias(cls, logit_bias):
        for key, bias in (logit_bias or {}).items():
            if not key.isdigit():
                raise ValueError(f"keys must be token ids (decimal integers), got {key[:32]!r}")
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"bias for token {key} must be in [-100, 100], got {bias}")
        return logit_bias

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def _sampling_params(self, max_tokens: int | None, max_tokens_param: str,
                         default_max_tokens: int | None, max_model_len: int, prompt_len: int,
                         logprobs: int | None, prompt_logprobs: int | None = None
                         ) -> SamplingParams:
        max_tokens = _max_tokens(max_tokens, max_tokens_param, default_max_tokens,
                                 max_model_len, prompt_len)
        optional = {name: getattr(self, name) for name in (
            "temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
            "repetition_penalty") if getattr(self, name) is not None}
        return SamplingParams(
            n=self.n, seed=self.seed, stop=self.stop, stop_token_ids=self.stop_token_ids,
            max_tokens=max_tokens, min_tokens=self.min_tokens, ignore_eos=self.ignore_eos,
            logprobs=logprobs, prompt_logprobs=prompt_logprobs,
            skip_special_tokens=self.skip_special_tokens,
            spaces_between_special_tokens=self.spaces_between_special_tokens,
            include_stop_str_in_output=self.include_stop_str_in_output,
            logit_bias=self.logit_bias, output_kind="delta" if self.stream else "final",
            **optional)


def _max_tokens(requested: int | None, param: str, default: int | None, max_model_len: int,
                prompt_len: int) -> int:
    """The requested max_tokens checked against the room the prompt leaves; when none was
    requested, ``default`` capped by that room (all of it when ``default`` is None)."""
    room = max_model_len - prompt_len
    if room <= 0:
        raise ClientError(
            f"This model's maximum context length is {max_model_len} tokens, but the prompt has "
            f"{prompt_len} tokens. Please shorten the prompt.", param="prompt")
    if requested is None:
        return room if default is None else min(default, room)
    if requested > room:
        raise ClientError(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_len + requested} tokens ({prompt_len} in the prompt, {requested} "
            f"in the completion). Please reduce the length of the prompt or {param}.",
            param=param)
    return requested


def _check_logprobs(value: int | None, param: str, max_logprobs: int) -> None:
    if value is not None and value > max_logprobs:
        raise ClientError(f"{param}={value} exceeds this server's max_logprobs={max_logprobs}",
                          param=param)


class CompletionRequest(_SamplingRequest):
    """POST /v1/completions."""

    prompt: PromptText | TokenIds | list[PromptText] | list[TokenIds]
    """One text, one list of token ids, or a list of either (one choice set per prompt)."""
    max_tokens: int | None = Field(16, ge=1, le=MAX_INT32)
    logprobs: int | None = Field(None, ge=0, le=MAX_INT32)
    echo: bool = False
    best_of: int | None = Field(None, ge=1, le=MAX_N)
    suffix: str | None = Field(None, max_length=MAX_STOP_STRING_CHARS)

    def prompts(self) -> list[str | list[int]]:
        """The prompts as a list (text or token ids each); ClientError for an empty or too
        long batch and for options this server does not support."""
        if self.best_of is not None and self.best_of != self.n:
            raise NotSupportedError("best_of other than n is not supported", param="best_of")
        if self.suffix:
            raise NotSupportedError("suffix is not supported", param="suffix")
        prompt = self.prompt
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
            prompts = [prompt]
        else:
            prompts = list(prompt)
        if not prompts:
            raise ClientError("prompt must not be empty", param="prompt")
        if len(prompts) > MAX_PROMPTS:
            raise ClientError(f"at most {MAX_PROMPTS} prompts per request, got {len(prompts)}",
                              param="prompt")
        if len(prompts) * self.n > MAX_N:
            raise ClientError(f"prompts × n must be <= {MAX_N}, got {len(prompts) * self.n}",
                              param="n")
        return prompts

    def to_sampling_params(self, max_model_len: int, prompt_len: int,
                           max_logprobs: int) -> SamplingParams:
        """SamplingParams for one prompt of ``prompt_len`` tokens; ClientError naming the
        parameter when the request cannot be served. With echo, the prompt's logprobs are
        asked for too."""
        _check_logprobs(self.logprobs, "logprobs", max_logprobs)
        prompt_logprobs = self.logprobs if self.echo and self.logprobs is not None else None
        # OpenAI's default of 16 shrinks to fit a long prompt; an explicit value must fit.
        requested = self.max_tokens if "max_tokens" in self.model_fields_set else None
        return self._sampling_params(requested, "max_tokens", 16, max_model_len, prompt_len,
                                     self.logprobs, prompt_logprobs)


class ChatMessageParam(BaseModel):
    """One message of a conversation; extra keys (tool_calls, ...) go to the chat template."""

    model_config = ConfigDict(extra="allow")
    role: str = Field(max_length=64)
    content: str | list[dict[str, Any]] | None = None
    name: str | None = Field(None, max_length=256)


class ChatCompletionRequest(_SamplingRequest):
    """POST /v1/chat/completions."""

    messages: list[ChatMessageParam] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_INT32)
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
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None

    def check_supported(self) -> None:
        """ClientError for OpenAI features this server does not implement."""
        if self.tools and self.tool_choice != "none":
            raise NotSupportedError("tool calling is not supported; send tool_choice='none' or "
                                    "no tools", param="tools")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise NotSupportedError("only response_format {'type': 'text'} is supported",
                                    param="response_format")
        if self.top_logprobs and not self.logprobs:
            raise ClientError("top_logprobs needs logprobs=true", param="top_logprobs")

    def message_dicts(self) -> list[dict]:
        return [message.model_dump(exclude_none=True) for message in self.messages]

    def to_sampling_params(self, max_model_len: int, prompt_len: int,
                           max_logprobs: int) -> SamplingParams:
        """SamplingParams for the rendered conversation of ``prompt_len`` tokens."""
        self.check_supported()
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        _check_logprobs(logprobs, "top_logprobs", max_logprobs)
        if self.max_completion_tokens is not None:
            max_tokens, param = self.max_completion_tokens, "max_completion_tokens"
        else:
            max_tokens, param = self.max_tokens, "max_tokens"
        return self._sampling_params(max_tokens, param, None, max_model_len, prompt_len,
                                     logprobs)


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


class CompletionResponseChoice(OpenAIBaseModel):
    index: int
    text: str
    logprobs: CompletionLogProbs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    """vLLM's extension: the stop string or token id that ended the choice."""


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


class DeltaMessage(OpenAIBaseModel):
    role: str | None = None
    content: str | None = None


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

class TokenizeCompletionRequest(OpenAIBaseModel):
    model: str | None = Field(None, max_length=1024)
    prompt: PromptText
    add_special_tokens: bool = True


class TokenizeChatRequest(OpenAIBaseModel):
    model: str | None = Field(None, max_length=1024)
    messages: list[ChatMessageParam] = Field(min_length=1, max_length=MAX_MESSAGES)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template: str | None = Field(None, max_length=MAX_PROMPT_CHARS)


class TokenizeResponse(OpenAIBaseModel):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeRequest(OpenAIBaseModel):
    model: str | None = Field(None, max_length=1024)
    tokens: TokenIds


class DetokenizeResponse(OpenAIBaseModel):
    prompt: str
