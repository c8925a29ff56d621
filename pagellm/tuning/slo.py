"""Service-level objectives of ``pagellm tune`` and ``pagellm bench compare``: parsing, checking a
finished run, and deciding early that a run in progress can no longer meet them.

An SLO bounds one statistic of one per-request latency, in milliseconds:
``ttft_p99_ms=500`` (P99 time to first token <= 500 ms), ``tpot_p50_ms=30``, ``e2el_mean_ms=2000``.
Metrics are ``bench serving``'s (vLLM's): ttft, tpot (time per output token after the first),
e2el (end-to-end latency). A failed request counts as an infinitely slow one.

Goodput (vLLM's and DistServe's): requests per second that meet *every* SLO bound
individually, i.e. a request is good when its ttft, tpot and e2el are each at or under the
bound of every SLO on that metric (the seeds' "P99 TTFT < 200 ms" targets, 001 §4.1).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from pagellm.bench.serving import GOODPUT_METRICS, RequestResult
from pagellm.errors import ClientError

_SLO_NAME = re.compile(r"(?P<metric>[a-z0-9]+)_(?P<stat>p\d+(?:\.\d+)?|mean)_ms")
FAILED_MS = 1e12
"""The latency a failed request counts as (finite, so percentiles stay numbers)."""


@dataclass(frozen=True)
class SLO:
    metric: str
    """ttft, tpot or e2el."""
    percentile: float | None
    """0 < p <= 100; None for the mean."""
    bound_ms: float

    @property
    def name(self) -> str:
        stat = "mean" if self.percentile is None else f"p{_number(self.percentile)}"
        return f"{self.metric}_{stat}_ms"

    def __str__(self) -> str:
        return f"{self.name}={_number(self.bound_ms)}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def parse_slo(text: str) -> SLO:
    """``"ttft_p99_ms=500"`` -> SLO("ttft", 99.0, 500.0). ClientError naming the accepted form
    otherwise."""
    name, _, value = text.partition("=")
    match = _SLO_NAME.fullmatch(name.strip())
    form = ("--slo takes METRIC_STAT_ms=BOUND with METRIC in ttft, tpot, e2el and STAT pNN "
            f"or mean, e.g. ttft_p99_ms=500; got {text!r}")
    if match is None or match["metric"] not in GOODPUT_METRICS:
        raise ClientError(form, param="slo")
    try:
        bound = float(value)
    except ValueError:
        raise ClientError(form, param="slo") from None
    if not (bound > 0 and math.isfinite(bound)):
        raise ClientError(f"--slo {name}: the bound must be a positive number of ms, got "
                          f"{value!r}", param="slo")
    stat = match["stat"]
    percentile = None if stat == "mean" else float(stat[1:])
    if percentile is not None and not 0 < percentile <= 100:
        raise ClientError(f"--slo {name}: the percentile must be in (0, 100]", param="slo")
    return SLO(match["metric"], percentile, bound)


def parse_slos(items: Iterable[str] | None) -> list[SLO]:
    slos = [parse_slo(item) for item in items or ()]
    names = [slo.name for slo in slos]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ClientError(f"--slo {duplicates[0]} given twice", param="slo")
    return slos


def request_values_ms(result: RequestResult) -> dict[str, float]:
    """ttft, tpot, e2el of one request in ms (FAILED_MS each for a failed request; tpot 0 for
    a one-token reply), as ``bench serving`` computes them."""
    if not result.success:
        return {metric: FAILED_MS for metric in GOODPUT_METRICS}
    tpot = 0.0
    if result.output_tokens > 1:
        tpot = (result.latency - result.ttft) / (result.output_tokens - 1)
    return {"ttft": result.ttft * 1000, "tpot": tpot * 1000, "e2el": result.latency * 1000}


def is_good(values_ms: dict[str, float], slos: Sequence[SLO]) -> bool:
    """Whether one request meets every SLO's bound (the goodput rule)."""
    return all(values_ms[slo.metric] <= slo.bound_ms for slo in slos)


def measured_statistic(values_ms: Sequence[float], slo: SLO) -> float:
    """The SLO's statistic over the values (``np.percentile``'s linear interpolation, as
    ``bench serving``); +inf for no values."""
    if not len(values_ms):
        return math.inf
    if slo.percentile is None:
        return float(np.mean(values_ms))
    return float(np.percentile(values_ms, slo.percentile))


def violated_slos(results: Sequence[RequestResult], slos: Sequence[SLO]) -> dict[str, float]:
    """{SLO name: measured value in ms} of every SLO the results break (empty = all met)."""
    per_request = [request_values_ms(result) for result in results]
    broken = {}
    for slo in slos:
        value = measured_statistic([values[slo.metric] for values in per_request], slo)
        if value > slo.bound_ms:
            broken[slo.name] = value
    return broken


class EarlyStop:
    """Watches a run of ``num_requests`` requests as they finish and says, as soon as it is
    certain, that a percentile SLO can no longer be met whatever the rest measure.

    A percentile never decreases when one value grows, so its lowest possible final value is
    the one with every unfinished request at 0 ms: the SLO is certainly broken once that is
    above the bound (exact, not a heuristic: the run's final percentile can only be higher).
    It is recomputed only when a finished request breaks the bound. Mean SLOs never stop a
    run early. Not thread-safe; one instance per run."""

    def __init__(self, slos: Sequence[SLO], num_requests: int):
        self.num_requests = num_requests
        self._slos = [slo for slo in slos if slo.percentile is not None]
        self._values: dict[str, list[float]] = {slo.name: [] for slo in self._slos}
        self.broken: str | None = None
        """Name of the first SLO found broken, None while every one may still hold."""

    def lowest_possible(self, slo: SLO) -> float:
        """The SLO's statistic if every unfinished request took 0 ms."""
        values = self._values[slo.name]
        padded = values + [0.0] * max(0, self.num_requests - len(values))
        return float(np.percentile(padded, slo.percentile))

    def add(self, result: RequestResult) -> bool:
        """Count one finished request; True once some SLO is certainly broken."""
        values = request_values_ms(result)
        for slo in self._slos:
            self._values[slo.name].append(values[slo.metric])
            if (self.broken is None and values[slo.metric] > slo.bound_ms
                    and self.lowest_possible(slo) > slo.bound_ms):
                self.broken = slo.name
        return self.broken is not None
