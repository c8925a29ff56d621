"""The guides' configuration anti-patterns, checked at start-up (``pagellm serve`` logs each as
a warning) and by ``pagellm check``.

``lint_config(config)`` takes an ``EngineConfig`` (from ``create_engine_config``; its
``value_sources`` tell an explicit value from a default) and returns ``LintFinding``s, each
citing the guide section of its rule. Pure: no I/O, no logging.
"""

from __future__ import annotations

import msgspec

from pagellm.config.engine_args import EngineConfig
from pagellm.config.presets import SCENARIOS
from pagellm.config.seeds import SEED_GUIDE, SEED_SCHEDULING, SEED_V1_LONG, cite

ANTI_PATTERNS = cite(SEED_SCHEDULING, "4.2 常见反模式(Anti-Patterns)")
ONLINE_SCENARIOS = ("online_chat", "api_service")
CHAT_MAX_MODEL_LEN = 4096
"""001 §4.2 anti-patterns: 聊天用 4096, RAG 用 16384."""
LONG_MAX_MODEL_LEN = 32768
MAX_NUM_SEQS_LIMIT = 512
"""000 §3 (max-num-seqs): 512 is the guide's high-concurrency value; 1024 is the anti-pattern."""
BATCH_DELAY_FACTOR = SCENARIOS["batch_processing"].values[1].value    # 0.5
MIN_SWAP_SPACE_GIB = 4.0


class LintFinding(msgspec.Struct, kw_only=True):
    rule: str
    severity: str
    """warning (the guide calls it an anti-pattern) or info (worth a look)."""
    message: str
    fix: str
    source: str

    def line(self) -> str:
        return f"{self.rule}: {self.message}; {self.fix} [{self.source}]"


def lint_config(config: EngineConfig) -> list[LintFinding]:
    """Every anti-pattern ``config`` shows, in rule order; [] for a clean configuration."""
    rules = (_chat_max_model_len, _zero_delay_factor, _too_many_seqs, _no_swap_space,
             _batch_settings_online, _chat_without_prefix_caching, _memory_utilization)
    return [finding for rule in rules if (finding := rule(config)) is not None]


def _source(config: EngineConfig, name: str) -> str:
    return config.value_sources.get(name, "default")


def _chat_max_model_len(config: EngineConfig) -> LintFinding | None:
    length = config.model.max_model_len
    if length is None:
        return None
    chat = config.scenario.scenario == "online_chat"
    if not ((chat and length > CHAT_MAX_MODEL_LEN) or length >= LONG_MAX_MODEL_LEN):
        return None
    where = "for the online_chat scenario" if chat else "(if this serves chat)"
    return LintFinding(
        rule="max_model_len_for_chat", severity="warning",
        message=f"max_model_len={length} {where}: the guide finds long limits waste KV cache on "
                "short conversations (in pagellm KV blocks are allocated as tokens arrive, so "
                "the cost is one request able to take that much, not a reservation)",
        fix=f"chat: --max-model-len {CHAT_MAX_MODEL_LEN}; RAG: 16384", source=ANTI_PATTERNS)


def _zero_delay_factor(config: EngineConfig) -> LintFinding | None:
    if config.scheduler.scheduler_delay_factor != 0:
        return None
    explicit = _source(config, "scheduler_delay_factor") == "flag"
    return LintFinding(
        rule="delay_factor_zero", severity="warning" if explicit else "info",
        message="scheduler_delay_factor=0: every step admits new prompts at once, so steps run "
                "small batches" + ("" if explicit else " (pagellm's and vLLM's default; the "
                                   "guide's presets never use 0)"),
        fix="--scheduler-delay-factor 0.05 to 0.15 (online_chat 0.05, api_service 0.1), or "
            "--scenario", source=ANTI_PATTERNS)


def _too_many_seqs(config: EngineConfig) -> LintFinding | None:
    seqs = config.scheduler.max_num_seqs
    if seqs <= MAX_NUM_SEQS_LIMIT:
        return None
    return LintFinding(
        rule="max_num_seqs_too_large", severity="warning",
        message=f"max_num_seqs={seqs}: too many concurrent requests leave each too little "
                "compute per step",
        fix="set it from the real QPS, usually 64-256", source=ANTI_PATTERNS)


def _no_swap_space(config: EngineConfig) -> LintFinding | None:
    if config.scheduler.preemption_mode != "swap" or config.cache.swap_space >= MIN_SWAP_SPACE_GIB:
        return None
    return LintFinding(
        rule="swap_space_too_small", severity="warning",
        message=f"preemption_mode=swap with swap_space={config.cache.swap_space:g} GiB: "
                "preempted requests cannot keep their KV blocks, and rejections soar when the "
                "cache is full",
        fix=f"--swap-space {MIN_SWAP_SPACE_GIB:g} or more (8-16 for heavy preemption), or "
            "--preemption-mode recompute", source=ANTI_PATTERNS)


def _batch_settings_online(config: EngineConfig) -> LintFinding | None:
    scenario = config.scenario.scenario
    delay = config.scheduler.scheduler_delay_factor
    if scenario not in ONLINE_SCENARIOS or delay < BATCH_DELAY_FACTOR:
        return None
    recommended = next(v.value for v in SCENARIOS[scenario].values
                       if v.name == "scheduler_delay_factor")
    return LintFinding(
        rule="batch_settings_on_online_scenario", severity="warning",
        message=f"scenario {scenario} with scheduler_delay_factor={delay} (the batch_processing "
                "value): online requests wait to be batched",
        fix=f"--scheduler-delay-factor {recommended} (the {scenario} preset)",
        source=ANTI_PATTERNS)


def _chat_without_prefix_caching(config: EngineConfig) -> LintFinding | None:
    if config.scenario.scenario != "online_chat" or config.cache.enable_prefix_caching:
        return None
    return LintFinding(
        rule="chat_without_prefix_caching", severity="warning",
        message="online_chat without prefix caching: a shared system prompt is recomputed for "
                "every request", fix="drop --no-enable-prefix-caching",
        source=cite(SEED_SCHEDULING, "4.1 场景驱动的参数配置"))


def _memory_utilization(config: EngineConfig) -> LintFinding | None:
    util = config.cache.gpu_memory_utilization
    if util <= 0.95 or config.cache.kv_cache_memory_bytes is not None:
        return None
    return LintFinding(
        rule="gpu_memory_utilization_high", severity="info",
        message=f"gpu_memory_utilization={util}: above the guides' aggressive 0.95, out-of-memory "
                "errors become likely", fix="raise it step by step while watching memory; "
                "back off to 0.9 on OOM",
        source=cite(SEED_GUIDE, "1. GPU 内存利用率") + "; "
               + cite(SEED_V1_LONG, "1. GPU 显存利用率"))
