"""Chat templates rendered by pagellm's bounded sandbox give exactly the text of transformers'
``apply_chat_template`` (default model and a tiny tokenizer), continue_final_message included;
and the character-count rule that refuses certainly-too-long prompts before tokenizing."""

from __future__ import annotations

from pathlib import Path

import pytest

from pagellm.engine.tokenizer import (apply_chat_template, check_prompt_chars, load_tokenizer,
                                      max_chars_per_token, render_chat_template)
from pagellm.errors import ClientError
from pagellm.models.default_model import resolve_model_path
from tests.helpers.tiny_models import CHAT_TEMPLATE, SPECIAL_TOKENS, build_tiny_tokenizer

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a joke about \"quotes\" and {braces} {{ x }}."}],
    [{"role": "user", "content": "ünïcödé ✓ 日本語\n\n  spaced  "}],
]
CONTINUE = [{"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "The capital of France is"}]
# A template using what real templates use: namespace, loop controls, tojson, raise_exception,
# bos_token, strftime_now, dict and a chat_template_kwargs variable.
RICH_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(n=0) %}{% for m in messages %}"
    "{% if m.role not in ['user', 'assistant', 'system'] %}{{ raise_exception('bad role') }}"
    "{% endif %}{% if loop.index > 50 %}{% break %}{% endif %}{% set ns.n = ns.n + 1 %}"
    "[{{ m.role|upper }}] {{ m.content|trim }}\n{% endfor %}"
    "{{ dict(count=ns.n, extra=extra)|tojson }}{{ strftime_now('%Y')|length }}"
    "{% if add_generation_prompt %}[ASSISTANT]{% endif %}")


@pytest.fixture(scope="module")
def smollm2():
    return load_tokenizer(Path(resolve_model_path("default")))


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_tokenizer()


@pytest.mark.parametrize("which", ["smollm2", "tiny"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_text_equals_transformers(request, which, add_generation_prompt, conversation):
    tokenizer = request.getfixturevalue(which)
    expected = tokenizer.apply_chat_template(conversation, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    assert render_chat_template(tokenizer, conversation, add_generation_prompt) == expected
    assert apply_chat_template(tokenizer, conversation, add_generation_prompt) == \
        tokenizer.encode(expected, add_special_tokens=False)


@pytest.mark.parametrize("which", ["smollm2", "tiny"])
def test_rich_template_and_kwargs_equal_transformers(request, which):
    tokenizer = request.getfixturevalue(which)
    conversation = CONVERSATIONS[1]
    expected = tokenizer.apply_chat_template(conversation, chat_template=RICH_TEMPLATE,
                                             tokenize=False, add_generation_prompt=True,
                                             extra={"a": [1, "ü"]})
    assert render_chat_template(tokenizer, conversation, True, RICH_TEMPLATE,
                                extra={"a": [1, "ü"]}) == expected
    with pytest.raises(ClientError, match="bad role") as caught:
        render_chat_template(tokenizer, [{"role": "robot", "content": "x"}], True, RICH_TEMPLATE)
    assert caught.value.param == "messages"


@pytest.mark.parametrize("which", ["smollm2", "tiny"])
def test_continue_final_message_equals_transformers(request, which):
    tokenizer = request.getfixturevalue(which)
    expected = tokenizer.apply_chat_template(CONTINUE, tokenize=False,
                                             add_generation_prompt=False,
                                             continue_final_message=True)
    text = render_chat_template(tokenizer, CONTINUE, add_generation_prompt=False,
                                continue_final_message=True)
    assert text == expected
    assert text.endswith("The capital of France is")
    closed = render_chat_template(tokenizer, CONTINUE, add_generation_prompt=False)
    assert closed.startswith(text) and len(closed) > len(text)   # the end-of-turn is cut


def test_continue_final_message_rejects_what_it_cannot_do(tiny):
    with pytest.raises(ClientError, match="add_generation_prompt and continue_final_message") \
            as caught:
        render_chat_template(tiny, CONTINUE, add_generation_prompt=True,
                             continue_final_message=True)
    assert caught.value.param == "continue_final_message"
    with pytest.raises(ClientError, match="assistant message, got role 'user'"):
        render_chat_template(tiny, CONTINUE[:1], add_generation_prompt=False,
                             continue_final_message=True)
    with pytest.raises(ClientError, match="does not appear"):
        render_chat_template(tiny, CONTINUE, False, "{{ messages[0]['content'] }}",
                             continue_final_message=True)


def test_special_tokens_reach_the_template(tiny):
    text = render_chat_template(tiny, CONVERSATIONS[0], True, "{{ eos_token }}|{{ pad_token }}")
    assert text == f"{SPECIAL_TOKENS[0]}|{SPECIAL_TOKENS[0]}"
    assert tiny.chat_template == CHAT_TEMPLATE


# ---- refusing a certainly-too-long prompt before tokenizing it --------------------------------

def test_max_chars_per_token_of_byte_level_bpe(tiny, smollm2):
    # the tiny vocabulary is single bytes; its longest added token is "<|endoftext|>"
    assert max_chars_per_token(tiny) == len("<|endoftext|>")
    bound = max_chars_per_token(smollm2)
    vocab = smollm2.get_vocab()
    assert bound == max(len(token) for token in vocab)
    # the rule's premise: no token of the vocabulary decodes to more than `bound` characters
    assert max(len(smollm2.decode([token_id])) for token_id in vocab.values()) <= bound


def test_no_bound_for_tokenizers_that_drop_characters():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()      # spaces become no token at all
    wordpiece = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    assert len(wordpiece.encode(" " * 1000, add_special_tokens=False)) == 0
    assert max_chars_per_token(wordpiece) is None
    check_prompt_chars(wordpiece, " " * 10**6, 10)          # no bound: left to the tokenizer


def test_check_prompt_chars_refuses_exactly_past_the_bound(tiny):
    limit = 13 * 256
    check_prompt_chars(tiny, "x" * limit, 256)
    with pytest.raises(ClientError, match="maximum context length is 256 tokens") as caught:
        check_prompt_chars(tiny, "x" * (limit + 1), 256, param="messages")
    assert caught.value.param == "messages"
    # the rule is sound here: the refused text really has too many tokens
    assert len(tiny.encode("x" * (limit + 1))) >= 256
