"""POST /tokenize and /detokenize (vLLM's extensions): the server's tokenizer and chat template
without generating.

As in vLLM, /tokenize returns the count of a prompt longer than the context (with
``max_model_len``, so the client can compare), but a text that certainly has more than
``max_model_len`` tokens is refused before it is tokenized, with the same 400 as completions
and chat (``check_prompt_chars``): tokenizing megabytes would be unbounded work."""

from __future__ import annotations

from pagellm.engine.tokenizer import check_prompt_chars, render_chat_template
from pagellm.entrypoints.openai.errors import error_from_exception
from pagellm.entrypoints.openai.protocol import (DetokenizeRequest, DetokenizeResponse,
                                                 ErrorResponse, TokenizeChatRequest,
                                                 TokenizeCompletionRequest, TokenizeResponse)
from pagellm.entrypoints.openai.serving_engine import OpenAIServing, check_template_request
from pagellm.errors import ClientError


class OpenAIServingTokenization(OpenAIServing):
    request_id_prefix = "tokn"
    chat_template: str | None = None
    """The server's --chat-template (the one chat requests use); a request's own wins."""
    trust_request_chat_template: bool = False
    """--trust-request-chat-template: a request may send its own chat_template."""

    def _checked_tokenizer(self, model: str | None):
        self.resolve_model(model)           # an adapter shares the base model's tokenizer
        if self.tokenizer is None:
            raise ClientError("this server has no tokenizer (skip_tokenizer_init)",
                              param="model")
        return self.tokenizer

    async def tokenize(self, request: TokenizeCompletionRequest | TokenizeChatRequest
                       ) -> TokenizeResponse | ErrorResponse:
        """Token ids of a prompt, or of messages under the chat template."""
        try:
            tokenizer = self._checked_tokenizer(request.model)
            if isinstance(request, TokenizeChatRequest):
                check_template_request(request.chat_template, None,
                                       self.trust_request_chat_template)
            token_ids = await self.off_loop(_token_ids, tokenizer, request, self.chat_template,
                                            self.max_model_len)
        except Exception as error:
            return error_from_exception(error)
        token_strs = None
        if request.return_token_strs:
            token_strs = tokenizer.convert_ids_to_tokens(list(token_ids))
        return TokenizeResponse(count=len(token_ids), max_model_len=self.max_model_len,
                                tokens=list(token_ids), token_strs=token_strs)

    async def detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse | ErrorResponse:
        """The text of token ids; ClientError for an id outside the vocabulary."""
        try:
            tokenizer = self._checked_tokenizer(request.model)
            text = await self.off_loop(_decode, tokenizer, request.tokens)
        except Exception as error:
            return error_from_exception(error)
        return DetokenizeResponse(prompt=text)


def _decode(tokenizer, token_ids: list[int]) -> str:
    vocab_size = len(tokenizer)
    bad = [token_id for token_id in token_ids if token_id >= vocab_size]
    if bad:
        raise ClientError(f"token id {bad[0]} is outside the vocabulary [0, {vocab_size})",
                          param="tokens")
    return tokenizer.decode(list(token_ids))


def _token_ids(tokenizer, request: TokenizeCompletionRequest | TokenizeChatRequest,
               server_template: str | None, max_model_len: int) -> list[int]:
    """The request's token ids; ClientError when its text certainly has more than
    ``max_model_len`` tokens (checked before encoding)."""
    if isinstance(request, TokenizeChatRequest):
        messages = [message.model_dump(exclude_none=True) for message in request.messages]
        text = render_chat_template(tokenizer, messages, request.add_generation_prompt,
                                    request.chat_template or server_template,
                                    request.continue_final_message)
        check_prompt_chars(tokenizer, text, max_model_len, param="messages")
        return tokenizer.encode(text, add_special_tokens=False)
    check_prompt_chars(tokenizer, request.prompt, max_model_len)
    return tokenizer.encode(request.prompt, add_special_tokens=request.add_special_tokens)
