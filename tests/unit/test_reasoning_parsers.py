"""Reasoning parsers on scripted outputs: the full split, and the same split streamed when the
text is cut at every character boundary, one character at a time, or in random chunks."""

from __future__ import annotations

import random

import pytest

from pagellm.reasoning import ReasoningParserManager

QWEN_PROMPT_OPEN = "<|im_start|>assistant\n<think>\n"
NO_THINKING = {"enable_thinking": False}

# (parser, output, prompt, chat_template_kwargs, expected reasoning, expected content)
SCRIPTED = [
    ("deepseek_r1", "Let me think.</think>\n\nThe answer is 4.", "", None,
     "Let me think.", "\n\nThe answer is 4."),
    ("deepseek_r1", "<think>Let me think.</think>4", "", None, "Let me think.", "4"),
    ("deepseek_r1", "Still thinking when cut off", "", None, "Still thinking when cut off", None),
    ("deepseek_r1", "</think>Only content", "", None, None, "Only content"),
    ("deepseek_r1", "a </thin b</think>c", "", None, "a </thin b", "c"),
    ("deepseek_r1", "x</think>y", "", NO_THINKING, "x", "y"),      # R1 always reasons
    ("qwen3", "<think>\nhmm\n</think>\n\nParis.", "", None, "\nhmm\n", "\n\nParis."),
    ("qwen3", "Paris.", "", None, None, "Paris."),
    ("qwen3", "hmm</think>Paris.", QWEN_PROMPT_OPEN, None, "hmm", "Paris."),
    ("qwen3", "Paris. </think> x", "", None, None, "Paris. </think> x"),
    ("qwen3", "<think>x</think>y", "", NO_THINKING, None, "<think>x</think>y"),
    ("qwen3", "\n<think>cut off", "", None, "cut off", None),
    ("qwen3", "<thinking>", "", None, None, "<thinking>"),
    ("qwen3", "<thi", "", None, None, "<thi"),
    ("qwen3", "<think></think>", "", None, None, None),
    ("think", "<think>a</think>b</think>c", "", None, "a", "b</think>c"),
    ("think", "", "", None, None, None),
]


def _split(parser_class, chunks, prompt, kwargs):
    parser = parser_class(prompt, kwargs)
    pieces = []
    for index, chunk in enumerate(chunks):
        pieces += parser.feed(chunk, final=index == len(chunks) - 1)
    assert all(piece for _, piece in pieces)            # no empty pieces are streamed
    reasoning = "".join(piece for is_reasoning, piece in pieces if is_reasoning)
    content = "".join(piece for is_reasoning, piece in pieces if not is_reasoning)
    return reasoning or None, content or None


@pytest.mark.parametrize("name, text, prompt, kwargs, reasoning, content", SCRIPTED,
                         ids=[f"{s[0]}-{i}" for i, s in enumerate(SCRIPTED)])
def test_scripted_outputs_split_in_full_and_in_every_chunking(name, text, prompt, kwargs,
                                                              reasoning, content):
    parser_class = ReasoningParserManager.get_reasoning_parser(name)
    assert parser_class.parse(text, prompt, kwargs) == (reasoning, content)
    for cut in range(len(text) + 1):
        assert _split(parser_class, [text[:cut], text[cut:]], prompt, kwargs) == \
            (reasoning, content), cut
    assert _split(parser_class, [*text, ""], prompt, kwargs) == (reasoning, content)
    rng = random.Random(len(text))
    for _ in range(20):
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(1, 5))))
        chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        assert _split(parser_class, chunks, prompt, kwargs) == (reasoning, content), chunks


def test_reasoning_streams_before_the_end_marker_arrives():
    parser = ReasoningParserManager.get_reasoning_parser("qwen3")()
    assert parser.feed("<thi") == []
    assert parser.feed("nk>Step 1. </th") == [(True, "Step 1. ")]
    assert parser.feed("ink>\n\nDone") == [(False, "\n\nDone")]


def test_unknown_reasoning_parser_names_the_choices():
    with pytest.raises(KeyError, match="deepseek_r1, qwen3, think"):
        ReasoningParserManager.get_reasoning_parser("nope")
