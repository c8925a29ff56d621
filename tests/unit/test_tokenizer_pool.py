"""--tokenizer-pool-size: with a pool, the handlers encode prompts and render chat templates on
its threads, off the event loop, with the same results as inline; without one, inline."""

from __future__ import annotations

import threading

from pagellm.entrypoints.openai.protocol import (ChatCompletionRequest, CompletionRequest,
                                                 ErrorResponse, TokenizeChatRequest,
                                                 TokenizeCompletionRequest)
from pagellm.entrypoints.openai.serving_chat import OpenAIServingChat
from pagellm.entrypoints.openai.serving_completion import OpenAIServingCompletion
from pagellm.entrypoints.openai.serving_engine import (TOKENIZER_THREAD_PREFIX,
                                                       make_tokenizer_pool)
from pagellm.entrypoints.openai.serving_tokenization import OpenAIServingTokenization
from tests.unit.test_openai_protocol import CharTokenizer, ScriptedEngine, run


class ThreadRecordingTokenizer(CharTokenizer):
    """CharTokenizer that notes the thread each encode / chat template call ran on."""

    def __init__(self):
        self.threads: list[str] = []

    def encode(self, text, add_special_tokens=True):
        self.threads.append(threading.current_thread().name)
        return super().encode(text, add_special_tokens)

    def apply_chat_template(self, conversation, chat_template, add_generation_prompt, tokenize,
                            **kwargs):
        self.threads.append(threading.current_thread().name)
        return super().apply_chat_template(conversation, chat_template, add_generation_prompt,
                                           tokenize, **kwargs)


def _engine() -> ScriptedEngine:
    engine = ScriptedEngine(replies=("ok",))
    engine.tokenizer = ThreadRecordingTokenizer()
    return engine


def _serve_all(engine, pool) -> list:
    """Completion (a batch of two), chat, /tokenize (text and chat) and an empty prompt."""
    completion = OpenAIServingCompletion(engine, tokenizer_pool=pool)
    chat = OpenAIServingChat(engine, tokenizer_pool=pool)
    tokenization = OpenAIServingTokenization(engine, tokenizer_pool=pool)
    messages = [{"role": "user", "content": "hi there"}]

    async def go():
        return [
            await completion.create_completion(
                CompletionRequest(prompt=["hello", "world"], max_tokens=2), request_id="r1"),
            await chat.create_chat_completion(
                ChatCompletionRequest(messages=messages, max_tokens=2), request_id="r2"),
            await tokenization.tokenize(TokenizeCompletionRequest(prompt="abc")),
            await tokenization.tokenize(TokenizeChatRequest(messages=messages)),
            await completion.create_completion(CompletionRequest(prompt="", max_tokens=2),
                                               request_id="r3"),
        ]
    return run(go())


def _comparable(results: list) -> list:
    dumped = [result.model_dump(exclude={"created"}) for result in results]
    for body in dumped:
        body.pop("created", None)
    return dumped


def test_pool_size_zero_means_inline():
    assert make_tokenizer_pool(0) is None
    engine = _engine()
    _serve_all(engine, None)
    threads = engine.tokenizer.threads
    assert len(threads) >= 5 and set(threads) == {threading.current_thread().name}


def test_pool_tokenizes_on_its_threads_with_identical_results():
    inline_engine, pooled_engine = _engine(), _engine()
    inline = _serve_all(inline_engine, None)
    pool = make_tokenizer_pool(2)
    try:
        pooled = _serve_all(pooled_engine, pool)
    finally:
        pool.shutdown()
    assert _comparable(pooled) == _comparable(inline)
    assert len(pooled_engine.tokenizer.threads) == len(inline_engine.tokenizer.threads) >= 5
    assert all(name.startswith(TOKENIZER_THREAD_PREFIX + "_")
               for name in pooled_engine.tokenizer.threads)
    empty = pooled[-1]
    assert isinstance(empty, ErrorResponse) and empty.error.code == 400
    assert empty.error.param == "prompt"
