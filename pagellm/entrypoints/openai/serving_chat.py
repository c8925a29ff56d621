"""POST /v1/chat/completions: messages rendered by the model's chat template, then generated
like a completion; the reply comes back as a ChatCompletionResponse, or as server-sent
``chat.completion.chunk`` events (the role first, then content deltas, the usage chunk when
asked for, ``data: [DONE]``), or as an ErrorResponse (HTTP status in ``error.code``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from pagellm.engine.tokenizer import check_prompt_chars, render_chat_template
from pagellm.entrypoints.openai.errors import check_model, sse_event
from pagellm.entrypoints.openai.protocol import (ChatCompletionLogProbs, ChatCompletionRequest,
                                                 ChatCompletionResponse,
                                                 ChatCompletionResponseChoice,
                                                 ChatCompletionStreamChoice,
                                                 ChatCompletionStreamResponse, ChatMessage,
                                                 DeltaMessage, ErrorResponse)
from pagellm.entrypoints.openai.serving_engine import (OpenAIServing, PromptState, chain_first,
                                                       check_template_request, new_prompt_states)
from pagellm.errors import ClientError
from pagellm.outputs import CompletionOutput, RequestOutput

_CHUNK = "chat.completion.chunk"


class OpenAIServingChat(OpenAIServing):
    request_id_prefix = "chatcmpl"
    engine_param_names = {"logprobs": "top_logprobs"}
    chat_template: str | None = None
    """The server's --chat-template; a request's own chat_template wins."""
    trust_request_chat_template: bool = False
    """--trust-request-chat-template: a request may send its own chat_template."""

    def render_prompt(self, request: ChatCompletionRequest) -> list[int]:
        """The prompt token ids of the conversation (run off the event loop); ClientError when
        it cannot be rendered, or its text certainly has more than max_model_len tokens."""
        if self.tokenizer is None:
            raise ClientError("chat needs a tokenizer; this server runs without one (use "
                              "/v1/completions with token ids)", param="messages")
        kwargs = check_template_request(request.chat_template, request.chat_template_kwargs,
                                        self.trust_request_chat_template)
        text = render_chat_template(self.tokenizer, request.message_dicts(),
                                    add_generation_prompt=request.add_generation_prompt,
                                    chat_template=request.chat_template or self.chat_template,
                                    continue_final_message=request.continue_final_message,
                                    **kwargs)
        check_prompt_chars(self.tokenizer, text, self.max_model_len, param="messages")
        return self.tokenizer.encode(text, add_special_tokens=False)

    async def create_chat_completion(
            self, request: ChatCompletionRequest, request_id: str | None = None
    ) -> ChatCompletionResponse | AsyncIterator[str] | ErrorResponse:
        """Run ``request``; ``request_id`` as in ``create_completion``."""
        request_id = self.new_request_id(request_id)
        try:
            check_model(request.model, self.served_model_name)
            request.check_supported()
            token_ids = await self.off_loop(self.render_prompt, request)
            params = request.to_sampling_params(self.max_model_len, len(token_ids),
                                                self.max_logprobs)
            await self.check_structured_outputs([params])
        except Exception as error:
            return self.error_body(error, request_id)
        states = new_prompt_states([(None, token_ids)], request.n)
        stream = self.generate(request_id, states, [params], request.priority)
        if not request.stream:
            return await self._full_response(request, request_id, states[0], stream)
        first, error = await self.start(stream, request_id)
        if error is not None:
            return error
        return self._stream(request, request_id, states[0], first, stream)

    @staticmethod
    def reply_role(request: ChatCompletionRequest) -> str:
        return "assistant" if request.add_generation_prompt else request.messages[-1].role

    def echo_text(self, request: ChatCompletionRequest) -> str:
        """With echo, the last message's text when it has the reply's role (the reply goes on
        from it), else ''."""
        last = request.messages[-1]
        if request.echo and last.role == self.reply_role(request) and isinstance(last.content, str):
            return last.content
        return ""

    def _logprobs(self, request: ChatCompletionRequest, token_ids: list[int],
                  positions: list) -> ChatCompletionLogProbs | None:
        if not request.logprobs:
            return None
        return self.chat_logprobs(token_ids, positions, request.top_logprobs or 0)

    async def _full_response(self, request: ChatCompletionRequest, request_id: str,
                             prompt: PromptState, stream: AsyncIterator
                             ) -> ChatCompletionResponse | ErrorResponse:
        error = await self.collect(request_id, [prompt], stream)
        if error is not None:
            return error
        role, echo = self.reply_role(request), self.echo_text(request)
        choices = [ChatCompletionResponseChoice(
            index=choice.index, message=ChatMessage(role=role, content=echo + choice.text),
            logprobs=self._logprobs(request, choice.token_ids, choice.logprobs),
            finish_reason=choice.finish_reason, stop_reason=choice.stop_reason)
            for choice in prompt.choices]
        return ChatCompletionResponse(id=request_id, model=self.served_model_name,
                                      choices=choices, usage=self.usage([prompt]))

    def _stream(self, request: ChatCompletionRequest, request_id: str, prompt: PromptState,
                first: tuple[int, RequestOutput] | None, stream: AsyncIterator
                ) -> AsyncIterator[str]:
        return self.sse_stream(request_id, self._events(request, request_id, prompt, first, stream),
                               stream)

    async def _events(self, request: ChatCompletionRequest, request_id: str, prompt: PromptState,
                      first: tuple[int, RequestOutput] | None, stream: AsyncIterator
                      ) -> AsyncIterator[str]:
        created = int(time.time())
        role, echo = self.reply_role(request), self.echo_text(request)
        for choice in prompt.choices:
            yield self._event(request_id, created, choice.index, DeltaMessage(role=role,
                                                                              content=""))
            if echo:
                yield self._event(request_id, created, choice.index, DeltaMessage(content=echo))
            choice.started = True
        async for _, output in chain_first(first, stream):
            for completion in output.outputs:
                event = self._delta_event(request, request_id, created, prompt, completion)
                if event is not None:
                    yield event
        if request.include_usage:
            usage_chunk = ChatCompletionStreamResponse(
                id=request_id, object=_CHUNK, created=created, model=self.served_model_name,
                choices=[], usage=self.usage([prompt]))
            yield sse_event(usage_chunk.model_dump_json(exclude_unset=True))

    def _delta_event(self, request: ChatCompletionRequest, request_id: str, created: int,
                     prompt: PromptState, delta: CompletionOutput) -> str | None:
        choice = prompt.choices[delta.index]
        if not choice.take_stream_delta(delta):
            return None
        return self._event(request_id, created, choice.index, DeltaMessage(content=delta.text),
                           self._logprobs(request, delta.token_ids, delta.logprobs or []),
                           delta.finish_reason, delta.stop_reason)

    def _event(self, request_id: str, created: int, index: int, delta: DeltaMessage,
               logprobs: ChatCompletionLogProbs | None = None, finish_reason: str | None = None,
               stop_reason: int | str | None = None) -> str:
        chunk = ChatCompletionStreamResponse(
            id=request_id, object=_CHUNK, created=created, model=self.served_model_name,
            choices=[ChatCompletionStreamChoice(index=index, delta=delta, logprobs=logprobs,
                                                finish_reason=finish_reason,
                                                stop_reason=stop_reason)])
        return sse_event(chunk.model_dump_json(exclude_unset=True))
