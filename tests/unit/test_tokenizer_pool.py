"""--tokenizer-pool-size: the handlers encode prompts, render chat templates and decode on the
pool's threads, never on the event loop; without a pool, on the loop's default executor; the
default config has a pool."""

from __future__ import annotations

import threading

import pytest

from pagellm.config.model import ModelConfig
from pagellm.entrypoints.openai.protocol import (ChatCompletionRequest, CompletionRequest,
                                                 DetokenizeRequest, ErrorResponse,
                                                 TokenizeChatRequest, TokenizeCompletionRequest)
from pagellm.entrypoints.openai.serving_chat import OpenAIServingChat
from pagellm.entrypoints.openai.serving_completion import OpenAIServingCompletion
from pagellm.entrypoints.openai.serving_engine import (TOKENIZER_THREAD_PREFIX,
                                                       make_tokenizer_pool)
from pagellm.entrypoints.openai.serving_tokenization import OpenAIServingTokenization
from tests.unit.test_openai_protocol import CharTokenizer, ScriptedEngine, run


class ThreadRecordingTokenizer(CharTokenizer):
    """CharTokenizer that notes the thread each encode, decode and chat template render (its
    special_tokens_map is read once per render) ran on."""

    def __init__(self):
        self.threads: list[str] = []

    @property
    def special_tokens_map(self) -> dict:
        self.threads.append(threading.current_thread().name)
        return {}

    def encode(self, text, add_special_tokens=True):
        self.threads.append(threading.current_thread().name)
        return super().encode(text, add_special_tokens)

    def decode(self, token_ids):
        self.threads.append(threading.current_thread().name)
        return super().decode(token_ids)


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
            await tokenization.detokenize(DetokenizeRequest(tokens=[104, 105])),
        ]
    return run(go())


def _comparable(results: list) -> list:
    dumped = [result.model_dump(exclude={"created"}) for result in results]
    for body in dumped:
        body.pop("created", None)
    return dumped


def test_without_a_pool_nothing_runs_on_the_event_loop_thread():
    engine = _engine()
    _serve_all(engine, None)
    threads = engine.tokenizer.threads
    # 2 completion prompts, chat render + encode, /tokenize text, /tokenize chat render +
    # encode, the empty prompt, /detokenize (the ScriptedEngine decodes nothing itself)
    assert len(threads) == 9
    assert threading.current_thread().name not in threads


def test_default_config_tokenizes_off_the_loop_and_zero_is_refused():
    assert ModelConfig().tokenizer_pool_size >= 1
    with pytest.raises(ValueError, match="tokenizer_pool_size"):
        ModelConfig(tokenizer_pool_size=0)
    with pytest.raises(ValueError):
        make_tokenizer_pool(0)


def test_pool_tokenizes_on_its_threads_with_identical_results():
    inline_engine, pooled_engine = _engine(), _engine()
    inline = _serve_all(inline_engine, None)     # on the default executor
    pool = make_tokenizer_pool(2)
    try:
        pooled = _serve_all(pooled_engine, pool)
    finally:
        pool.shutdown()
    assert _comparable(pooled) == _comparable(inline)
    assert len(pooled_engine.tokenizer.threads) == len(inline_engine.tokenizer.threads) == 9
    assert all(name.startswith(TOKENIZER_THREAD_PREFIX + "_")
               for name in pooled_engine.tokenizer.threads)
    empty = pooled[-2]
    assert isinstance(empty, ErrorResponse) and empty.error.code == 400
    assert empty.error.param == "prompt"
