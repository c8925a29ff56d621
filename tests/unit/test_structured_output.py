"""Structured outputs below the engine: the params, the request fields, the xgrammar backend,
the manager (compile cache, bitmask rows, speculative rows), the bitmask op and the wire."""

from __future__ import annotations

import threading

import msgspec
import numpy as np
import pytest
import torch

from pagellm.core.sched_output import SchedulerOutput
from pagellm.distributed.worker_proc import ExecuteModel, call_decoder, encoder
from pagellm.entrypoints.openai.protocol import ChatCompletionRequest, CompletionRequest
from pagellm.errors import ClientError
from pagellm.ops.grammar_bitmask import apply_token_bitmask_, apply_token_bitmask_torch_
from pagellm.sampling_params import SamplingParams, StructuredOutputsParams
from pagellm.structured_output import validate_structured_outputs
from pagellm.structured_output.manager import StructuredOutputManager
from pagellm.structured_output.xgrammar_backend import XgrammarBackend
from tests.helpers.tiny_models import build_tiny_tokenizer

EOS = 0                 # the tiny tokenizer's <|endoftext|>
VOCAB = 300             # the model's logits width: 41 ids past the tokenizer's 259
TOKENIZER = build_tiny_tokenizer()


def byte_id(char: str) -> int:
    return TOKENIZER.convert_tokens_to_ids(TOKENIZER.tokenize(char))[0]


def allowed(bitmask: np.ndarray, row: int) -> set[int]:
    bits = np.unpackbits(bitmask[row].view(np.uint8), bitorder="little")
    return set(np.flatnonzero(bits).tolist())


def make_manager(backend=None) -> StructuredOutputManager:
    return StructuredOutputManager(backend or XgrammarBackend(lambda: TOKENIZER, VOCAB), VOCAB)


def constrained(**constraint) -> SamplingParams:
    params = SamplingParams(structured_outputs=StructuredOutputsParams(**constraint))
    params.all_stop_token_ids = {EOS}
    return params


# ---- params -----------------------------------------------------------------------------------

def test_exactly_one_constraint_and_its_type():
    with pytest.raises(ClientError, match="exactly one .* got json, regex"):
        StructuredOutputsParams(json={}, regex="a")
    with pytest.raises(ClientError, match="got none"):
        StructuredOutputsParams()
    with pytest.raises(ClientError, match="choice must be a non-empty list of strings"):
        StructuredOutputsParams(choice=[])
    with pytest.raises(ClientError, match="json must be a JSON schema"):
        StructuredOutputsParams(json=5)
    params = SamplingParams(structured_outputs={"regex": "[0-9]+"})
    assert params.structured_outputs.kind == "regex"
    assert params.clone().structured_outputs == params.structured_outputs


def test_key_is_canonical_json():
    a = StructuredOutputsParams(json={"type": "object", "required": ["a"]})
    b = StructuredOutputsParams(json='{"required":["a"],"type":"object"}')
    assert a.key() == ("json", '{"required":["a"],"type":"object"}', False, False)
    assert a.key() != StructuredOutputsParams(json=a.json, disable_any_whitespace=True).key()
    assert b.key()[0] == "json"


# ---- the request fields -------------------------------------------------------------------------

def chat(**fields):
    return ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], **fields)


def test_response_format_fields_become_params():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    made = chat(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": schema, "strict": True}}).to_sampling_params(256, 4)
    assert made.structured_outputs == StructuredOutputsParams(json=schema)
    made = chat(response_format={"type": "json_object"}).to_sampling_params(256, 4)
    assert made.structured_outputs == StructuredOutputsParams(json_object=True)
    assert chat(response_format={"type": "text"}).to_sampling_params(256, 4).structured_outputs is None
    completion = CompletionRequest(prompt="x", response_format={"type": "json_object"})
    assert completion.to_sampling_params(256, 1).structured_outputs.json_object is True


def test_guided_and_structured_outputs_fields():
    assert chat(guided_choice=["a", "b"]).to_sampling_params(256, 4).structured_outputs == \
        StructuredOutputsParams(choice=["a", "b"])
    made = chat(guided_json='{"type": "string"}', guided_whitespace_pattern="",
                guided_decoding_backend="xgrammar").to_sampling_params(256, 4)
    assert made.structured_outputs.json == '{"type": "string"}' and made.structured_outputs.compact_json
    made = chat(structured_outputs={"grammar": 'root ::= "a"'},
                response_format={"type": "json_object"}).to_sampling_params(256, 4)
    assert made.structured_outputs.grammar == 'root ::= "a"'    # structured_outputs wins


@pytest.mark.parametrize("fields, param, message", [
    (dict(response_format={"type": "xml"}), "response_format", "type must be one of"),
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "x"}}),
     "response_format", "needs json_schema.schema"),
    (dict(structured_outputs={"jsn": {}}), "structured_outputs", "unknown keys \\['jsn'\\]"),
    (dict(structured_outputs={"json": {}, "regex": "a"}), "structured_outputs", "exactly one"),
    (dict(guided_regex="a", guided_decoding_backend="outlines"), "guided_decoding_backend",
     "xgrammar"),
    (dict(response_format={"type": "json_object"}, guided_whitespace_pattern="[ ]+"),
     "guided_whitespace_pattern", "applies only together with a guided_"),
    (dict(guided_whitespace_pattern=""), "guided_whitespace_pattern", "applies only"),
])
def test_bad_request_fields_are_client_errors(fields, param, message):
    with pytest.raises(ClientError, match=message) as caught:
        chat(**fields).to_sampling_params(256, 4)
    assert caught.value.param == param


