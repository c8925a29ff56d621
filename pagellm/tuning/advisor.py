"""The tuning guides' decision tree, run on measurements: symptoms in, named knobs out.

``Advisor(knobs, targets).advise(window)`` takes a ``MetricWindow`` (what the server's metrics
or a ``bench serving`` result showed over some seconds; built by ``pagellm.tuning.metrics_window``)
and returns a list of ``Finding``: the symptom, the engine argument to change (vLLM's name), the
direction, the measured evidence, the guide's rationale, and the guide file + section it comes
from. An empty list means no symptom crossed its threshold. Nothing here does I/O.

Contract for callers (``pagellm advise``, ``GET /advisor``, the stats log line, the dashboard):
``Finding`` is a msgspec Struct; ``msgspec.to_builtins(finding)`` (or ``Finding.as_dict``) is a
plain dict with the keys ``symptom, knob, direction, evidence, rationale, source, suggested``.

The guides' decision tree (001 §4.2), as walked here, one finding per symptom:

- errors (OOM) / KV exhaustion -> the KV budget up, then max_model_len down / quantization / TP
- frequent preemption -> swap_space up (swap mode), else the KV budget up or max_num_seqs down
- queue build-up -> max_num_seqs up when the running batch is at its cap and KV has room
- high TTFT -> scheduler_delay_factor down along 1.0 -> 0.5 -> 0.1 -> 0.05
- P99 far above P50 -> the branch that explains it (queueing, preemption, or the model itself)
- low KV utilization with the running batch at its cap -> max_num_seqs up (64 -> 128 -> 256)

GPU compute utilization (the guides' "GPU 利用率 < 70%") is not exported by pagellm; the advisor
uses KV-cache usage (``vllm:kv_cache_usage_perc``) in its place and says so in the evidence.
"""

from __future__ import annotations

import msgspec

from pagellm.config.seeds import SEED_PRACTICE, SEED_SCHEDULING, SEED_V1, SEED_V1_LONG, cite

DELAY_FACTOR_LADDER = (1.0, 0.5, 0.1, 0.05)
"""001 §4.2: 降低 scheduler-delay-factor (1.0 → 0.5 → 0.1 → 0.05)."""
MAX_NUM_SEQS_LADDER = (64, 128, 256)
"""001 §4.2: 提高 max-num-seqs (64 → 128 → 256)."""
SOURCE_TREE = cite(SEED_SCHEDULING, "4.2 参数调优决策树")


class Finding(msgspec.Struct, kw_only=True):
    """One symptom and what to change. Plain data: crosses the HTTP API as JSON."""

    symptom: str
    """high_ttft | low_kv_utilization | queue_buildup | frequent_preemption | kv_exhaustion |
    p99_tail | error_rate."""
    knob: str
    """The engine argument to change (vLLM's name, e.g. ``scheduler_delay_factor``), or
    ``quantization`` / ``model`` where the guide points outside the scheduler."""
    direction: str
    """increase | decrease | enable | investigate."""
    evidence: str
    """The measured numbers that crossed the threshold, with the threshold."""
    rationale: str
    """Why, in the guide's words (translated), plus pagellm's caveats."""
    source: str
    """Guide file and section, e.g. ``001_a001effc249e1005.txt §4.2 参数调优决策树``."""
    suggested: str | None = None
    """A next value when the guide gives one (e.g. "0.1"), else None."""

    def as_dict(self) -> dict:
        return msgspec.to_builtins(self)


class Targets(msgspec.Struct, kw_only=True, frozen=True):
    """The thresholds a symptom must cross; defaults from the guides (``TARGET_SOURCES``)."""

    ttft_s: float = 1.0
    """TTFT P50 above this is high (001 §4.2 "TTFT 很高 (>1s)"; online_chat: 0.2)."""
    low_kv_usage: float = 0.7
    """Mean KV usage below this is low (001 §4.2 "GPU 利用率低 (<70%)", KV usage as proxy)."""
    kv_full: float = 0.95
    """Peak KV usage at or above this is exhaustion (pagellm's choice; 002 §5 aims at 60-80%)."""
    preemptions_per_request: float = 0.05
    """Preemptions per finished request above this are frequent (pagellm's choice)."""
    tail_ratio: float = 3.0
    """P99 above this x P50 (E2E or TTFT) is a tail (pagellm's choice)."""
    queue_waiting: float = 4.0
    """Peak waiting requests at or above this, with some waiting on average, is a queue."""
    queue_time_s: float = 0.5
    """P99 time in the waiting queue above this is a queue too (pagellm's choice)."""
    error_fraction: float = 0.01
    """Failed requests above this fraction is an error-rate symptom (pagellm's choice)."""


