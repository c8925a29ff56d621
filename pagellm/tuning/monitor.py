"""The advisor inside a server: a rolling history of /metrics scrapes and the findings over the
last N seconds (``GET /advisor``, the advisor line of the periodic stats log, the dashboard).

``AdvisorMonitor(render, knobs, targets)`` keeps one ``Snapshot`` per ``sample_interval_s``
(taken by ``sample()``, which the server calls from its engine-stats listener, so the gauges'
peaks during a burst are seen) for ``history_s`` seconds. ``report(window_s)`` takes a fresh
snapshot and returns the window and its findings. Not thread-safe: call it from the server's
event loop only.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable

import msgspec

from pagellm.tuning.advisor import Advisor, Finding, KnobValues, MetricWindow, Targets
from pagellm.tuning.metrics_window import (Snapshot, parse_snapshot, snapshot_from_families,
                                           window_from_snapshots)

DEFAULT_WINDOW_S = 60.0


class AdvisorReport(msgspec.Struct, kw_only=True):
    """What ``GET /advisor`` answers."""

    window_s: float
    """Seconds the window actually covers (less than asked right after start)."""
    findings: list[Finding]
    metrics: MetricWindow
    knobs: KnobValues
    targets: Targets


class AdvisorMonitor:
    def __init__(self, render: Callable[[], bytes], knobs: KnobValues | None = None,
                 targets: Targets | None = None, sample_interval_s: float = 0.5,
                 history_s: float = 600.0, clock: Callable[[], float] = time.monotonic,
                 collect: Callable[[], Iterable] | None = None):
        """``render``: the server's /metrics text (``PrometheusMetrics.render``). ``collect``:
        its metric families (``PrometheusMetrics.collect``), read instead of rendering and
        parsing the text when given (a few times cheaper: the server samples twice a
        second)."""
        self.render = render
        self.collect = collect
        self.advisor = Advisor(knobs, targets)
        self.sample_interval_s = sample_interval_s
        self.history_s = history_s
        self.clock = clock
        self.snapshots: deque[Snapshot] = deque()
        self.sample(force=True)

    def sample(self, *_ignored, force: bool = False) -> None:
        """Record a snapshot unless the last is younger than ``sample_interval_s``; drops
        those older than ``history_s``. Accepts (and ignores) a stats listener's arguments."""
        now = self.clock()
        if not force and self.snapshots and now - self.snapshots[-1].time < self.sample_interval_s:
            return
        if self.collect is not None:
            self.snapshots.append(snapshot_from_families(self.collect(), at=now))
        else:
            self.snapshots.append(parse_snapshot(self.render().decode(), at=now))
        while len(self.snapshots) > 2 and now - self.snapshots[0].time > self.history_s:
            self.snapshots.popleft()

    def report(self, window_s: float = DEFAULT_WINDOW_S) -> AdvisorReport:
        """The findings over the last ``window_s`` seconds (a fresh snapshot ends the window)."""
        self.sample(force=True)
        now = self.snapshots[-1].time
        inside = [s for s in self.snapshots if now - s.time <= window_s]
        if len(inside) < 2:     # the newest older snapshot starts the window
            inside = list(self.snapshots)[-2:]
        window = window_from_snapshots(inside)
        return AdvisorReport(window_s=window.duration_s, findings=self.advisor.advise(window),
                             metrics=window, knobs=self.advisor.knobs,
                             targets=self.advisor.targets)
