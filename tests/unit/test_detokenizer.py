"""IncrementalDetokenizer: text equals a full decode, stop strings, streaming hold-back."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from pagellm.engine.detokenizer import IncrementalDetokenizer
from pagellm.engine.tokenizer import load_tokenizer
from pagellm.models.default_model import resolve_model_path

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! How are you today? I am fine, thank you.",
    "def main():\n    return 42\n\n",
    "Paged attention stores the KV cache in fixed-size blocks.",
] * 20
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEXTS = [
    "Hello world, this is a test.",
    "Emoji 😀🎉👩‍👩‍👧 and CJK 日本語のテキスト, Ünïcödé ẞ.",
    "  leading spaces\n\nnew lines\ttabs ",
    "<|im_start|>assistant\nHi there<|im_end|> after special",
    "数学: ∑ᵢ xᵢ² ≤ ∞ — «quotes» “curly” 🇫🇷🇯🇵",
]


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """GPT-2 style: byte-level BPE, every byte sequence representable."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>",
                                   clean_up_tokenization_spaces=False)


def byte_fallback_tokenizer() -> PreTrainedTokenizerFast:
    """Llama/SentencePiece style: '▁' for spaces, rare characters as <0xNN> byte tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                  limit_alphabet=50)
    tokenizer.train_from_iterator(CORPUS, trainer)
    spec = json.loads(tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    spec["model"]["byte_fallback"] = True
    tokenizer = Tokenizer.from_str(json.dumps(spec))
    tokenizer.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
        decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", clean_up_tokenization_spaces=False)


@pytest.fixture(scope="module")
def byte_level() -> PreTrainedTokenizerFast:
    return byte_level_tokenizer()


@pytest.fixture(scope="module")
def byte_fallback() -> PreTrainedTokenizerFast:
    return byte_fallback_tokenizer()


@pytest.fixture(scope="module")
def smollm2():
    return load_tokenizer(resolve_model_path("default"))


@pytest.fixture(scope="module", params=["byte_level", "byte_fallback", "smollm2"])
def tokenizer(request):
    return request.getfixturevalue(request.param)


def run_tokens(tokenizer, prompt_ids, output_ids, step=1, **kwargs) -> IncrementalDetokenizer:
    detok = IncrementalDetokenizer(tokenizer, prompt_ids, **kwargs)
    for start in range(0, len(output_ids), step):
        if detok.update(output_ids[start:start + step]) is not None:
            break
    detok.flush()
    return detok


def test_byte_fallback_tokenizer_really_falls_back(byte_fallback):
    ids = byte_fallback.encode("😀", add_special_tokens=False)
    assert byte_fallback.convert_ids_to_tokens(ids)[-4:] == ["<0xF0>", "<0x9F>", "<0x98>",
                                                              "<0x80>"]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("skip_special_tokens", [True, False])
@pytest.mark.parametrize("step", [1, 3])
def test_output_text_equals_full_decode(tokenizer, text, skip_special_tokens, step):
    output_ids = tokenizer.encode(text, add_special_tokens=False)
    detok = run_tokens(tokenizer, [], output_ids, step, skip_special_tokens=skip_special_tokens)
    assert detok.output_text == tokenizer.decode(output_ids,
                                                 skip_special_tokens=skip_special_tokens)
    assert detok.output_token_ids == output_ids


@pytest.mark.parametrize("text", TEXTS)
def test_prompt_context_keeps_byte_level_text_exact(text, byte_level, smollm2):
    for tokenizer in (byte_level, smollm2):
        prompt_ids = tokenizer.encode("A prompt with 😀 in it: ", add_special_tokens=False)
        output_ids = tokenizer.encode(text, add_special_tokens=False)
        detok = run_tokens(tokenizer, prompt_ids, output_ids, skip_special_tokens=False)
        assert detok.output_text == tokenizer.decode(output_ids, skip_special_tokens=False)


def test_prompt_context_gives_sentencepiece_its_leading_space(byte_fallback):
    # Decoded alone, '▁world' loses its space (decoder Strip); after a prompt it is a
    # continuation and keeps it, as in vLLM.
    prompt_ids = byte_fallback.encode("Hello", add_special_tokens=False)
    output_ids = byte_fallback.encode("Hello world", add_special_tokens=False)[len(prompt_ids):]
    detok = run_tokens(byte_fallback, prompt_ids, output_ids)
    assert detok.output_text == " world"
    assert byte_fallback.decode(output_ids) == "world"


def test_incomplete_character_is_held_back_until_complete(byte_fallback):
    output_ids = byte_fallback.encode("a😀", add_special_tokens=False)
    detok = IncrementalDetokenizer(byte_fallback, [])
    texts = []
    for token_id in output_ids:
        detok.update([token_id])
        texts.append(detok.output_text)
    assert texts == ["a", "a", "a", "a", "a😀"]


def test_flush_emits_a_trailing_incomplete_character(byte_fallback):
    output_ids = byte_fallback.encode("a😀", add_special_tokens=False)[:-1]
    detok = IncrementalDetokenizer(byte_fallback, [])
    detok.update(output_ids)
    assert detok.output_text == "a"
    assert detok.flush() == "\ufffd\ufffd\ufffd"
    assert detok.output_text == byte_fallback.decode(output_ids)
    assert detok.flush() == ""


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_random_ids_equal_full_decode(byte_level, smollm2, data):
    # Byte-level BPE decodes any byte sequence the same in pieces as whole (lossy UTF-8
    # decoding resynchronizes), so even invalid UTF-8 must come out exactly.
    tokenizer = data.draw(st.sampled_from([byte_level, smollm2]))
    token_ids = st.lists(st.integers(0, len(tokenizer) - 1), max_size=40)
    prompt_ids, output_ids = data.draw(token_ids), data.draw(token_ids)
    skip_special_tokens = data.draw(st.booleans())
    step = data.draw(st.integers(1, 4))
    detok = run_tokens(tokenizer, prompt_ids, output_ids, step,
                       skip_special_tokens=skip_special_tokens)
    assert detok.output_text == tokenizer.decode(output_ids,
                                                 skip_special_tokens=skip_special_tokens)


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_random_pieces_equal_full_decode_with_byte_fallback(byte_fallback, data):
    # The ByteFallback decoder turns a whole run of byte tokens into U+FFFDs when any byte in
    # it is invalid, which no windowed decode can reproduce; so the byte tokens drawn here are
    # whole characters, mixed with random ordinary and special tokens.
    byte_token_ids = set(byte_fallback.convert_tokens_to_ids([f"<0x{b:02X}>" for b in range(256)]))
    other_ids = [i for i in range(len(byte_fallback)) if i not in byte_token_ids]
    piece = st.one_of(
        st.sampled_from(other_ids).map(lambda token_id: [token_id]),
        st.characters().map(lambda char: byte_fallback.encode(char, add_special_tokens=False)))
    output_ids = sum(data.draw(st.lists(piece, max_size=30)), [])
    skip_special_tokens = data.draw(st.booleans())
    detok = run_tokens(byte_fallback, [], output_ids, data.draw(st.integers(1, 4)),
                       skip_special_tokens=skip_special_tokens)
    assert detok.output_text == byte_fallback.decode(output_ids,
                                                     skip_special_tokens=skip_special_tokens)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=60))
def test_any_text_decodes_incrementally_after_a_prompt(smollm2, text):
    prompt_ids = smollm2.encode("Say:", add_special_tokens=False)
    output_ids = smollm2.encode(text, add_special_tokens=False)
    detok = run_tokens(smollm2, prompt_ids, output_ids)
    # Not always == text: characters outside the vocabulary's bytes encode lossily.
    assert detok.output_text == smollm2.decode(output_ids)


def test_stop_string_truncates_and_is_returned(byte_level):
    output_ids = byte_level.encode("Hello world, this is a test.", add_special_tokens=False)
    detok = run_tokens(byte_level, [], output_ids, stop=["this", "zzz"])
    assert detok.stop_reason == "this"
    assert detok.output_text == "Hello world, "


def test_stop_string_kept_with_include_stop_str_in_output(byte_level):
    output_ids = byte_level.encode("Hello world, this is a test.", add_special_tokens=False)
    detok = run_tokens(byte_level, [], output_ids, stop=["this"],
                       include_stop_str_in_output=True)
    assert detok.output_text == "Hello world, this"


def test_earliest_stop_string_wins(byte_level):
    output_ids = byte_level.encode("Hello world, this is a test.", add_special_tokens=False)
    detok = IncrementalDetokenizer(byte_level, [], stop=["test", "world"])
    assert detok.update(output_ids) == "world"
    assert detok.output_text == "Hello "


def test_stop_string_spanning_tokens_is_found(byte_level):
    text = "The quick brown fox jumps over the lazy dog."
    output_ids = byte_level.encode(text, add_special_tokens=False)
    for stop in ("k brown f", "jumps over the", "."):
        detok = run_tokens(byte_level, [], output_ids, stop=[stop])
        assert (detok.stop_reason, detok.output_text) == (stop, text[:text.index(stop)])


def test_stop_string_in_prompt_is_not_matched(byte_level):
    prompt_ids = byte_level.encode("Hello world", add_special_tokens=False)
    output_ids = byte_level.encode(", the end", add_special_tokens=False)
    detok = run_tokens(byte_level, prompt_ids, output_ids, stop=["world"])
    assert detok.stop_reason is None
    assert detok.output_text == ", the end"


def test_no_stop_check_within_min_tokens(byte_level):
    text = "Hello world, Hello world"
    output_ids = byte_level.encode(text, add_special_tokens=False)
    first_hello_tokens = len(byte_level.encode("Hello", add_special_tokens=False))
    detok = run_tokens(byte_level, [], output_ids, stop=["Hello"],
                       min_tokens=first_hello_tokens)
    assert detok.stop_reason == "Hello"
    assert detok.output_text == "Hello world, "
    detok = run_tokens(byte_level, [], output_ids, stop=["Hello"], min_tokens=len(output_ids))
    assert detok.stop_reason is None
    assert detok.output_text == text


def test_tokens_after_a_stop_add_no_text(byte_level):
    output_ids = byte_level.encode("one two three", add_special_tokens=False)
    detok = IncrementalDetokenizer(byte_level, [], stop=["two"])
    assert detok.update(output_ids) == "two"
    assert detok.update(byte_level.encode(" four", add_special_tokens=False)) is None
    assert detok.output_text == "one "


def stream(detok: IncrementalDetokenizer, output_ids: list[int]) -> list[str]:
    deltas = []
    for token_id in output_ids:
        detok.update([token_id])
        deltas.append(detok.get_delta_text(finished=detok.stopped))
        if detok.stopped:
            break
    if not detok.stopped:
        deltas.append(detok.get_delta_text(finished=True))
    return deltas


def test_streaming_holds_back_a_possible_stop_prefix(smollm2):
    text = "Hello world, this is a test."
    output_ids = smollm2.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(smollm2, [], stop=["STOP!"])
    deltas = stream(detok, output_ids)
    assert "".join(deltas) == text
    streamed = ""
    for token_count, delta in enumerate(deltas[:-1], start=1):
        streamed += delta
        full_so_far = smollm2.decode(output_ids[:token_count])
        assert streamed == full_so_far[:max(len(full_so_far) - 4, 0)]


@pytest.mark.parametrize("step", [1, 2, 5])
def test_streaming_never_shows_part_of_a_stop_string(byte_level, step):
    output_ids = byte_level.encode("Hello world, this is a test.", add_special_tokens=False)
    detok = IncrementalDetokenizer(byte_level, [], stop=["is a"])
    streamed = []
    for start in range(0, len(output_ids), step):
        detok.update(output_ids[start:start + step])
        streamed.append(detok.get_delta_text(finished=detok.stopped))
        # Nothing streamed is ever taken back, so no part of the stop string got out.
        assert detok.output_text.startswith("".join(streamed))
        if detok.stopped:
            break
    assert "".join(streamed) == "Hello world, this "


def test_streaming_with_include_stop_str_does_not_hold_back(byte_level):
    output_ids = byte_level.encode("Hello world", add_special_tokens=False)
    detok = IncrementalDetokenizer(byte_level, [], stop=["zzzz"], include_stop_str_in_output=True)
    detok.update(output_ids)
    assert detok.get_delta_text() == "Hello world"
    assert detok.get_delta_text() == ""


def test_delta_after_finish_is_empty(byte_level):
    detok = IncrementalDetokenizer(byte_level, [], stop=["long stop"])
    detok.update(byte_level.encode("Hi there", add_special_tokens=False))
    assert detok.get_delta_text() == ""  # 8 chars held back for a 9-char stop string
    assert detok.get_delta_text(finished=True) == "Hi there"
    assert detok.get_delta_text(finished=True) == ""


def test_decode_token_shows_special_tokens(smollm2):
    detok = IncrementalDetokenizer(smollm2, [])
    im_end = smollm2.convert_tokens_to_ids("<|im_end|>")
    assert detok.decode_token(im_end) == "<|im_end|>"
    hello = smollm2.encode(" Hello", add_special_tokens=False)
    assert detok.decode_token(hello[0]) == smollm2.decode(hello[:1])


@pytest.mark.parametrize("include_stop_str_in_output, expected", [
    (False, "Hi there"),
    (True, "Hi there<|im_end|>"),
])
def test_a_stop_token_text_is_left_out(smollm2, include_stop_str_in_output, expected):
    output_ids = smollm2.encode("Hi there<|im_end|>", add_special_tokens=False)
    detok = IncrementalDetokenizer(smollm2, [], skip_special_tokens=False,
                                   include_stop_str_in_output=include_stop_str_in_output)
    detok.update(output_ids[:-2])
    assert detok.update(output_ids[-2:], stop_terminated=True) is None
    detok.flush()
    assert detok.output_text == expected
    assert detok.output_token_ids == output_ids