TARGET_SOURCES = {
    "ttft_s": cite(SEED_SCHEDULING, "4.2 参数调优决策树"),
    "low_kv_usage": cite(SEED_SCHEDULING, "4.2 参数调优决策树"),
    "kv_full": cite(SEED_PRACTICE, "最佳实践总结 5. 性能目标") + " (pagellm's threshold)",
    "preemptions_per_request": cite(SEED_V1, "任务抢占（Preemption）") + " (pagellm's threshold)",
    "tail_ratio": cite(SEED_SCHEDULING, "4.2 参数调优决策树") + " (pagellm's threshold)",
    "queue_waiting": cite(SEED_SCHEDULING, "4.2 参数调优决策树") + " (pagellm's threshold)",
    "queue_time_s": cite(SEED_SCHEDULING, "4.2 参数调优决策树") + " (pagellm's threshold)",
    "error_fraction": cite(SEED_SCHEDULING, "4.2 参数调优决策树") + " (pagellm's threshold)",
}


class KnobValues(msgspec.Struct, kw_only=True, frozen=True):
    """What the advisor knows of the engine's configuration (None = unknown, e.g. when only
    a remote /metrics was read)."""

    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    scheduler_delay_factor: float | None = None
    preemption_mode: str | None = None
    swap_space: float | None = None
    gpu_memory_utilization: float | None = None
    kv_cache_memory_bytes: int | None = None
    max_model_len: int | None = None
    enable_prefix_caching: bool | None = None
    device: str | None = None
    """cpu or cuda (resolved); on CPU the KV budget is kv_cache_memory_bytes (default 2 GiB)."""

    @classmethod
    def from_engine_config(cls, config, device: str | None = None) -> "KnobValues":
        """From an ``EngineConfig`` (``device``: the resolved platform name, if known)."""
        sched, cache = config.scheduler, config.cache
        return cls(max_num_seqs=sched.max_num_seqs,
                   max_num_batched_tokens=sched.max_num_batched_tokens,
                   scheduler_delay_factor=sched.scheduler_delay_factor,
                   preemption_mode=sched.preemption_mode, swap_space=cache.swap_space,
                   gpu_memory_utilization=cache.gpu_memory_utilization,
                   kv_cache_memory_bytes=cache.kv_cache_memory_bytes,
                   max_model_len=config.model.max_model_len,
                   enable_prefix_caching=cache.enable_prefix_caching, device=device)


class MetricWindow(msgspec.Struct, kw_only=True):
    """What happened over ``duration_s`` seconds. Latencies in seconds; None = not measured
    (a bench result has no gauges; a window with no finished request has no latencies)."""

    duration_s: float
    origin: str = "metrics"
    """metrics (a /metrics window) or bench (a ``bench serving`` result)."""
    num_finished: int = 0
    num_failed: int = 0
    ttft_p50_s: float | None = None
    ttft_p99_s: float | None = None
    tpot_p50_s: float | None = None
    tpot_p99_s: float | None = None
    e2e_p50_s: float | None = None
    e2e_p99_s: float | None = None
    queue_p50_s: float | None = None
    queue_p99_s: float | None = None
    running_mean: float | None = None
    running_max: float | None = None
    waiting_mean: float | None = None
    waiting_max: float | None = None
    waiting_last: float | None = None
    kv_usage_mean: float | None = None
    kv_usage_max: float | None = None
    num_preemptions: int = 0
    prompt_tokens_per_s: float | None = None
    generation_tokens_per_s: float | None = None


