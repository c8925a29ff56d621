"""Scenario presets: the tuning guide's recommended engine arguments per deployment scenario,
kept as data with the guide section each number comes from.

``--scenario online_chat|api_service|batch_processing|mixed_workload`` (``LLM(scenario=...)``)
fills every engine argument the user did not give from ``SCENARIOS[name].values``; an explicit
flag or keyword always wins. ``apply_scenario`` returns the merged arguments and, per name,
where its value came from ("flag" or "scenario"; everything else is "default").

Where the guide names a knob that pagellm does not have, or that means something else here,
the preset lists it in ``not_applied`` with the reason instead of dropping it silently.
"""

from __future__ import annotations

from dataclasses import dataclass

from pagellm.config.seeds import SEED_SCHEDULING, cite

PRESET_SOURCE = cite(SEED_SCHEDULING, "4.1 场景驱动的参数配置")
"""Every number of the four presets comes from the guide's scenario table (配置速查表)."""


@dataclass(frozen=True)
class PresetValue:
    name: str
    """Engine argument (vLLM's name) or, in ``not_applied``, the guide's flag."""
    value: object
    source: str = PRESET_SOURCE
    note: str = ""
    """What differs in pagellm (why a value is not applied, or what it means here)."""


@dataclass(frozen=True)
class ScenarioPreset:
    name: str
    title: str
    """The guide's name for the scenario."""
    values: tuple[PresetValue, ...]
    """Engine arguments the preset sets (unless given explicitly)."""
    not_applied: tuple[PresetValue, ...]
    """The guide's recommendations pagellm does not apply as engine arguments, and why."""
    ttft_target_s: float | None
    """The scenario's TTFT goal (the advisor's high-TTFT threshold), None = the tree's 1 s."""
    p99_latency_target_s: float | None
    rationale: str
    server_flags: tuple[str, ...] = ()
    """``pagellm serve`` flags the preset turns on (not engine arguments)."""


_AUTO_BATCHED_TOKENS = PresetValue(
    "max_num_batched_tokens", "auto",
    note="'auto' = pagellm's per-device default (8192 on CUDA, 256 on CPU); left unset")
_SWAP_NOTE = ("only used with preemption_mode=swap; pagellm preempts by recompute by default "
              "(003 §任务抢占: V1's default), which the preset does not change")
_MAX_MODEL_LEN_NOTE = ("capped at the model's max_position_embeddings; pagellm allocates KV "
                       "blocks as tokens arrive, so this bounds one request rather than "
                       "reserving KV per request")

SCENARIOS: dict[str, ScenarioPreset] = {
    "online_chat": ScenarioPreset(
        name="online_chat", title="在线聊天 / 实时对话",
        values=(PresetValue("max_num_seqs", 64),
                PresetValue("scheduler_delay_factor", 0.05),
                PresetValue("max_model_len", 4096, note=_MAX_MODEL_LEN_NOTE),
                PresetValue("gpu_memory_utilization", 0.90),
                PresetValue("enable_prefix_caching", True)),
        not_applied=(_AUTO_BATCHED_TOKENS,),
        ttft_target_s=0.2, p99_latency_target_s=None,
        rationale="A low delay factor lets new requests join the running batch almost at once; "
                  "a small max_model_len; prefix caching computes a shared system prompt once."),
    "api_service": ScenarioPreset(
        name="api_service", title="通用 LLM API 服务",
        values=(PresetValue("max_num_seqs", 128),
                PresetValue("scheduler_delay_factor", 0.1),
                PresetValue("max_model_len", 8192,
                            note="the guide says 8192 or 16384; 8192 is its printed command. "
                                 + _MAX_MODEL_LEN_NOTE),
                PresetValue("gpu_memory_utilization", 0.92),
                PresetValue("enable_prefix_caching", True),
                PresetValue("swap_space", 4.0, note=_SWAP_NOTE)),
        not_applied=(_AUTO_BATCHED_TOKENS,),
        ttft_target_s=None, p99_latency_target_s=5.0,
        rationale="delay factor 0.1 balances TTFT and throughput; a longer max_model_len for "
                  "RAG documents; swap space lets long requests be preempted now and then."),
    "batch_processing": ScenarioPreset(
        name="batch_processing", title="离线批量处理 / 评估",
        values=(PresetValue("max_num_seqs", 256),
                PresetValue("scheduler_delay_factor", 0.5),
                PresetValue("max_model_len", 16384,
                            note="the guide says 16384 or 32768. " + _MAX_MODEL_LEN_NOTE),
                PresetValue("gpu_memory_utilization", 0.95)),
        not_applied=(PresetValue("max_num_batched_tokens", "auto or 8192+",
                                 note="left at pagellm's per-device default (8192 on CUDA); 8192 "
                                      "on CPU would stall every stream behind one prompt"),
                     PresetValue("disable_log_requests", True,
                                 note="a server flag, not an engine argument: pagellm serve "
                                      "turns it on (see server_flags); LLM() logs no requests")),
        ttft_target_s=None, p99_latency_target_s=None,
        rationale="A high delay factor gathers more prompts per step: a larger effective batch "
                  "and higher utilization; no per-request log lines at high throughput.",
        server_flags=("disable_log_requests",)),
    "mixed_workload": ScenarioPreset(
        name="mixed_workload", title="混合负载 (长短请求共存)",
        values=(PresetValue("max_num_seqs", 128),
                PresetValue("scheduler_delay_factor", 0.15),
                PresetValue("max_model_len", 16384, note=_MAX_MODEL_LEN_NOTE),
                PresetValue("gpu_memory_utilization", 0.90),
                PresetValue("swap_space", 8.0, note=_SWAP_NOTE),
                PresetValue("enable_prefix_caching", True)),
        not_applied=(_AUTO_BATCHED_TOKENS,),
        ttft_target_s=None, p99_latency_target_s=None,
        rationale="A middle delay factor between long and short requests; a larger swap space "
                  "for frequent preemption; prefix caching for shared system prompts."),
}


@dataclass(frozen=True)
class ScenarioConfig:
    scenario: str | None = None
    """Start from the tuning guide's recommended arguments for online_chat, api_service,
    batch_processing or mixed_workload (explicit arguments win; see pagellm.config.presets)."""

    def __post_init__(self) -> None:
        from pagellm.config.checks import check_choice

        check_choice("scenario", self.scenario, (None, *SCENARIOS))


def apply_scenario(kwargs: dict) -> tuple[dict, dict[str, str]]:
    """(``kwargs`` with the scenario's values added where absent, {name: "flag" | "scenario"}).
    Without ``scenario`` in ``kwargs`` the arguments come back unchanged. ClientError for an
    unknown scenario (naming the four)."""
    sources = {name: "flag" for name in kwargs}
    name = kwargs.get("scenario")
    if name is None:
        return dict(kwargs), sources
    ScenarioConfig(name)        # validates the name
    merged = dict(kwargs)
    for value in SCENARIOS[name].values:
        if value.name not in merged:
            merged[value.name] = value.value
            sources[value.name] = "scenario"
    return merged, sources
