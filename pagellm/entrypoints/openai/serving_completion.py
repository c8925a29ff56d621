"""POST /v1/completions: a validated CompletionRequest -> a CompletionResponse, or an async
iterator of server-sent events ending with ``data: [DONE]``, or an ErrorResponse.

Each prompt of a batch is one engine request with n choices; choice ``i`` of prompt ``p`` has
index ``p * n + i``. Errors before the first output become an ErrorResponse (HTTP status in
``error.code``); an error mid-stream is sent as one ``data: {"error": ...}`` event.
"""

from __future__ import annotations

import time
from json.encoder import encode_basestring
from collections.abc import AsyncIterator

from pagellm.entrypoints.openai.errors import error_from_exception, sse_event
from pagellm.entrypoints.openai.protocol import (CompletionLogProbs, CompletionRequest,
                                                 CompletionResponse, CompletionResponseChoice,
                                                 CompletionStreamResponse, ErrorResponse,
                                                 PromptLogprob)
from pagellm.entrypoints.openai.serving_engine import (MIN_LOGPROB, ChoiceState, OpenAIServing,
                                                       PromptState, chain_first,
                                                       new_prompt_states)
from pagellm.errors import ClientError
from pagellm.outputs import CompletionOutput, RequestOutput


class OpenAIServingCompletion(OpenAIServing):
    request_id_prefix = "cmpl"

    async def create_completion(self, request: CompletionRequest, request_id: str | None = None
                                ) -> CompletionResponse | AsyncIterator[str] | ErrorResponse:
        """Run ``request``. ``request_id``: the caller's id (X-Request-Id), else a fresh one.
        Returns an iterator of SSE strings when ``request.stream``."""
        request_id = self.new_request_id(request_id)
        try:
            lora_request = self.resolve_model(request.model)
            prompts = await self.off_loop(self._tokenize_prompts, request)
            # Without a tokenizer (skip_tokenizer_init) the server streams token counts with
            # empty text, as vLLM does; stop strings still need one and get a 400.
            params = [request.to_sampling_params(self.max_model_len, len(token_ids),
                                                 detokenize=self.tokenizer is not None)
                      for _, token_ids in prompts]
            await self.check_structured_outputs(params[:1])   # the same constraint for all
            if request.echo and self.tokenizer is None:
                raise ClientError("echo needs a tokenizer; this server runs without one",
                                  param="echo")
            if request.stop and self.tokenizer is None:
                raise ClientError("stop strings need a tokenizer; this server runs without one "
                                  "(skip_tokenizer_init): use stop_token_ids", param="stop")
        except Exception as error:
            return error_from_exception(error, request_id)
        states = new_prompt_states(prompts, request.n)
        stream = self.generate(request_id, states, params, request.priority, lora_request)
        if not request.stream:
            return await self._full_response(request, request_id, states, stream)
        first, error = await self.start(stream, request_id)
        if error is not None:
            return error
        return self._stream(request, request_id, states, first, stream)

    def _tokenize_prompts(self, request: CompletionRequest
                          ) -> list[tuple[str | None, list[int]]]:
        """(text or None, token ids) of each prompt, in one go so that a batch costs one hop
        to the tokenizer pool; truncated when the request asks (the text is then None: the
        prompt the model sees is no longer that text)."""
        prompts = []
        for prompt in request.prompts():
            token_ids = self.tokenize_prompt(prompt, request.add_special_tokens,
                                             request.truncate_prompt_tokens is None)
            truncated = request.truncate(token_ids, self.max_model_len)
            text = prompt if isinstance(prompt, str) and truncated is token_ids else None
            prompts.append((text, truncated))
        return prompts

    async def _full_response(self, request: CompletionRequest, request_id: str,
                             states: list[PromptState], stream: AsyncIterator
                             ) -> CompletionResponse | ErrorResponse:
        error = await self.collect(request_id, states, stream)
        if error is not None:
            return error
        choices = []
        for prompt in states:
            for choice in prompt.choices:
                text, logprobs = self._choice_text(request, prompt, choice, choice.text,
                                                   choice.token_ids, choice.logprobs, True)
                choices.append(CompletionResponseChoice(
                    index=choice.index, text=text, logprobs=logprobs,
                    finish_reason=choice.finish_reason, stop_reason=choice.stop_reason,
                    prompt_logprobs=self._prompt_logprobs(request, prompt)))
        return CompletionResponse(id=request_id, model=self.response_model(request), choices=choices,
                                  usage=self.usage(states))

    def _prompt_logprobs(self, request: CompletionRequest, prompt: PromptState
                         ) -> list[dict[int, PromptLogprob] | None] | None:
        """The prompt_logprobs field of a choice: each prompt position's token id -> logprob
        (clamped like the other logprobs), when the request asked for them."""
        if request.prompt_logprobs is None:
            return None
        positions = list(prompt.prompt_logprobs or ())
        positions += [None] * (len(prompt.token_ids) - len(positions))
        return [None if position is None else {
            token_id: PromptLogprob(logprob=max(entry.logprob, MIN_LOGPROB), rank=entry.rank,
                                    decoded_token=self.decoded_token(token_id,
                                                                     entry.decoded_token))
            for token_id, entry in position.items()} for position in positions]

    def _choice_text(self, request: CompletionRequest, prompt: PromptState, choice: ChoiceState,
                     text: str, token_ids: list[int], positions: list, with_echo: bool
                     ) -> tuple[str, CompletionLogProbs | None]:
        """The text (echoed prompt first when asked) and its logprobs from
        ``choice.num_chars_sent`` on."""
        if with_echo and request.echo:
            prompt_text = prompt.text if prompt.text is not None else self.decode(prompt.token_ids)
            text = prompt_text + text
            prompt_positions = list(prompt.prompt_logprobs or ())
            prompt_positions += [None] * (len(prompt.token_ids) - len(prompt_positions))
            token_ids = prompt.token_ids + list(token_ids)
            positions = prompt_positions + list(positions)
        logprobs = None
        if request.logprobs is not None:
            logprobs = self.completion_logprobs(token_ids, positions, choice.num_chars_sent)
        return text, logprobs

    def _stream(self, request: CompletionRequest, request_id: str, states: list[PromptState],
                first: tuple[int, RequestOutput] | None, stream: AsyncIterator
                ) -> AsyncIterator[str]:
        return self.sse_stream(request_id, self._events(request, request_id, states, first, stream),
                               stream)

    async def _events(self, request: CompletionRequest, request_id: str,
                      states: list[PromptState], first: tuple[int, RequestOutput] | None,
                      stream: AsyncIterator) -> AsyncIterator[str]:
        created = int(time.time())
        head = StreamChunkJSON(request_id, created, self.response_model(request))
        async for prompt_index, output in chain_first(first, stream):
            prompt = states[prompt_index]
            prompt.take_prompt_logprobs(output)
            chunks = [self._chunk(request, head, states, prompt, piece)
                      for completion in output.outputs for piece in self._pieces(completion)]
            # one write for all of an output's events (several when the reader fell behind)
            events = "".join(chunk for chunk in chunks if chunk is not None)
            if events:
                yield events
        if request.include_usage:
            usage_chunk = CompletionStreamResponse(
                id=request_id, created=created, model=self.response_model(request), choices=[],
                usage=self.usage(states))
            yield sse_event(usage_chunk.model_dump_json())

    def _pieces(self, delta: CompletionOutput) -> list[CompletionOutput]:
        """``delta`` as the deltas of its events. Without a tokenizer the text is empty and
        clients count tokens by events, so a delta of several tokens (the engine merged
        steps its reader had not taken yet) is sent as one event per token, as if read step
        by step; with text, one event carries them all (vLLM's behaviour)."""
        if self.tokenizer is not None or len(delta.token_ids) <= 1:
            return [delta]
        last = len(delta.token_ids) - 1
        return [CompletionOutput(
            delta.index, delta.text if position == last else "", [token_id],
            delta.cumulative_logprob,
            delta.logprobs[position:position + 1] if delta.logprobs is not None else None,
            delta.finish_reason if position == last else None,
            delta.stop_reason if position == last else None)
            for position, token_id in enumerate(delta.token_ids)]

    def _chunk(self, request: CompletionRequest, head: "StreamChunkJSON",
               states: list[PromptState], prompt: PromptState, delta: CompletionOutput
               ) -> str | None:
        """The event for one choice's delta, or None when there is nothing to send."""
        choice = prompt.choices[delta.index]
        if not choice.take_stream_delta(delta):
            return None
        text, logprobs = self._choice_text(request, prompt, choice, delta.text, delta.token_ids,
                                           delta.logprobs or [], not choice.started)
        choice.started = True
        choice.num_chars_sent += len(text)
        if logprobs is None and not request.continuous_usage:
            plain = head.render(choice.index, text, delta.finish_reason, delta.stop_reason)
            if plain is not None:
                return sse_event(plain)
        chunk = CompletionStreamResponse(
            id=head.request_id, created=head.created, model=head.model,
            choices=[CompletionResponseChoice(index=choice.index, text=text, logprobs=logprobs,
                                              finish_reason=delta.finish_reason,
                                              stop_reason=delta.stop_reason)],
            usage=self.usage(states) if request.continuous_usage else None)
        return sse_event(chunk.model_dump_json())


