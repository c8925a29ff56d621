"""``GET /advisor``: the tuning advisor's findings over the server's own metrics.

``GET /advisor?window=S`` (seconds, default 60, at most the 600 s of history kept) answers an
``AdvisorReport`` as JSON: ``findings`` (each {symptom, knob, direction, evidence, rationale,
source, suggested}), the window's measured ``metrics``, the ``knobs`` the advisor knew and the
``targets`` it used. A bad ``window`` is a 400. The monitor is ``app.state.advisor`` (the
dashboard and the stats log line read it too); it samples /metrics on every engine stats push,
at most every 0.5 s, reading only the series it needs (``METRICS_READ``), without the text.
"""

from __future__ import annotations

import functools
import math

import msgspec
import torch
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from pagellm.entrypoints.openai.errors import error_from_exception
from pagellm.errors import ClientError
from pagellm.tuning.advisor import KnobValues, targets_for_scenario
from pagellm.tuning.metrics_window import METRICS_READ
from pagellm.tuning.monitor import DEFAULT_WINDOW_S, AdvisorMonitor


def engine_device(config) -> str:
    """The resolved device name of an engine config ("cpu" or "cuda")."""
    device = config.parallel.device
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def add_advisor_route(app: FastAPI, engine, metrics) -> AdvisorMonitor:
    """Create ``app.state.advisor`` fed by ``engine``'s stats pushes, and the route."""
    config = engine.config
    monitor = AdvisorMonitor(metrics.render,
                             KnobValues.from_engine_config(config, engine_device(config)),
                             targets_for_scenario(config.scenario.scenario),
                             collect=functools.partial(metrics.collect, METRICS_READ))
    engine.stats_listeners.append(monitor.sample)
    app.state.advisor = monitor

    @app.get("/advisor")
    async def advisor(window: str = str(DEFAULT_WINDOW_S)):
        try:
            window_s = _window_seconds(window, monitor.history_s)
        except ClientError as error:
            body = error_from_exception(error)
            return JSONResponse(body.model_dump(), status_code=body.status_code)
        report = monitor.report(window_s)
        return Response(msgspec.json.encode(report), media_type="application/json")

    return monitor


def _window_seconds(text: str, limit: float) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (0 < value <= limit):
        raise ClientError(f"window must be a number of seconds in (0, {limit:g}], got {text!r}",
                          param="window")
    return value
