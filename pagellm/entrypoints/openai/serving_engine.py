"""What the completion and chat handlers share: prompt tokenization, one engine stream per
prompt merged into one, per-choice accumulation of deltas, logprobs in OpenAI's two shapes,
and the Prometheus observations made as outputs arrive.

The engine is anything with AsyncLLM's interface: ``generate(prompt, params, request_id,
priority)`` -> async iterator of RequestOutput, plus ``tokenizer``, ``served_model_name``,
``max_model_len`` and ``config``. Requests always run with ``output_kind="delta"``: a full
(non-streamed) response is the sum of its deltas, and token counts reach the metrics as they
are generated rather than at the end.

Tokenization (prompt encoding, chat template rendering, decoding for /detokenize) always runs
through ``off_loop``: on the handler's ``tokenizer_pool`` (``--tokenizer-pool-size`` threads; HF
fast tokenizers release the GIL while encoding), or the event loop's default executor when it
has none, so a long prompt or a slow template never stalls the other connections. A text
prompt that certainly has too many tokens is refused before it is tokenized
(``check_prompt_chars``).
"""

from __future__ import annotations

import asyncio
import re
import functools
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pagellm.engine.tokenizer import check_prompt_chars
from pagellm.entrypoints.openai.errors import (SSE_DONE, check_model, error_from_exception,
                                              sse_event)
from pagellm.entrypoints.openai.protocol import (ChatCompletionLogProb, ChatCompletionLogProbs,
                                                 ChatCompletionLogProbsContent,
                                                 CompletionLogProbs, ErrorResponse, UsageInfo)
from pagellm.errors import ClientError
from pagellm.outputs import CompletionOutput, PositionLogprobs, RequestOutput
from pagellm.sampling_params import SamplingParams

MIN_LOGPROB = -9999.0   # OpenAI clients choke on -inf; vLLM clamps the same way
DEFAULT_MAX_LOGPROBS = 20
TOKENIZER_THREAD_PREFIX = "pagellm-tokenizer"
_T = TypeVar("_T")


def make_tokenizer_pool(pool_size: int) -> ThreadPoolExecutor:
    """The pool that ``--tokenizer-pool-size`` asks for: ``pool_size`` (at least 1) threads
    named ``pagellm-tokenizer_<i>``."""
    if pool_size < 1:
        raise ValueError(f"tokenizer pool size must be at least 1, got {pool_size}")
    return ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix=TOKENIZER_THREAD_PREFIX)


def check_template_request(chat_template: str | None, template_kwargs: dict | None,
                           trust_request_chat_template: bool) -> dict:
    """The chat_template_kwargs a request may pass to the template (a copy); ClientError when
    it sends its own chat_template to a server without ``--trust-request-chat-template``, or
    kwargs that set the renderer's own arguments or hold anything but plain JSON data."""
    if chat_template is not None and not trust_request_chat_template:
        raise ClientError("this request sends its own chat_template, which this server refuses: "
                          "start it with --trust-request-chat-template to allow request "
                          "templates", param="chat_template")
    kwargs = dict(template_kwargs or {})
    reserved = sorted(RESERVED_TEMPLATE_KWARGS & kwargs.keys())
    if reserved:
        raise ClientError(f"chat_template_kwargs may not set {', '.join(reserved)}",
                          param="chat_template_kwargs")
    _check_plain_json(kwargs, "chat_template_kwargs", MAX_TEMPLATE_KWARGS_DEPTH)
    return kwargs


RESERVED_TEMPLATE_KWARGS = frozenset({
    "conversation", "messages", "chat_template", "add_generation_prompt",
    "continue_final_message", "tools", "documents", "tokenize", "tokenizer", "return_dict"})
"""The renderer's own arguments: chat_template_kwargs may not set them."""
MAX_TEMPLATE_KWARGS_DEPTH = 16


