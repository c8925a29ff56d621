"""Structured outputs (constrained decoding): grammar backends, the engine-core manager and
the request-time check.

    backend.py           the interface every grammar engine implements; bitmask layout
    xgrammar_backend.py  xgrammar: JSON schema, regex, choice, EBNF, structural tags
    manager.py           compile off the engine loop (thread pool, cache by constraint),
                         per-step bitmask, matcher advance; the speculative-decoding seam

Where things run: the API process calls ``validate_structured_outputs`` (no tokenizer
needed) so a bad schema is a 400 before the request reaches the engine; the engine-core
process compiles with the tokenizer, keeps one matcher per request, and ships each step's
bitmask to the runner in the SchedulerOutput; the runner masks the logits on the device
(``worker.model_runner``).
"""

from __future__ import annotations

from collections import OrderedDict

from pagellm.errors import ClientError
from pagellm.sampling_params import SamplingParams

_VALIDATED: OrderedDict[tuple, None] = OrderedDict()
"""Constraint keys that compiled (most recent last, at most 1024): the server validates a
request off the event loop first, and the input processor's check on the loop is then a
lookup."""

REQUEST_BACKENDS = (None, "auto", "xgrammar")
"""``guided_decoding_backend`` values a request may send: the engine has one backend."""


def validate_structured_outputs(params: SamplingParams, backend_name: str,
                                has_tokenizer: bool = True) -> None:
    """``ClientError`` (param ``structured_outputs``) when ``params.structured_outputs``
    cannot compile, or the engine has no tokenizer to compile it with."""
    constraint = params.structured_outputs
    if constraint is None:
        return
    if not has_tokenizer:
        raise ClientError("structured outputs need a tokenizer but the engine runs with "
                          "skip_tokenizer_init=True", param="structured_outputs")
    key = (backend_name, constraint.key())
    if key in _VALIDATED:
        return
    if backend_name in ("auto", "xgrammar"):
        from pagellm.structured_output.xgrammar_backend import XgrammarBackend
        XgrammarBackend.validate(constraint)
        _VALIDATED[key] = None
        if len(_VALIDATED) > 1024:
            _VALIDATED.popitem(last=False)
        return
    raise ClientError(f"structured_outputs_backend {backend_name!r} is not installed",
                      param="structured_outputs")
