"""The streamed completion chunk's fast JSON path gives the same bytes as pydantic."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pagellm.entrypoints.openai.protocol import CompletionResponseChoice, CompletionStreamResponse
from pagellm.entrypoints.openai.serving_completion import StreamChunkJSON

reasons = st.one_of(st.none(), st.text(max_size=8), st.integers(-2**40, 2**40))


def _pydantic(request_id, created, model, index, text, finish_reason, stop_reason) -> str:
    return CompletionStreamResponse(
        id=request_id, created=created, model=model,
        choices=[CompletionResponseChoice(index=index, text=text, logprobs=None,
                                          finish_reason=finish_reason,
                                          stop_reason=stop_reason)],
        usage=None).model_dump_json()


@settings(max_examples=300, deadline=None)
@given(request_id=st.text(max_size=12), created=st.integers(0, 2**40), model=st.text(max_size=12),
       index=st.integers(0, 1000), text=st.text(max_size=40),
       finish_reason=st.one_of(st.none(), st.sampled_from(["stop", "length", "abort"])),
       stop_reason=reasons)
def test_plain_chunk_bytes_equal_pydantic(request_id, created, model, index, text,
                                          finish_reason, stop_reason):
    rendered = StreamChunkJSON(request_id, created, model).render(index, text, finish_reason,
                                                                   stop_reason)
    assert rendered == _pydantic(request_id, created, model, index, text, finish_reason,
                                 stop_reason)


def test_escapes_and_unicode_equal_pydantic():
    text = "".join(chr(c) for c in range(0x80)) + "é€😀\u2028\u2029\ufeff\U0010ffff"
    head = StreamChunkJSON('cmpl-"x"\\', 7, "m\n")
    assert head.render(3, text, "stop", "\x00") == _pydantic('cmpl-"x"\\', 7, "m\n", 3, text,
                                                              "stop", "\x00")


def test_other_types_fall_back_to_pydantic():
    head = StreamChunkJSON("id", 1, "m")
    assert head.render(0, "a", None, True) is None      # bool is not a plain int here
    assert head.render(0, "a", None, 1.5) is None