# ---- validation (no tokenizer) ------------------------------------------------------------------

@pytest.mark.parametrize("constraint, message", [
    (dict(json="{bad"), "invalid structured outputs json: Failed to parse JSON"),
    (dict(json={"type": "foo"}), 'Unsupported type "foo"'),
    (dict(regex="(ab"), "invalid structured outputs regex: .*parenthesis is not closed"),
    (dict(grammar="root ::= foo"), 'Rule "foo" is not defined'),
    (dict(structural_tag='{"type": "structural_tag"}'), "invalid structured outputs structural_tag"),
    (dict(structural_tag="{not json"), "structural_tag: not JSON"),
    (dict(structural_tag='{"structures": [{"begin": "<f>"}], "triggers": ["<f"]}'),
     '"structures" must be a non-empty list of {"begin", "schema", "end"} objects'),
    (dict(structural_tag='{"structures": [{"begin": "<f>", "schema": {}, "end": "</f>"}]}'),
     '"triggers" must be a non-empty list of strings'),
])
def test_invalid_constraints_name_the_problem(constraint, message):
    with pytest.raises(ClientError, match=message) as caught:
        validate_structured_outputs(constrained(**constraint), "xgrammar")
    assert caught.value.param == "structured_outputs"
    assert ".cc:" not in str(caught.value)


def test_no_tokenizer_is_a_client_error():
    with pytest.raises(ClientError, match="skip_tokenizer_init"):
        validate_structured_outputs(constrained(regex="a"), "auto", has_tokenizer=False)


# ---- the manager ---------------------------------------------------------------------------------

class GatedBackend(XgrammarBackend):
    """The xgrammar backend whose compiles wait for ``gate`` (to hold a request compiling)."""

    def __init__(self):
        super().__init__(lambda: TOKENIZER, VOCAB)
        self.gate = threading.Event()

    def compile(self, params):
        assert self.gate.wait(30)
        return super().compile(params)


class FakeRequest:
    def __init__(self, request_id, structured_output):
        self.request_id, self.structured_output = request_id, structured_output


def test_identical_constraints_compile_once_and_share():
    manager = make_manager()
    first = manager.grammar_init(constrained(choice=["ab", "cd"]))
    second = manager.grammar_init(constrained(choice=["ab", "cd"]))
    manager.grammar_init(constrained(choice=["ab"]))
    assert manager.num_compiles == 2
    assert first.future is second.future
    first.future.result(30)
    assert first.is_ready() and second.is_ready()
    assert first.grammar is not second.grammar          # one matcher per request


def test_is_ready_waits_for_the_compile():
    backend = GatedBackend()
    manager = make_manager(backend)
    request = manager.grammar_init(constrained(regex="[0-9]"))
    assert not request.is_ready() and request.grammar is None
    backend.gate.set()
    request.future.result(30)
    assert request.is_ready() and request.error is None


def test_bitmask_rows_follow_the_grammar_and_mask_the_padded_vocab():
    manager = make_manager()
    choice = manager.grammar_init(constrained(choice=["ab", "cd"]))
    choice.future.result(30)
    choice.is_ready()
    rows, bitmask = manager.grammar_bitmask([FakeRequest("r", choice)])
    assert rows == {"r": 0} and bitmask.shape == (1, 10) and bitmask.dtype == np.int32
    assert allowed(bitmask, 0) == {byte_id("a"), byte_id("c")}     # nothing >= 259
    assert choice.grammar.accept_tokens([byte_id("a")])
    assert not choice.grammar.accept_tokens([byte_id("d")])        # refused: state kept
    assert choice.grammar.accept_tokens([byte_id("b")])
    _, bitmask = manager.grammar_bitmask([FakeRequest("r", choice)])
    assert allowed(bitmask, 0) == {EOS}                            # only the end is left
    assert not choice.grammar.is_terminated()
    assert choice.grammar.accept_tokens([EOS]) and choice.grammar.is_terminated()