class Advisor:
    """Walks the decision tree for one engine configuration (``knobs``) and thresholds."""

    def __init__(self, knobs: KnobValues | None = None, targets: Targets | None = None):
        self.knobs = knobs or KnobValues()
        self.targets = targets or Targets()

    def advise(self, window: MetricWindow) -> list[Finding]:
        """Findings for ``window``, most severe first; [] when nothing crossed a threshold."""
        checks = (self._errors, self._kv_exhaustion, self._preemption, self._queue,
                  self._high_ttft, self._tail, self._low_utilization)
        findings = []
        for check in checks:
            finding = check(window, findings)
            if finding is not None:
                findings.append(finding)
        return findings

    # ---- helpers ---------------------------------------------------------------------------

    def _kv_budget_knob(self) -> tuple[str, str | None, str]:
        """(knob, suggested value, note) that grows the KV cache on this engine."""
        knobs = self.knobs
        if knobs.kv_cache_memory_bytes is not None or knobs.device == "cpu":
            current = knobs.kv_cache_memory_bytes
            suggested = str(current * 2) if current else None
            return ("kv_cache_memory_bytes", suggested,
                    "pagellm sizes the KV cache from kv_cache_memory_bytes when it is set (and on "
                    "CPU, default 2 GiB); gpu_memory_utilization has no effect then")
        util = knobs.gpu_memory_utilization
        suggested = f"{min(0.95, util + 0.03):.2f}" if util is not None and util < 0.95 else None
        return "gpu_memory_utilization", suggested, ""

    def _queue_dominates(self, window: MetricWindow) -> bool:
        return (window.queue_p50_s is not None and window.ttft_p50_s is not None
                and window.queue_p50_s >= 0.5 * window.ttft_p50_s)

    def _running_at_cap(self, window: MetricWindow) -> bool | None:
        if window.running_max is None or self.knobs.max_num_seqs is None:
            return None
        return window.running_max >= self.knobs.max_num_seqs

    # ---- the symptoms ----------------------------------------------------------------------

    def _errors(self, window: MetricWindow, _found) -> Finding | None:
        total = window.num_finished + window.num_failed
        if not total or window.num_failed / total <= self.targets.error_fraction:
            return None
        knob, suggested, note = self._kv_budget_knob()
        evidence = (f"{window.num_failed} of {total} requests failed "
                    f"({100 * window.num_failed / total:.1f}% > "
                    f"{100 * self.targets.error_fraction:.1f}%)")
        if window.kv_usage_max is not None and window.kv_usage_max >= self.targets.kv_full:
            return Finding(
                symptom="error_rate", knob="max_model_len", direction="decrease",
                evidence=evidence + f"; KV usage peaked at {100 * window.kv_usage_max:.0f}%",
                rationale="Errors with a full KV cache: the guide's OOM order is max_model_len "
                          "down first, then quantization, then tensor_parallel_size up, then "
                          "gpu_memory_utilization. " + note,
                source=cite(SEED_V1_LONG, "五、vLLM 关键参数配置建议总结"))
        return Finding(
            symptom="error_rate", knob="model", direction="investigate", evidence=evidence,
            rationale="Errors without KV pressure are not a scheduling problem: read the server "
                      "log (the error bodies name the cause) before changing a knob.",
            source=SOURCE_TREE)

    def _kv_exhaustion(self, window: MetricWindow, _found) -> Finding | None:
        peak = window.kv_usage_max
        if peak is None or peak < self.targets.kv_full:
            return None
        if not ((window.waiting_max or 0) > 0 or window.num_preemptions > 0):
            return None         # full but nobody waits: the cache is just well used
        knob, suggested, note = self._kv_budget_knob()
        return Finding(
            symptom="kv_exhaustion", knob=knob, direction="increase", suggested=suggested,
            evidence=(f"KV cache usage peaked at {100 * peak:.0f}% (>= "
                      f"{100 * self.targets.kv_full:.0f}%) with up to {window.waiting_max or 0:g} "
                      f"requests waiting and {window.num_preemptions} preemptions"),
            rationale=("The KV cache is the limit: give it more memory; if that is not possible, "
                       "lower max_model_len, quantize the model, or raise tensor_parallel_size "
                       "(the guide's OOM order). In pagellm KV blocks are allocated as tokens "
                       "arrive, so max_model_len reserves nothing per request: it only bounds "
                       "how much one request can take. " + note).strip(),
            source=cite(SEED_SCHEDULING, "4.2 参数调优决策树") + "; "
                   + cite(SEED_V1_LONG, "四、内存优化与调优建议"))

    def _preemption(self, window: MetricWindow, _found) -> Finding | None:
        finished = max(window.num_finished, 1)
        rate = window.num_preemptions / finished
        if window.num_preemptions == 0 or rate <= self.targets.preemptions_per_request:
            return None
        evidence = (f"{window.num_preemptions} preemptions for {window.num_finished} finished "
                    f"requests ({rate:.2f} per request > {self.targets.preemptions_per_request})")
        if self.knobs.preemption_mode == "swap":
            current = self.knobs.swap_space
            return Finding(
                symptom="frequent_preemption", knob="swap_space", direction="increase",
                suggested=str(max(8.0, (current or 0) * 2)), evidence=evidence,
                rationale="Frequent preemption in swap mode: a larger swap space lets more "
                          "preempted requests keep their KV blocks instead of failing over to "
                          "recompute (重度 8-16 GiB).",
                source=SOURCE_TREE)
        knob, suggested, note = self._kv_budget_knob()
        return Finding(
            symptom="frequent_preemption", knob=knob, direction="increase", suggested=suggested,
            evidence=evidence,
            rationale=("Preemption by recompute re-runs the evicted requests' prompts and adds "
                       "end-to-end latency: give the KV cache more memory; else lower "
                       "max_num_seqs or max_num_batched_tokens, or raise tensor_parallel_size. "
                       + note).strip(),
            source=cite(SEED_V1, "任务抢占（Preemption）"))

    def _queue(self, window: MetricWindow, found: list[Finding]) -> Finding | None:
        targets = self.targets
        by_count = ((window.waiting_max or 0) >= targets.queue_waiting
                    and (window.waiting_mean or 0) >= 1)
        by_time = window.queue_p99_s is not None and window.queue_p99_s > targets.queue_time_s
        if not (by_count or by_time):
            return None
        counts = (f"up to {window.waiting_max or 0:g} requests waiting (mean "
                  f"{window.waiting_mean or 0:.1f}) in the sampled gauges")
        timing = (f"queue time P99 {_ms(window.queue_p99_s)}"
                  + (f" > {_ms(targets.queue_time_s)}" if by_time else ""))
        # lead with what crossed the threshold: a wait shorter than the gauges' sampling
        # interval shows in the queue-time histogram only
        evidence = (f"{counts}; {timing}" if by_count else f"{timing}; {counts}") + \
            f"; running at most {window.running_max or 0:g}"
        if any(f.symptom == "kv_exhaustion" for f in found):
            return None         # more sequences cannot fit: exhaustion names the fix
        at_cap = self._running_at_cap(window)
        if at_cap is False:
            return Finding(
                symptom="queue_buildup", knob="max_num_batched_tokens", direction="increase",
                evidence=evidence + f" (below max_num_seqs={self.knobs.max_num_seqs})",
                rationale="Requests wait although the running batch is below max_num_seqs and "
                          "the KV cache has room: the step's token budget admits them slowly. "
                          "A larger budget admits more prompt tokens per step.",
                source=cite(SEED_V1_LONG, "4. 批处理 Token 数 max_num_batched_tokens"))
        return Finding(
            symptom="queue_buildup", knob="max_num_seqs", direction="increase",
            suggested=_next_up(self.knobs.max_num_seqs, MAX_NUM_SEQS_LADDER),
            evidence=evidence + ("" if at_cap is None
                                 else f" = max_num_seqs={self.knobs.max_num_seqs}"),
            rationale="The waiting queue builds up while the running batch is full: raise "
                      "max_num_seqs, and consider scaling out (more replicas, "
                      "data_parallel_size).",
            source=SOURCE_TREE)

    def _high_ttft(self, window: MetricWindow, found: list[Finding]) -> Finding | None:
        ttft = window.ttft_p50_s
        if ttft is None or ttft <= self.targets.ttft_s:
            return None
        evidence = f"TTFT P50 {_ms(ttft)} > target {_ms(self.targets.ttft_s)}"
        delay = self.knobs.scheduler_delay_factor
        if delay is None or delay > DELAY_FACTOR_LADDER[-1]:
            return Finding(
                symptom="high_ttft", knob="scheduler_delay_factor", direction="decrease",
                suggested=_next_down(delay, DELAY_FACTOR_LADDER),
                evidence=evidence + ("" if delay is None else f"; scheduler_delay_factor={delay}"),
                rationale="A high delay factor holds new prompts back to batch them: lower it "
                          "so new requests join the running batch almost at once.",
                source=SOURCE_TREE)
        if self._queue_dominates(window) and any(f.symptom == "queue_buildup" for f in found):
            return None         # the queue finding names the fix for this TTFT
        if self.knobs.enable_prefix_caching is False:
            return Finding(
                symptom="high_ttft", knob="enable_prefix_caching", direction="enable",
                evidence=evidence, rationale="Prefix caching skips the shared part of prompts "
                "(system prompts, multi-turn history) and lowers TTFT.",
                source=cite(SEED_PRACTICE, "3.2 常见问题"))
        return Finding(
            symptom="high_ttft", knob="model", direction="investigate",
            evidence=evidence + f"; scheduler_delay_factor is already {delay}",
            rationale="The delay factor is already at or below 0.05: the guide says to look at "
                      "model load, prompt length and network I/O rather than the scheduler.",
            source=SOURCE_TREE)

    def _tail(self, window: MetricWindow, found: list[Finding]) -> Finding | None:
        pairs = (("E2E", window.e2e_p50_s, window.e2e_p99_s),
                 ("TTFT", window.ttft_p50_s, window.ttft_p99_s))
        for name, p50, p99 in pairs:
            if p50 and p99 and p99 > self.targets.tail_ratio * p50:
                break
        else:
            return None
        evidence = f"{name} P99 {_ms(p99)} is {p99 / p50:.1f}x P50 {_ms(p50)}"
        symptoms = {f.symptom for f in found}
        if "queue_buildup" in symptoms or "frequent_preemption" in symptoms:
            cause = "queue_buildup" if "queue_buildup" in symptoms else "frequent_preemption"
            knob = next(f.knob for f in found if f.symptom == cause)
            return Finding(
                symptom="p99_tail", knob=knob, direction="increase", evidence=evidence +
                f"; explained by {cause}",
                rationale=f"The tail is time spent queueing or preempted ({cause}), a "
                          "scheduling problem: the fix is that finding's.",
                source=SOURCE_TREE)
        return Finding(
            symptom="p99_tail", knob="quantization", direction="investigate", evidence=evidence +
            "; no queue build-up or frequent preemption in the window",
            rationale="Single requests are slow by themselves (long prompts or outputs): that is "
                      "a model / quantization question, not a scheduling one.",
            source=SOURCE_TREE)

    def _low_utilization(self, window: MetricWindow, found) -> Finding | None:
        usage = window.kv_usage_mean
        if usage is None or usage >= self.targets.low_kv_usage or found:
            return None
        if (window.waiting_max or 0) == 0:
            return None         # little load: nothing to tune
        at_cap = self._running_at_cap(window)
        if at_cap is False:
            return None
        return Finding(
            symptom="low_kv_utilization", knob="max_num_seqs", direction="increase",
            suggested=_next_up(self.knobs.max_num_seqs, MAX_NUM_SEQS_LADDER),
            evidence=(f"KV cache usage {100 * usage:.0f}% (< {100 * self.targets.low_kv_usage:.0f}"
                      f"%, KV usage standing in for GPU utilization) with requests waiting and "
                      f"at most {window.running_max or 0:g} running"),
            rationale="Few sequences run while memory sits idle: raise max_num_seqs so more "
                      "requests share each step.",
            source=SOURCE_TREE)


