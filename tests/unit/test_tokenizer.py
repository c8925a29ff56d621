"""Tokenizer loading (HF directory, .gguf with its conversion cache), chat templates, EOS ids."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from pagellm.engine.tokenizer import (TOKENIZER_CACHE_DIR_NAME, apply_chat_template,
                                      get_eos_token_ids, gguf_tokenizer_cache_dir, load_tokenizer,
                                      render_chat_template)
from pagellm.errors import ClientError
from pagellm.models.default_model import resolve_model_path

SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    return Path(resolve_model_path("default"))


@pytest.fixture(scope="module")
def smollm2(gguf_path):
    return load_tokenizer(gguf_path)


@pytest.fixture
def hf_dir(smollm2, tmp_path) -> Path:
    """A Hugging Face style directory holding the SmolLM2 tokenizer."""
    smollm2.save_pretrained(str(tmp_path))
    return tmp_path


def test_gguf_tokenizer_matches_the_model(smollm2):
    assert smollm2.is_fast
    assert len(smollm2) == 49152
    assert smollm2.eos_token == "<|im_end|>"
    assert smollm2.encode("Hello world", add_special_tokens=False) == [19556, 905]


def test_gguf_tokenizer_is_cached_beside_the_file(gguf_path, smollm2):
    cache = gguf_tokenizer_cache_dir(gguf_path)
    assert cache.parent == gguf_path.parent / TOKENIZER_CACHE_DIR_NAME
    assert (cache / "tokenizer.json").is_file()
    started = time.perf_counter()
    reloaded = load_tokenizer(gguf_path)
    assert time.perf_counter() - started < 3.0  # a conversion takes several seconds
    text = "Grüße 😀 <|im_start|>user\nhi<|im_end|>"
    assert reloaded.encode(text) == smollm2.encode(text)
    assert reloaded.chat_template == smollm2.chat_template
    assert not list(cache.parent.glob("*.partial"))


def test_gguf_cache_key_changes_with_the_file(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    first = gguf_tokenizer_cache_dir(gguf)
    os.utime(gguf, ns=(1_000_000_000, 2_000_000_000))
    second = gguf_tokenizer_cache_dir(gguf)
    assert first != second
    assert second.name == "model.gguf-4-2000000000"


def test_hf_directory(hf_dir, smollm2):
    tokenizer = load_tokenizer(hf_dir)
    assert tokenizer.encode("Hello world") == smollm2.encode("Hello world")


def test_directory_with_only_a_gguf_uses_it(gguf_path, smollm2, tmp_path):
    os.symlink(gguf_path, tmp_path / gguf_path.name)
    # Share the converted tokenizer instead of converting again (seconds).
    link_cache = gguf_tokenizer_cache_dir(tmp_path / gguf_path.name)
    link_cache.parent.mkdir()
    shutil.copytree(gguf_tokenizer_cache_dir(gguf_path), link_cache)
    assert load_tokenizer(tmp_path).encode("Hi there") == smollm2.encode("Hi there")


@pytest.mark.parametrize("bad", ["missing", "not_gguf", "empty_dir"])
def test_unloadable_paths_are_client_errors(tmp_path, bad):
    path = tmp_path / "x"
    if bad == "not_gguf":
        path.write_text("hello")
    elif bad == "empty_dir":
        path.mkdir()
    with pytest.raises(ClientError) as error:
        load_tokenizer(path)
    assert str(path) in str(error.value)


def test_eos_ids_of_a_gguf(gguf_path, smollm2):
    assert get_eos_token_ids(gguf_path, smollm2) == [2]


@pytest.mark.parametrize("config_eos, expected", [
    ([2, 0, 2], [2, 0]),
    (0, [2, 0]),
    (None, [2]),
])
def test_eos_ids_from_generation_config(hf_dir, smollm2, config_eos, expected):
    (hf_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": config_eos}))
    assert get_eos_token_ids(hf_dir, smollm2) == expected


def test_chat_template_from_gguf_metadata(smollm2):
    messages = [{"role": "user", "content": "What is 2+2?"}]
    text = render_chat_template(smollm2, messages)
    assert text == (f"<|im_start|>system\n{SMOLLM2_SYSTEM}<|im_end|>\n"
                    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    ids = apply_chat_template(smollm2, messages)
    assert ids == smollm2.encode(text, add_special_tokens=False)
    assert ids[0] == smollm2.convert_tokens_to_ids("<|im_start|>")
    assert ids.count(smollm2.convert_tokens_to_ids("<|im_start|>")) == 3


def test_chat_template_without_generation_prompt(smollm2):
    text = render_chat_template(smollm2, [{"role": "user", "content": "Hi"}],
                                add_generation_prompt=False)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n")


def test_text_parts_are_joined(smollm2):
    parts = [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]
    assert (render_chat_template(smollm2, [{"role": "user", "content": parts}])
            == render_chat_template(smollm2, [{"role": "user", "content": "Hello\nthere"}]))


def test_chat_template_override(smollm2):
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert render_chat_template(smollm2, messages, chat_template=template) == (
        "[system] Be brief.\n[user] Hi\n")


def test_missing_chat_template_is_a_client_error(hf_dir):
    tokenizer = load_tokenizer(hf_dir)
    tokenizer.chat_template = None
    with pytest.raises(ClientError, match="no chat template"):
        apply_chat_template(tokenizer, [{"role": "user", "content": "Hi"}])


def test_template_exception_is_a_client_error(smollm2):
    template = "{{ raise_exception('Conversation roles must alternate') }}"
    with pytest.raises(ClientError, match="roles must alternate"):
        apply_chat_template(smollm2, [{"role": "user", "content": "Hi"}], chat_template=template)


@pytest.mark.parametrize("messages", [
    [],
    ["hello"],
    [{"content": "no role"}],
    [{"role": "user", "content": 5}],
    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
])
def test_malformed_messages_are_client_errors(smollm2, messages):
    with pytest.raises(ClientError):
        apply_chat_template(smollm2, messages)