def test_draft_tokens_get_one_row_each_and_the_matcher_rolls_back():
    manager = make_manager()
    request = manager.grammar_init(constrained(choice=["abc"]))
    request.future.result(30)
    request.is_ready()
    drafts = {"r": [byte_id("a"), byte_id("x"), byte_id("c")]}     # "x" breaks the grammar
    rows, bitmask = manager.grammar_bitmask([FakeRequest("r", request)], drafts)
    assert rows == {"r": 0} and bitmask.shape[0] == 4
    assert allowed(bitmask, 0) == {byte_id("a")}
    assert allowed(bitmask, 1) == {byte_id("b")}                   # masks the bad draft
    assert (bitmask[2:] == -1).all()                               # never used
    assert request.grammar.accept_tokens([byte_id("a")])           # rolled back to the start



def test_batch_fill_gives_each_request_its_own_row_among_drafted_ones():
    """Requests without drafts are filled in one batch call (xgrammar's BatchGrammarMatcher),
    interleaved with a drafted request's rows: every row is its own matcher's."""
    manager = make_manager()
    texts = {"p": "abc", "q": "xyz", "d": "abc", "s": "pqr"}
    requests = {}
    for request_id, text in texts.items():
        requests[request_id] = manager.grammar_init(constrained(choice=[text]))
        requests[request_id].future.result(30)
        requests[request_id].is_ready()
    assert requests["q"].grammar.accept_tokens([byte_id("x")])
    assert requests["s"].grammar.accept_tokens([byte_id("p"), byte_id("q")])
    order = [FakeRequest(r, requests[r]) for r in ("p", "d", "q", "s")]
    rows, bitmask = manager.grammar_bitmask(order, {"d": [byte_id("a")]})
    assert rows == {"p": 0, "d": 1, "q": 3, "s": 4} and bitmask.shape[0] == 5
    assert [allowed(bitmask, row) for row in range(5)] == [
        {byte_id("a")}, {byte_id("a")}, {byte_id("b")}, {byte_id("y")}, {byte_id("r")}]


# ---- the op and the wire -------------------------------------------------------------------------

def test_bitmask_op_matches_its_torch_twin_on_a_padded_vocab():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, VOCAB, generator=generator)
    bitmask = torch.randint(-2**31, 2**31 - 1, (5, 10), dtype=torch.int32, generator=generator)
    expected, got = logits.clone(), logits.clone()
    apply_token_bitmask_torch_(expected, bitmask, [0, 3, 4])
    apply_token_bitmask_(got, bitmask, [0, 3, 4])
    torch.testing.assert_close(got, expected)
    assert torch.equal(got[1], logits[1])
    bit_of_299 = (bitmask[0, 9] >> 11) & 1
    assert torch.isinf(got[0, 299]) == (bit_of_299 == 0)


def test_scheduler_output_bitmask_crosses_the_worker_wire():
    bitmask = np.arange(-6, 6, dtype=np.int32).reshape(2, 6)
    sched = SchedulerOutput([], [], {"a": 1}, 1, set(), structured_output_request_ids={"a": 1},
                            grammar_bitmask=bitmask)
    decoded = call_decoder.decode(encoder.encode(ExecuteModel(sched))).scheduler_output
    assert decoded.structured_output_request_ids == {"a": 1}
    assert decoded.grammar_bitmask.dtype == np.int32
    np.testing.assert_array_equal(decoded.grammar_bitmask, bitmask)
    sched.grammar_bitmask = None
    assert call_decoder.decode(encoder.encode(ExecuteModel(sched))).scheduler_output.grammar_bitmask is None


def test_a_whitespace_pattern_xgrammar_cannot_honour_is_a_400():
    """Only "" (compact JSON) is exact under xgrammar; any other pattern was silently
    ignored before (the fresh tester's report): now a 400 saying what to use."""
    from pagellm.errors import ClientError
    from pagellm.sampling_params import StructuredOutputsParams

    with pytest.raises(ClientError, match="whitespace_pattern other than"):
        StructuredOutputsParams(json={"type": "object"}, whitespace_pattern="[ ]?")
    assert StructuredOutputsParams(json={"type": "object"}, whitespace_pattern="").compact_json