class StreamChunkJSON:
    """A streamed completion chunk without logprobs or usage as JSON, byte for byte what
    ``CompletionStreamResponse(...).model_dump_json()`` gives (a test compares them), from a
    head rendered once per request: the pydantic build and dump cost about 15 µs a chunk on
    the dev CPU, this about 2. Strings use the stdlib's JSON string encoder, which escapes
    exactly as pydantic does (quote, backslash, control characters; non-ASCII kept)."""

    __slots__ = ("request_id", "created", "model", "_head")

    def __init__(self, request_id: str, created: int, model: str):
        self.request_id, self.created, self.model = request_id, created, model
        self._head = (f'{{"id":{encode_basestring(request_id)},"object":"text_completion",'
                      f'"created":{created},"model":{encode_basestring(model)},'
                      f'"choices":[{{"index":')

    def render(self, index: int, text: str, finish_reason: str | None,
               stop_reason: int | str | None) -> str | None:
        """The chunk of one choice's ``text``; None for a value outside the plain types
        (the caller then builds it with pydantic)."""
        finish = _plain_json(finish_reason)
        stop = _plain_json(stop_reason)
        if finish is None or stop is None or type(index) is not int:
            return None
        return (f'{self._head}{index},"text":{encode_basestring(text)},"logprobs":null,'
                f'"finish_reason":{finish},"stop_reason":{stop},"prompt_logprobs":null}}],'
                f'"usage":null}}')


def _plain_json(value: int | str | None) -> str | None:
    """JSON of None, an int or a str; None for any other type."""
    if value is None:
        return "null"
    if type(value) is str:
        return encode_basestring(value)
    if type(value) is int:
        return str(value)
    return None
