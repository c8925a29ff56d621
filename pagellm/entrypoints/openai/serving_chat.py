"""POST /v1/chat/completions: messages (and tools) rendered by the model's chat template, then
generated like a completion; the reply comes back as a ChatCompletionResponse, or as server-sent
``chat.completion.chunk`` events (the role first, then content / reasoning / tool call deltas,
the usage chunk when asked for, ``data: [DONE]``), or as an ErrorResponse (HTTP status in
``error.code``). Reasoning and tool calls are parsed out of the text by ``chat_output``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from pagellm.engine.tokenizer import check_prompt_chars, render_chat_template
from pagellm.entrypoints.openai.chat_output import ChatOutputOptions, ChatOutputParser
from pagellm.entrypoints.openai.errors import sse_event
from pagellm.entrypoints.openai.protocol import (ChatCompletionLogProbs, ChatCompletionRequest,
                                                 ChatCompletionResponse,
                                                 ChatCompletionResponseChoice,
                                                 ChatCompletionStreamChoice,
                                                 ChatCompletionStreamResponse, ChatMessage,
                                                 DeltaMessage, ErrorResponse)
from pagellm.entrypoints.openai.serving_engine import (OpenAIServing, PromptState, chain_first,
                                                       check_template_request, new_prompt_states)
from pagellm.entrypoints.openai.tool_parsers import ToolParser
from pagellm.errors import ClientError
from pagellm.outputs import CompletionOutput, RequestOutput
from pagellm.reasoning import ReasoningParser

_CHUNK = "chat.completion.chunk"


class OpenAIServingChat(OpenAIServing):
    request_id_prefix = "chatcmpl"
    engine_param_names = {"logprobs": "top_logprobs"}
    chat_template: str | None = None
    """The server's --chat-template; a request's own chat_template wins."""
    trust_request_chat_template: bool = False
    """--trust-request-chat-template: a request may send its own chat_template."""
    enable_auto_tools: bool = False
    """--enable-auto-tool-choice: tool_choice 'auto' parses tool calls out of the text."""
    tool_parser: type[ToolParser] | None = None
    """--tool-call-parser's class."""
    reasoning_parser: type[ReasoningParser] | None = None
    """--reasoning-parser's class."""

    def render_prompt(self, request: ChatCompletionRequest) -> list[int]:
        """The prompt token ids of the conversation (run off the event loop)."""
        return self.render_chat(request)[1]

    def render_chat(self, request: ChatCompletionRequest) -> tuple[str, list[int]]:
        """The prompt text and token ids of the conversation (run off the event loop);
        ClientError when it cannot be rendered, or its text certainly has more than
        max_model_len tokens."""
        if self.tokenizer is None:
            raise ClientError("chat needs a tokenizer; this server runs without one (use "
                              "/v1/completions with token ids)", param="messages")
        kwargs = check_template_request(request.chat_template, request.chat_template_kwargs,
                                        self.trust_request_chat_template)
        text = render_chat_template(self.tokenizer, request.message_dicts(),
                                    add_generation_prompt=request.add_generation_prompt,
                                    chat_template=request.chat_template or self.chat_template,
                                    continue_final_message=request.continue_final_message,
                                    tools=request.tool_dicts(), **kwargs)
        check_prompt_chars(self.tokenizer, text, self.max_model_len, param="messages")
        return text, self.tokenizer.encode(text, add_special_tokens=False)

    def output_options(self, request: ChatCompletionRequest, prompt_text: str
                       ) -> ChatOutputOptions:
        """How the request's choices are parsed. ClientError for tool_choice 'auto' on a server
        without --enable-auto-tool-choice and --tool-call-parser (vLLM's rule). The tool
        parser may need special tokens kept in the text (``request`` is changed then)."""
        tool_choice = request.effective_tool_choice()
        if tool_choice == "auto":
            if not (self.enable_auto_tools and self.tool_parser is not None):
                raise ClientError('"auto" tool choice requires --enable-auto-tool-choice and '
                                  "--tool-call-parser to be set", param="tool_choice")
            if not self.tool_parser.skip_special_tokens:
                request.skip_special_tokens = False
        return ChatOutputOptions(
            tool_choice=tool_choice, tool_parser=self.tool_parser,
            reasoning_parser=self.reasoning_parser, prompt_text=prompt_text,
            chat_template_kwargs=request.chat_template_kwargs or {},
            include_reasoning=request.include_reasoning,
            parallel_tool_calls=request.parallel_tool_calls)

    async def create_chat_completion(
            self, request: ChatCompletionRequest, request_id: str | None = None
    ) -> ChatCompletionResponse | AsyncIterator[str] | ErrorResponse:
        """Run ``request``; ``request_id`` as in ``create_completion``."""
        request_id = self.new_request_id(request_id)
        try:
            lora_request = self.resolve_model(request.model)
            request.check_supported()
            prompt_text, token_ids = await self.off_loop(self.render_chat, request)
            options = self.output_options(request, prompt_text)
            params = request.to_sampling_params(self.max_model_len, len(token_ids),
                                                self.max_logprobs)
            await self._check_constraint(request, params)
            if params.structured_outputs is not None:
                # The constraint holds from the first token, so the output has no reasoning
                # section: a reasoning parser would file the constrained JSON as reasoning
                # (deepseek_r1 treats all text before </think> so) and leave the tool call's
                # arguments or the content empty.
                options.reasoning_parser = None
        except Exception as error:
            return self.error_body(error, request_id)
        states = new_prompt_states([(None, token_ids)], request.n)
        stream = self.generate(request_id, states, [params], request.priority, lora_request)
        if not request.stream:
            return await self._full_response(request, request_id, states[0], stream, options)
        first, error = await self.start(stream, request_id)
        if error is not None:
            return error
        return self._stream(request, request_id, states[0], first, stream, options)

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

    async def _check_constraint(self, request, params) -> None:
        """``check_structured_outputs``; when the constraint comes from the tools
        (tool_choice "required" or named) a bad schema is blamed on ``tools``."""
        from_tools = (request.tools and request.structured_outputs is None
                      and request.response_format is None
                      and not any(getattr(request, f"guided_{kind}") is not None
                                  for kind in ("json", "regex", "choice", "grammar")))
        try:
            await self.check_structured_outputs([params])
        except ClientError as error:
            if not from_tools or error.param != "structured_outputs":
                raise
            message = str(error).replace("invalid structured outputs json",
                                         "invalid function parameters schema in tools")
            raise ClientError(message, param="tools") from None

    async def _full_response(self, request: ChatCompletionRequest, request_id: str,
                             prompt: PromptState, stream: AsyncIterator,
                             options: ChatOutputOptions) -> ChatCompletionResponse | ErrorResponse:
        error = await self.collect(request_id, [prompt], stream)
        if error is not None:
            return error
        role, echo = self.reply_role(request), self.echo_text(request)
        choices = []
        for choice in prompt.choices:
            message, finish_reason = ChatMessage(role=role, content=echo + choice.text), \
                choice.finish_reason
            if options.parses:
                message, finish_reason = _parsed_message(role, echo, choice.text, options,
                                                         choice.finish_reason)
            choices.append(ChatCompletionResponseChoice(
                index=choice.index, message=message,
                logprobs=self._logprobs(request, choice.token_ids, choice.logprobs),
                finish_reason=finish_reason, stop_reason=choice.stop_reason))
        return ChatCompletionResponse(id=request_id, model=self.response_model(request),
                                      choices=choices, usage=self.usage([prompt]))

    def _stream(self, request: ChatCompletionRequest, request_id: str, prompt: PromptState,
                first: tuple[int, RequestOutput] | None, stream: AsyncIterator,
                options: ChatOutputOptions) -> AsyncIterator[str]:
        events = self._events(request, request_id, prompt, first, stream, options)
        return self.sse_stream(request_id, events, stream)

    async def _events(self, request: ChatCompletionRequest, request_id: str, prompt: PromptState,
                      first: tuple[int, RequestOutput] | None, stream: AsyncIterator,
                      options: ChatOutputOptions) -> AsyncIterator[str]:
        created = int(time.time())
        role, echo = self.reply_role(request), self.echo_text(request)
        parsers = {choice.index: ChatOutputParser(options) for choice in prompt.choices} \
            if options.parses else {}
        for choice in prompt.choices:
            yield self._event(request, request_id, created, choice.index,
                              DeltaMessage(role=role, content=""))
            if echo:
                yield self._event(request, request_id, created, choice.index,
                                  DeltaMessage(content=echo))
            choice.started = True
        async for _, output in chain_first(first, stream):
            for completion in output.outputs:
                for event in self._delta_events(request, request_id, created, prompt,
                                                completion, parsers.get(completion.index)):
                    yield event
        if request.include_usage:
            usage_chunk = ChatCompletionStreamResponse(
                id=request_id, object=_CHUNK, created=created, model=self.response_model(request),
                choices=[], usage=self.usage([prompt]))
            yield sse_event(usage_chunk.model_dump_json(exclude_unset=True))

    def _delta_events(self, request: ChatCompletionRequest, request_id: str, created: int,
                      prompt: PromptState, delta: CompletionOutput,
                      parser: ChatOutputParser | None) -> list[str]:
        """The events of one engine delta: its text as parsed (one content delta without a
        parser), the logprobs on the first event and the finish on the last."""
        choice = prompt.choices[delta.index]
        if not choice.take_stream_delta(delta):
            return []
        logprobs = self._logprobs(request, delta.token_ids, delta.logprobs or [])
        finish_reason = delta.finish_reason
        if parser is None:
            messages = [DeltaMessage(content=delta.text)]
        else:
            messages = parser.feed(delta.text, final=delta.finish_reason is not None)
            finish_reason = parser.finish_reason(delta.finish_reason)
        if not messages and (logprobs is not None or finish_reason is not None):
            messages = [DeltaMessage()]
        last = len(messages) - 1
        return [self._event(request, request_id, created, choice.index, message,
                            logprobs if index == 0 else None,
                            finish_reason if index == last else None,
                            delta.stop_reason if index == last else None)
                for index, message in enumerate(messages)]

    def _event(self, request: ChatCompletionRequest, request_id: str, created: int, index: int,
               delta: DeltaMessage, logprobs: ChatCompletionLogProbs | None = None,
               finish_reason: str | None = None, stop_reason: int | str | None = None) -> str:
        chunk = ChatCompletionStreamResponse(
            id=request_id, object=_CHUNK, created=created, model=self.response_model(request),
            choices=[ChatCompletionStreamChoice(index=index, delta=delta, logprobs=logprobs,
                                                finish_reason=finish_reason,
                                                stop_reason=stop_reason)])
        return sse_event(chunk.model_dump_json(exclude_unset=True))


def _parsed_message(role: str, echo: str, text: str, options: ChatOutputOptions,
                    engine_finish_reason: str | None) -> tuple[ChatMessage, str | None]:
    """The full message of one choice's ``text`` parsed as ``options`` say, and its
    finish_reason."""
    parser = ChatOutputParser(options)
    parser.feed(text, final=True)
    reasoning = parser.reasoning or None
    message = ChatMessage(role=role, content=(echo + parser.content) or None,
                          reasoning_content=reasoning, reasoning=reasoning,
                          tool_calls=parser.tool_calls)
    return message, parser.finish_reason(engine_finish_reason)
