"""The knobs ``pagellm tune`` searches, and their ranges.

A knob is an engine argument (vLLM's name) with a range: ``--knob max_num_seqs=8:256:log``
(integers 8..256, sampled on a log scale), ``--knob scheduler_delay_factor=0:0.5`` (floats),
``--knob block_size=8,16,32`` or ``--knob enable_chunked_prefill=true,false`` (choices), or a
bare ``--knob max_num_seqs`` for the default range below. Without ``--knob`` the default set
is searched: max_num_seqs, max_num_batched_tokens, scheduler_delay_factor,
enable_chunked_prefill, block_size, plus gpu_memory_utilization on CUDA (it sizes nothing on
CPU, where the KV cache is kv_cache_memory_bytes) and tensor_parallel_size /
data_parallel_size when several GPUs are visible.

Default ranges come from the seeds: max_num_seqs 64..256 across scenarios with "usually
64-256" and 1024 an anti-pattern (001 §4.1, §4.3); scheduler_delay_factor 0.05..0.5 (001 §4.1,
0 is an anti-pattern: the range starts at 0 anyway so the search can confirm it); gpu memory
utilization 0.90..0.95 (001 §4.1). CPU ranges are scaled down to what a CPU serves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pagellm.config.engine_args import engine_arg_fields
from pagellm.errors import ClientError


@dataclass(frozen=True)
class Knob:
    name: str
    """Engine argument (vLLM's name), e.g. max_num_seqs."""
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None
    """Set for a categorical knob (then low/high are None)."""
    kind: type = int
    """int, float or bool: the engine argument's type."""

    def suggest(self, trial):
        """This knob's value for an Optuna trial."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind is int:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        if self.log:
            return trial.suggest_float(self.name, float(self.low), float(self.high), log=True)
        # steps of 1/100 of the range: configs stay readable (0.15, not 0.1430378732744839)
        step = _round_step((float(self.high) - float(self.low)) / 100)
        high = round(self.low + step * math.floor((self.high - self.low) / step + 1e-9), 9)
        return round(trial.suggest_float(self.name, float(self.low), float(high), step=step), 6)

    def describe(self) -> str:
        if self.choices is not None:
            return ",".join(str(choice).lower() if isinstance(choice, bool) else str(choice)
                            for choice in self.choices)
        return f"{self.low}..{self.high}" + (" (log)" if self.log else "")


def _round_step(raw: float) -> float:
    """The largest of 1, 2, 5 x 10^k at or under ``raw``."""
    exponent = math.floor(math.log10(raw))
    for mantissa in (5, 2, 1):
        if mantissa * 10**exponent <= raw:
            return mantissa * 10**exponent
    return 10**exponent


def _default_ranges(on_cuda: bool) -> dict[str, Knob]:
    if on_cuda:
        seqs, tokens = Knob("max_num_seqs", 16, 512, True), Knob(
            "max_num_batched_tokens", 1024, 16384, True)
    else:   # a CPU step costs ms per token: small batches and budgets (SchedulerConfig)
        seqs, tokens = Knob("max_num_seqs", 1, 64, True), Knob(
            "max_num_batched_tokens", 64, 1024, True)
    knobs = [seqs, tokens, Knob("scheduler_delay_factor", 0.0, 0.5, kind=float),
             Knob("enable_chunked_prefill", choices=(True, False), kind=bool),
             Knob("block_size", choices=(8, 16, 32), kind=int)]
    if on_cuda:
        knobs.append(Knob("gpu_memory_utilization", 0.80, 0.95, kind=float))
    return {knob.name: knob for knob in knobs}


def default_knobs(num_gpus: int) -> list[Knob]:
    """The default search space on a machine with ``num_gpus`` CUDA devices (0 = CPU)."""
    knobs = list(_default_ranges(num_gpus > 0).values())
    if num_gpus > 1:
        sizes = tuple(size for size in (1, 2, 4, 8) if size <= num_gpus)
        knobs += [Knob("tensor_parallel_size", choices=sizes),
                  Knob("data_parallel_size", choices=sizes)]
    return knobs


def parse_knob(text: str, num_gpus: int) -> Knob:
    """One ``--knob`` value (see the module docstring). ClientError naming the knob for an
    unknown engine argument, an empty or reversed range, or a value of the wrong type."""
    name, _, spec = text.partition("=")
    name = name.strip().replace("-", "_")
    fields = engine_arg_fields()
    if name not in fields:
        import difflib
        close = difflib.get_close_matches(name, fields, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ClientError(f"--knob {name!r} is not an engine argument{hint}", param="knob")
    kind = _field_kind(name)
    if not spec:
        defaults = {knob.name: knob for knob in default_knobs(max(num_gpus, 2))}
        defaults.update(_default_ranges(num_gpus > 0))
        if name not in defaults:
            raise ClientError(f"--knob {name} has no default range; give one, e.g. "
                              f"{name}=LOW:HIGH or {name}=A,B", param="knob")
        return defaults[name]
    if kind is bool or "," in spec:
        choices = tuple(_convert(name, item.strip(), kind) for item in spec.split(","))
        return Knob(name, choices=choices, kind=kind)
    return _range_knob(name, spec, kind)


def _range_knob(name: str, spec: str, kind: type) -> Knob:
    parts = spec.split(":")
    log = len(parts) == 3 and parts[2] == "log"
    if len(parts) not in (2, 3) or (len(parts) == 3 and not log):
        raise ClientError(f"--knob {name}={spec}: give LOW:HIGH, LOW:HIGH:log or A,B,C",
                          param="knob")
    low, high = (_convert(name, part, kind) for part in parts[:2])
    if not low < high or (log and low <= 0):
        raise ClientError(f"--knob {name}={spec}: need LOW < HIGH (and LOW > 0 with log)",
                          param="knob")
    return Knob(name, low, high, log, kind=kind)


def _field_kind(name: str) -> type:
    import typing

    cls, field = engine_arg_fields()[name]
    hint = typing.get_type_hints(cls)[name]
    args = [arg for arg in typing.get_args(hint) if arg is not type(None)] or [hint]
    kind = args[0]
    if kind not in (int, float, bool, str):
        raise ClientError(f"--knob {name}: a {kind} argument cannot be searched", param="knob")
    return kind


def _convert(name: str, text: str, kind: type):
    if kind is bool:
        if text.lower() not in ("true", "false"):
            raise ClientError(f"--knob {name}: choices are true,false; got {text!r}",
                              param="knob")
        return text.lower() == "true"
    try:
        value = kind(text)
    except ValueError:
        raise ClientError(f"--knob {name}: {text!r} is not a valid {kind.__name__}",
                          param="knob") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ClientError(f"--knob {name}: {text!r} is not finite", param="knob")
    return value


def knobs_from_args(specs: list[str] | None, num_gpus: int) -> list[Knob]:
    """The knobs of the ``--knob`` values, or the default set without any."""
    if not specs:
        return default_knobs(num_gpus)
    knobs = [parse_knob(spec, num_gpus) for spec in specs]
    names = [knob.name for knob in knobs]
    if len(set(names)) != len(names):
        raise ClientError("--knob: each knob once", param="knob")
    return knobs


def constraint_violation(values: dict, fixed: dict, num_gpus: int,
                         max_model_len: int | None) -> str | None:
    """Why a proposed configuration cannot start (checked before launching a server), or
    None. ``values``: the proposed knobs; ``fixed``: the fixed engine arguments."""
    merged = {**fixed, **values}
    world = merged.get("tensor_parallel_size", 1) * merged.get("pipeline_parallel_size", 1) \
        * merged.get("data_parallel_size", 1)
    if num_gpus > 1 and world > num_gpus:
        return f"tp x pp x dp = {world} GPUs, but only {num_gpus} are visible"
    budget = merged.get("max_num_batched_tokens")
    if (merged.get("enable_chunked_prefill") is False and budget is not None
            and max_model_len is not None and budget < max_model_len):
        return (f"max_num_batched_tokens={budget} < max_model_len={max_model_len} with "
                "chunked prefill off")
    return None
