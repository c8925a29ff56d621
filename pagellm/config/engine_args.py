"""One source for every engine argument: the per-concern config dataclasses.

``EngineArgs`` routes flat keyword arguments (vLLM's names) to the dataclass that owns each,
rejects unknown names, and fills defaults that depend on other fields. The CLI is generated
from the same fields, with each field's docstring as its help.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import logging
from dataclasses import dataclass

from pagellm.config.cache import CacheConfig
from pagellm.config.features import CompilationConfig, LoRAConfig, SpeculativeConfig
from pagellm.config.load import LoadConfig
from pagellm.config.model import ModelConfig
from pagellm.config.parallel import ParallelConfig
from pagellm.config.presets import ScenarioConfig, apply_scenario
from pagellm.config.scheduler import SchedulerConfig
from pagellm.config.structured_outputs import StructuredOutputsConfig
from pagellm.errors import ClientError

logger = logging.getLogger(__name__)

CONFIG_CLASSES = (ModelConfig, CacheConfig, SchedulerConfig, ParallelConfig, LoadConfig,
                  LoRAConfig, SpeculativeConfig, CompilationConfig, StructuredOutputsConfig,
                  ScenarioConfig)


@dataclass(frozen=True)
class EngineConfig:
    model: ModelConfig
    cache: CacheConfig
    scheduler: SchedulerConfig
    parallel: ParallelConfig
    load: LoadConfig
    lora: LoRAConfig
    speculative: SpeculativeConfig
    compilation: CompilationConfig
    structured_outputs: StructuredOutputsConfig = StructuredOutputsConfig()
    scenario: ScenarioConfig = ScenarioConfig()
    value_sources: dict[str, str] = dataclasses.field(default_factory=dict)
    """Engine argument name -> "flag" (given explicitly) or "scenario" (from the preset);
    names absent here have their default (see ``describe_sources``)."""


def engine_arg_fields() -> dict[str, tuple[type, dataclasses.Field]]:
    """Every engine argument name -> (owning config class, field)."""
    result = {}
    for cls in CONFIG_CLASSES:
        for f in dataclasses.fields(cls):
            result[f.name] = (cls, f)
    return result


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a config dataclass."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, following in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)):
            docs[node.target.id] = " ".join(str(following.value.value).split())
    return docs


def create_engine_config(**kwargs) -> EngineConfig:
    """Build the engine's configs from flat keyword arguments.

    Raises ``ClientError`` for an unknown name (with the closest known one) or a bad value.
    With ``scenario=NAME`` the preset's values fill the names not given (``apply_scenario``).
    """
    fields = engine_arg_fields()
    _reject_unknown(kwargs, fields)
    kwargs, sources = apply_scenario(kwargs)
    grouped: dict[type, dict] = {cls: {} for cls in CONFIG_CLASSES}
    for name, value in kwargs.items():
        grouped[fields[name][0]][name] = value
    configs = {cls: cls(**grouped[cls]) for cls in CONFIG_CLASSES}
    configs[LoRAConfig].check_tensor_parallel(configs[ParallelConfig].tensor_parallel_size)
    return EngineConfig(
        model=configs[ModelConfig], cache=configs[CacheConfig],
        scheduler=configs[SchedulerConfig], parallel=configs[ParallelConfig],
        load=configs[LoadConfig], lora=configs[LoRAConfig],
        speculative=configs[SpeculativeConfig], compilation=configs[CompilationConfig],
        structured_outputs=configs[StructuredOutputsConfig],
        scenario=configs[ScenarioConfig], value_sources=sources)


def _reject_unknown(kwargs: dict, fields: dict) -> None:
    for name in kwargs:
        if name not in fields:
            import difflib
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ClientError(f"unknown engine argument {name!r}{hint}", param=name)


def describe_sources(config: EngineConfig) -> str:
    """One line: every engine argument as ``name=value (source)``, source being flag,
    scenario or default, flags and scenario values first."""
    order = {"flag": 0, "scenario": 1, "default": 2}
    items = []
    for name, (cls, _) in engine_arg_fields().items():
        section = next(f.name for f in dataclasses.fields(EngineConfig)
                       if f.type in (cls.__name__, cls))
        value = getattr(getattr(config, section), name)
        source = config.value_sources.get(name, "default")
        items.append((order[source], f"{name}={value!r} ({source})"))
    return ", ".join(text for _, text in sorted(items, key=lambda item: item[0]))


def finalize_lengths(config: EngineConfig, model_max_len: int,
                     device_type: str = "cuda") -> EngineConfig:
    """Fill max_model_len and max_num_batched_tokens once the model's limits and the device
    (``device_type``: "cpu" or "cuda", which picks the default budget) are known. A
    max_model_len that came from a scenario preset is capped at the model's limit; an explicit
    one above it is a ClientError."""
    max_model_len = config.model.max_model_len or model_max_len
    if max_model_len > model_max_len and config.value_sources.get("max_model_len") == "scenario":
        max_model_len = model_max_len   # a preset's length is a ceiling, not a demand
    if max_model_len > model_max_len:
        raise ClientError(
            f"max_model_len={max_model_len} exceeds the model's max_position_embeddings="
            f"{model_max_len}; lower max_model_len", param="max_model_len")
    sched = config.scheduler
    budget = sched.max_num_batched_tokens
    if budget is None:
        budget = sched.default_max_num_batched_tokens(max_model_len, device_type)
    if not sched.enable_chunked_prefill and budget < max_model_len:
        raise ClientError(
            f"max_num_batched_tokens={budget} is smaller than max_model_len={max_model_len}; "
            "with chunked prefill off a whole prompt must fit in one step: raise "
            "max_num_batched_tokens, lower max_model_len, or enable chunked prefill",
            param="max_num_batched_tokens")
    return dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, max_model_len=max_model_len),
        scheduler=dataclasses.replace(sched, max_num_batched_tokens=budget,
                                      async_scheduling=_async_scheduling(config, device_type)))


def _async_scheduling(config: EngineConfig, device_type: str) -> bool:
    """``async_scheduling`` resolved: the user's value, else on for CUDA without pipeline
    parallelism (speculative decoding included). ClientError for on with pipeline
    parallelism, and for speculative decoding with pipeline parallelism."""
    wanted = config.scheduler.async_scheduling
    pipelined = config.parallel.pipeline_parallel_size > 1
    if config.speculative.enabled and pipelined:
        raise ClientError("speculative_config does not combine with pipeline_parallel_size "
                          "> 1 yet; drop one", param="speculative_config")
    if wanted and pipelined:
        raise ClientError("async_scheduling does not combine with pipeline_parallel_size > 1 "
                          "(the pipeline's batch queue already overlaps the steps); drop one",
                          param="async_scheduling")
    if wanted is None:
        return device_type == "cuda" and not pipelined
    return wanted