def format_line(findings: list[Finding]) -> str:
    """One log line: ``Advisor: <symptom> -> <direction> <knob> [to <v>]; ...`` or ``Advisor:
    no finding``."""
    if not findings:
        return "Advisor: no finding"
    parts = []
    for finding in findings:
        to = f" to {finding.suggested}" if finding.suggested else ""
        parts.append(f"{finding.symptom} -> {finding.direction} {finding.knob}{to} "
                     f"({finding.evidence})")
    return "Advisor: " + "; ".join(parts)


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.0f} ms"


def _next_down(current: float | None, ladder: tuple[float, ...]) -> str:
    """The first ladder value below ``current`` (the ladder's second step when unknown)."""
    if current is None:
        return str(ladder[2])
    for value in ladder:
        if value < current:
            return str(value)
    return str(ladder[-1])


def _next_up(current: int | None, ladder: tuple[int, ...]) -> str | None:
    """The first ladder value above ``current``, else double it."""
    if current is None:
        return None
    for value in ladder:
        if value > current:
            return str(value)
    return str(current * 2)


def targets_for_scenario(scenario: str | None) -> Targets:
    """The thresholds for a scenario: its TTFT goal when the guide gives one (online_chat:
    TTFT < 200 ms, 001 §4.1), else the decision tree's defaults."""
    from pagellm.config.presets import SCENARIOS

    preset = SCENARIOS.get(scenario) if scenario else None
    if preset is None or preset.ttft_target_s is None:
        return Targets()
    return Targets(ttft_s=preset.ttft_target_s)
