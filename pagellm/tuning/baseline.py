"""The baseline ``pagellm tune`` compares its best configuration with: the guide's preset for
the scenario closest to the workload (or a configuration file the user gives), measured on the
same workload with the same SLOs.

``closest_scenario`` maps the workload to one of the guide's four scenarios by the traits
the guide lists for each (001 §4.1 配置速查表): requests submitted all at once with no TTFT
SLO -> batch_processing; prompt lengths spread over more than 10x -> mixed_workload; short
prompts (<= 500 tokens) and outputs (<= 300) or a TTFT SLO <= 200 ms -> online_chat; else
api_service. ``preset_values`` reads the preset's engine arguments from
``pagellm.config.presets`` where this build has it (None otherwise); ``measure_baseline`` takes
any preset as a plain ``{engine argument: value}`` dict.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pagellm.config.engine_args import engine_arg_fields
from pagellm.tuning.slo import SLO
from pagellm.tuning.trial_runner import ServerStartError, Workload, measure

logger = logging.getLogger(__name__)

CHAT_MAX_PROMPT_LEN = 500
"""001 §4.1 online_chat: 平均序列长度短 (100-500 tokens)."""
CHAT_MAX_OUTPUT_LEN = 300
"""001 §4.1 online_chat: 输出长度中等 (100-300 tokens)."""
CHAT_TTFT_MS = 200.0
"""001 §4.1 online_chat: TTFT 要求 < 200ms."""
MIXED_LENGTH_SPREAD = 10.0
"""001 §4.1 mixed_workload: 序列长度差异巨大 (10 - 32000+ tokens); 10x is our threshold."""


@dataclass
class Baseline:
    name: str
    """What it is, e.g. "online_chat preset (001 §4.1)"."""
    config: dict
    """The ``pagellm serve --config`` mapping measured."""
    reason: str = ""
    """Why this scenario (the traits that matched)."""
    runs: list[dict] = field(default_factory=list)
    note: str = ""
    """What went wrong (a server that did not start), or what was left out of the preset."""

    @property
    def best(self) -> dict | None:
        feasible = [run for run in self.runs if not run["violated"]]
        if feasible:
            return max(feasible, key=lambda run: run["goodput"])
        return self.runs[-1] if self.runs else None

    @property
    def goodput(self) -> float:
        best = self.best
        return best["goodput"] if best is not None and not best["violated"] else 0.0


def closest_scenario(workload: Workload, slos: Sequence[SLO]) -> tuple[str, str]:
    """(scenario name, the traits that decided it); see the module docstring."""
    prompt_lens = [sample.prompt_len for sample in workload.samples]
    output_lens = [sample.expected_output_len for sample in workload.samples]
    ttft_bounds = [slo.bound_ms for slo in slos if slo.metric == "ttft"]
    if all(math.isinf(rate) for rate in workload.request_rates) and not ttft_bounds:
        return "batch_processing", "all requests submitted at once and no TTFT SLO"
    spread = max(prompt_lens) / max(1, min(prompt_lens))
    if spread > MIXED_LENGTH_SPREAD:
        return "mixed_workload", f"prompt lengths spread {spread:.0f}x"
    mean_prompt = sum(prompt_lens) / len(prompt_lens)
    mean_output = sum(output_lens) / len(output_lens)
    if ttft_bounds and min(ttft_bounds) <= CHAT_TTFT_MS:
        return "online_chat", f"TTFT SLO {min(ttft_bounds):g} ms <= {CHAT_TTFT_MS:g} ms"
    if mean_prompt <= CHAT_MAX_PROMPT_LEN and mean_output <= CHAT_MAX_OUTPUT_LEN:
        return "online_chat", (f"short prompts ({mean_prompt:.0f} tokens) and outputs "
                               f"({mean_output:.0f} tokens)")
    return "api_service", (f"prompts of {mean_prompt:.0f} tokens, outputs of "
                           f"{mean_output:.0f}, under a steady request rate")


def preset_values(scenario: str) -> dict | None:
    """The guide preset's engine arguments for ``scenario`` from ``pagellm.config.presets``
    (the scenario presets), or None when this build has no presets."""
    try:
        from pagellm.config.presets import SCENARIOS
    except ImportError:
        return None
    preset = SCENARIOS.get(scenario)
    if preset is None:
        return None
    return {value.name: value.value for value in preset.values}


def baseline_config(model: str, fixed: dict, preset: dict) -> tuple[dict, list[str]]:
    """(the serve config of ``preset`` over the model and fixed flags, the preset's names
    left out). The fixed flags win, as explicit flags win over ``--scenario``; names that are
    not engine arguments here are left out (and reported)."""
    from pagellm.tuning.tuner import serve_config

    fields = engine_arg_fields()
    usable = {name: value for name, value in preset.items() if name in fields}
    left_out = sorted(set(preset) - set(usable))
    return serve_config(model, {**usable, **fixed}, {}), left_out


def measure_baseline(baseline: Baseline, workload: Workload, slos: Sequence[SLO],
                     out_dir: Path) -> Baseline:
    """Measure ``baseline.config`` like a trial (``baseline.yaml`` / ``baseline.log`` in
    ``out_dir``); a server that does not start is noted, not raised."""
    from pagellm.tuning.tuner import write_config

    config_file = write_config(out_dir / "baseline.yaml", baseline.config)
    try:
        runs = measure(config_file, out_dir / "baseline.log", workload, slos)
        baseline.runs = [run.to_dict() for run in runs]
    except ServerStartError as error:
        baseline.note = (baseline.note + "; " if baseline.note else "") + \
            f"the baseline server failed to start: {str(error)[-800:]}"
        logger.warning("%s", baseline.note)
    return baseline
