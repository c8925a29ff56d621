"""Schemathesis over the server's own /openapi.json against a real ``pagellm serve`` process on
a tiny model: whatever a client sends, the answer is never a 5xx (bad input is a 400 with an
OpenAI error body, not a crash).

Each operation gets its own bounded Hypothesis run (``schemathesis.pytest.from_fixture`` does
not work under pytest 9, so the loop over operations is written out here)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.helpers.server import start_server, stop_server
from tests.helpers.tiny_models import make_tiny_model_dir

MAX_EXAMPLES_PER_OPERATION = 12      # keeps the file well under 90 s on 2 shared CPU cores


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    model_dir = make_tiny_model_dir(tmp_path_factory.mktemp("fuzz"), "llama")
    proc, base = start_server(model_dir, "--disable-log-requests")
    yield base
    assert stop_server(proc) == 0


def _fuzz(operation, base_url: str) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=MAX_EXAMPLES_PER_OPERATION, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case):
        case.call_and_validate(base_url=base_url, checks=[not_a_server_error], timeout=30)

    run()


def test_no_input_makes_a_server_error(fuzz_server):
    api = schemathesis.openapi.from_url(fuzz_server + "/openapi.json")
    labels = []
    for result in api.get_all_operations():
        operation = result.ok()
        labels.append(operation.label)
        _fuzz(operation, fuzz_server)
    assert {"POST /v1/completions", "POST /v1/chat/completions", "POST /tokenize"} <= set(labels)