def _check_plain_json(value: Any, param: str, depth: int) -> None:
    """ClientError unless ``value`` is JSON data (str, finite number, bool, None, lists, dicts
    with string keys) nested at most ``depth`` deep. NaN and Infinity, which Python's JSON
    parser accepts, are not JSON."""
    if type(value) is float and not math.isfinite(value):
        raise ClientError(f"{param} values must be finite numbers, got {value}", param=param)
    if value is None or type(value) in (str, int, float, bool):
        return
    if depth <= 0:
        raise ClientError(f"{param} is nested too deeply", param=param)
    if type(value) is list:
        for item in value:
            _check_plain_json(item, param, depth - 1)
    elif type(value) is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise ClientError(f"{param} keys must be strings", param=param)
            _check_plain_json(item, param, depth - 1)
    else:
        raise ClientError(f"{param} values must be plain JSON data, got "
                          f"{type(value).__name__}", param=param)


@dataclass
class ChoiceState:
    """One choice's accumulated output; ``index`` is its index in the response."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[PositionLogprobs] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    num_chars_sent: int = 0
    """Characters streamed so far (echo included): the next completion text_offset."""
    started: bool = False
    """Streamed anything yet (the echo and the chat role go first)."""

    def add(self, delta: CompletionOutput) -> None:
        self.text += delta.text
        self.token_ids.extend(delta.token_ids)
        self.logprobs.extend(delta.logprobs or ())
        if delta.finish_reason is not None:
            self.finish_reason, self.stop_reason = delta.finish_reason, delta.stop_reason

    def take_stream_delta(self, delta: CompletionOutput) -> bool:
        """Record a streamed delta; True when it should become an event (the choice has not
        finished yet and the delta carries tokens, text or a finish reason). Deltas after the
        one carrying the finish reason are ignored."""
        if self.finish_reason is not None:
            return False
        self.add(delta)
        return bool(delta.token_ids or delta.text or delta.finish_reason)


@dataclass
class PromptState:
    """One prompt of a request and its n choices."""

    text: str | None
    token_ids: list[int]
    choices: list[ChoiceState]
    prompt_logprobs: list[PositionLogprobs | None] | None = None

    def take_prompt_logprobs(self, output: RequestOutput) -> None:
        # Later outputs carry at least as many prompt positions (chunked prefill adds them).
        if output.prompt_logprobs is not None:
            self.prompt_logprobs = output.prompt_logprobs


class OpenAIServing:
    """Base of the completion and chat handlers."""

    request_id_prefix = "cmpl"

    def __init__(self, engine: Any, served_model_name: str | None = None,
                 max_model_len: int | None = None, max_logprobs: int | None = None,
                 metrics: Any = None, tokenizer_pool: Executor | None = None):
        """``metrics``: a ``pagellm.metrics.prometheus.PrometheusMetrics`` or None.
        ``tokenizer_pool``: where ``off_loop`` runs tokenization (None: the event loop's
        default executor); the caller owns it and shuts it down."""
        self.engine = engine
        self.tokenizer_pool = tokenizer_pool
        self.served_model_name = served_model_name or engine.served_model_name
        self.max_model_len = max_model_len or engine.max_model_len
        if max_logprobs is None:
            model_config = getattr(getattr(engine, "config", None), "model", None)
            max_logprobs = getattr(model_config, "max_logprobs", DEFAULT_MAX_LOGPROBS)
        self.max_logprobs = max_logprobs
        self.metrics = metrics
        self.models = None
        """``OpenAIServingModels`` (the base and its LoRA adapters); None: the base only."""

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    engine_param_names: dict[str, str] = {}
    """Engine parameter -> this route's field, for error bodies: the engine's rules speak of
    SamplingParams fields, which a route may name otherwise (chat's ``top_logprobs``)."""

    def error_body(self, error: BaseException, request_id: str | None = None) -> ErrorResponse:
        """``error_from_exception`` with the engine's parameter named as this route names it."""
        body = error_from_exception(error, request_id)
        field = self.engine_param_names.get(body.error.param)
        if field is not None:
            body.error.message = re.sub(rf"\b{body.error.param}=", f"{field}=", body.error.message)
            body.error.param = field
        return body

    def new_request_id(self, request_id: str | None = None) -> str:
        return f"{self.request_id_prefix}-{request_id or uuid.uuid4().hex}"

    async def off_loop(self, function: Callable[..., _T], *args: Any) -> _T:
        """``function(*args)`` on the tokenizer pool (the loop's default executor without
        one), never on the event loop; its exception is raised here."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.tokenizer_pool, functools.partial(function, *args))

    async def check_structured_outputs(self, params: list[SamplingParams]) -> None:
        """ClientError (a 400 naming the problem) when a constraint cannot compile, checked on
        the tokenizer pool: the grammar engine's first import takes seconds."""
        input_processor = getattr(self.engine, "input_processor", None)
        for one in params:
            if one.structured_outputs is not None and input_processor is not None:
                await self.off_loop(input_processor.check_structured_outputs, one)

    def tokenize_prompt(self, prompt: str | list[int], add_special_tokens: bool = True,
                        check_length: bool = True) -> list[int]:
        """Token ids of a text or token-id prompt; ClientError for an empty prompt or text
        without a tokenizer. ``check_length``: refuse a text certainly longer than the context
        before encoding it (``check_prompt_chars``); off when the request truncates."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ClientError("this server has no tokenizer (skip_tokenizer_init): send the "
                                  "prompt as token ids", param="prompt")
            if check_length:
                check_prompt_chars(self.tokenizer, prompt, self.max_model_len)
            token_ids = list(self.tokenizer.encode(prompt, add_special_tokens=add_special_tokens))
        else:
            token_ids = list(prompt)
        if not token_ids:
            raise ClientError("the prompt is empty", param="prompt")
        return token_ids

    def decode(self, token_ids: Sequence[int]) -> str:
        return "" if self.tokenizer is None else self.tokenizer.decode(list(token_ids))

    def response_model(self, request) -> str:
        """The ``model`` a response names: the LoRA adapter the request selected (vLLM echoes
        it), else the served model name."""
        if self.models is not None and request.model and request.model != self.served_model_name:
            return request.model
        return self.served_model_name

    def resolve_model(self, requested: str | None):
        """The LoRARequest a request's ``model`` names, None for the base model;
        ModelNotFoundError (404) for any other name."""
        if self.models is None:
            check_model(requested, self.served_model_name)
            return None
        return self.models.resolve(requested)

    def generate(self, request_id: str, prompts: list[PromptState],
                 params: list[SamplingParams], priority: int, lora_request=None
                 ) -> AsyncIterator[tuple[int, RequestOutput]]:
        """(prompt index, delta RequestOutput) pairs of all prompts, in arrival order. Closing
        the iterator aborts every prompt's request. ``params`` are final (built once by the
        request, with ``output_kind='delta'``); the engine validates them."""
        streams = []
        for index, (prompt, prompt_params) in enumerate(zip(prompts, params)):
            engine_id = request_id if len(prompts) == 1 else f"{request_id}-{index}"
            extra = {"lora_request": lora_request} if lora_request is not None else {}
            stream = self.engine.generate(prompt.token_ids, prompt_params, engine_id,
                                          priority=priority, **extra)
            streams.append(self._observed(stream))
        return merge_streams(streams)

    async def _observed(self, stream: AsyncIterator[RequestOutput]
                        ) -> AsyncIterator[RequestOutput]:
        """``stream`` unchanged; its token counts and timings go to the metrics. Closing this
        iterator closes ``stream`` (which aborts the engine request)."""
        engine_index_of = getattr(self.engine, "engine_index_of", None)
        tracker = (_RequestTracker(self.metrics, engine_index_of)
                   if self.metrics is not None else None)
        try:
            async for output in stream:
                if tracker is not None:
                    tracker.observe(output)
                yield output
        finally:
            await _close(stream)

    async def start(self, stream: AsyncIterator, request_id: str
                    ) -> tuple[tuple[int, RequestOutput] | None, ErrorResponse | None]:
        """Wait for the first item of ``stream`` so that a request the engine rejects gets an
        HTTP error status instead of a failed 200 stream: (first item or None at the end,
        None) or (None, the error body), with ``stream`` closed on error."""
        try:
            return await anext(stream), None
        except StopAsyncIteration:
            return None, None
        except Exception as error:
            await _close(stream)
            return None, self.error_body(error, request_id)

    async def collect(self, request_id: str, prompts: list[PromptState],
                      stream: AsyncIterator[tuple[int, RequestOutput]]) -> ErrorResponse | None:
        """Read ``stream`` (from ``generate``) to its end into ``prompts``: every choice's
        text, tokens, logprobs and finish, and the prompt logprobs. Returns the error body if
        it fails, else None; ``stream`` is closed either way."""
        try:
            async for prompt_index, output in stream:
                prompt = prompts[prompt_index]
                prompt.take_prompt_logprobs(output)
                for completion in output.outputs:
                    prompt.choices[completion.index].add(completion)
        except Exception as error:
            return self.error_body(error, request_id)
        finally:
            await _close(stream)
        return None

    async def sse_stream(self, request_id: str, events: AsyncIterator[str],
                         stream: AsyncIterator) -> AsyncIterator[str]:
        """The body of a streamed response: ``events`` (built from ``stream``), an error event
        if they fail midway, then ``data: [DONE]``. Both iterators are closed however it ends;
        closing ``stream`` early aborts the engine request."""
        try:
            async for event in events:
                yield event
        except Exception as error:
            yield sse_event(self.error_body(error, request_id).model_dump_json())
        finally:
            await _close(events)
            await _close(stream)
        yield SSE_DONE

    def usage(self, prompts: list[PromptState]) -> UsageInfo:
        prompt_tokens = sum(len(prompt.token_ids) for prompt in prompts)
        completion_tokens = sum(len(choice.token_ids) for prompt in prompts
                                for choice in prompt.choices)
        return UsageInfo(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                         total_tokens=prompt_tokens + completion_tokens)

    def decoded_token(self, token_id: int, decoded: str | None = None) -> str:
        if decoded is not None:
            return decoded
        if self.tokenizer is None:
            return f"token_id:{token_id}"
        return self.tokenizer.decode([token_id])

    def completion_logprobs(self, token_ids: Sequence[int],
                            positions: Sequence[PositionLogprobs | None],
                            initial_text_offset: int) -> CompletionLogProbs:
        """/v1/completions logprobs: per token its text, logprob, the position's logprobs
        (sampled token and top ones) keyed by text, and its character offset."""
        result = CompletionLogProbs()
        offset = initial_text_offset
        for token_id, position in zip(token_ids, _padded(positions, len(token_ids))):
            entry = position.get(token_id) if position else None
            token = self.decoded_token(token_id, entry.decoded_token if entry else None)
            result.tokens.append(token)
            result.text_offset.append(offset)
            offset += len(token)
            if entry is None:
                result.token_logprobs.append(None)
                result.top_logprobs.append(None)
                continue
            result.token_logprobs.append(max(entry.logprob, MIN_LOGPROB))
            result.top_logprobs.append({
                self.decoded_token(top_id, top.decoded_token): max(top.logprob, MIN_LOGPROB)
                for top_id, top in position.items()})
        return result

    def chat_logprobs(self, token_ids: Sequence[int], positions: Sequence[PositionLogprobs],
                      num_top_logprobs: int) -> ChatCompletionLogProbs:
        """/v1/chat/completions logprobs: per token its text, logprob, UTF-8 bytes and the
        ``num_top_logprobs`` most likely tokens by rank."""
        content = []
        for token_id, position in zip(token_ids, _padded(positions, len(token_ids))):
            entry = position.get(token_id) if position else None
            token = self.decoded_token(token_id, entry.decoded_token if entry else None)
            top = sorted(((top_id, top) for top_id, top in (position or {}).items()
                          if top.rank is not None and 1 <= top.rank <= num_top_logprobs),
                         key=lambda item: item[1].rank)
            content.append(ChatCompletionLogProbsContent(
                token=token, bytes=_utf8(token),
                logprob=MIN_LOGPROB if entry is None else max(entry.logprob, MIN_LOGPROB),
                top_logprobs=[ChatCompletionLogProb(
                    token=self.decoded_token(top_id, top.decoded_token),
                    logprob=max(top.logprob, MIN_LOGPROB),
                    bytes=_utf8(self.decoded_token(top_id, top.decoded_token)))
                    for top_id, top in top]))
        return ChatCompletionLogProbs(content=content)


class _RequestTracker:
    """Feeds one request's outputs to the metrics: prompt tokens once, generated tokens and
    the gap between token-bearing outputs as they come, the request's timings at the end; all
    under the replica that serves it (``engine_index_of(request_id)``; replica 0 without
    one)."""

    def __init__(self, metrics: Any, engine_index_of: Callable[[str], int] | None = None):
        self.metrics = metrics
        self.engine_index_of = engine_index_of
        self.prompt_counted = False
        self.last_token_time: float | None = None
        self.num_generated = 0

    def observe(self, output: RequestOutput) -> None:
        num_new = sum(len(completion.token_ids) for completion in output.outputs)
        now = time.monotonic()
        inter_token_latency = None
        if num_new:
            if self.last_token_time is not None:
                inter_token_latency = now - self.last_token_time
            self.last_token_time = now
        engine_index = (self.engine_index_of(output.request_id)
                        if self.engine_index_of is not None else 0)
        self.metrics.observe_tokens(
            num_prompt_tokens=0 if self.prompt_counted else len(output.prompt_token_ids),
            num_generation_tokens=num_new, inter_token_latency=inter_token_latency,
            engine_index=engine_index)
        self.prompt_counted = True
        self.num_generated += num_new
        if output.finished:
            self.metrics.observe_finished(output, num_generation_tokens=self.num_generated,
                                          engine_index=engine_index)


def _padded(positions: Sequence | None, length: int) -> list:
    positions = list(positions or ())
    return positions + [None] * (length - len(positions))


def _utf8(text: str) -> list[int]:
    return list(text.encode("utf-8", errors="replace"))


def new_prompt_states(prompts: list[tuple[str | None, list[int]]], n: int) -> list[PromptState]:
    """One PromptState per (text, token ids); choice indices run prompt by prompt."""
    return [PromptState(text, token_ids, [ChoiceState(prompt_index * n + i) for i in range(n)])
            for prompt_index, (text, token_ids) in enumerate(prompts)]


async def merge_streams(streams: list[AsyncIterator]) -> AsyncIterator[tuple[int, Any]]:
    """(stream index, item) from all ``streams`` as items arrive. An error in any stream is
    raised here; closing this iterator (or an error) closes every stream."""
    if len(streams) == 1:
        try:
            async for item in streams[0]:
                yield 0, item
        finally:
            await _close(streams[0])
        return
    queue: asyncio.Queue = asyncio.Queue()
    finished = object()

    async def pump(index: int, stream: AsyncIterator) -> None:
        try:
            async for item in stream:
                queue.put_nowait((index, item, None))
        except Exception as error:   # re-raised in the consumer
            queue.put_nowait((index, None, error))
        finally:
            await _close(stream)
            queue.put_nowait((index, finished, None))

    tasks = [asyncio.create_task(pump(index, stream)) for index, stream in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item, error = await queue.get()
            if error is not None:
                raise error
            if item is finished:
                remaining -= 1
                continue
            yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def chain_first(first: Any, stream: AsyncIterator) -> AsyncIterator:
    """``first`` (when not None) followed by the rest of ``stream``."""
    if first is not None:
        yield first
    async for item in stream:
        yield item


async def _close(stream: AsyncIterator) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()
