"""LLMEngine: the synchronous frontend (input processor -> core client -> output processor).

Used by the offline ``LLM``; the server's async engine wraps the same processors. One engine
core runs in this process; with ``data_parallel_size=N > 1``, N engine-core processes run
behind a ``SyncDPClient`` (an in-process core cannot be replicated).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time

from pagellm.config.engine_args import (EngineConfig, create_engine_config, describe_sources,
                                        finalize_lengths)
from pagellm.core.request import Request
from pagellm.engine.core_client import InprocClient
from pagellm.engine.dp_client import SyncDPClient
from pagellm.engine.engine_core import make_engine_core
from pagellm.engine.input_processor import InputProcessor, ProcessedPrompt, PromptType
from pagellm.engine.output_processor import OutputProcessor
from pagellm.engine.tokenizer import config_eos_token_ids, get_eos_token_ids, load_tokenizer
from pagellm.errors import ClientError
from pagellm.lora.registry import LoRARegistry
from pagellm.models.default_model import resolve_model_path
from pagellm.models.hf_config import load_hf_config
from pagellm.models.spec_models import check_speculative_model
from pagellm.outputs import RequestOutput
from pagellm.platforms import current_platform
from pagellm.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


def resolve_config(**kwargs) -> tuple[EngineConfig, object]:
    """Engine arguments -> (final EngineConfig with a local model path, HF config)."""
    config = create_engine_config(**kwargs)
    model_path = resolve_model_path(config.model.model, config.load.download_dir)
    hf_config = load_hf_config(model_path)
    served = config.model.served_model_name or config.model.model
    tokenizer_path = config.model.tokenizer or model_path
    config = dataclasses.replace(config, model=dataclasses.replace(
        config.model, model=model_path, tokenizer=tokenizer_path, served_model_name=served))
    device_type = current_platform(config.parallel.device).name
    config = finalize_lengths(config, hf_config.max_position_embeddings, device_type)
    # a draft model / EAGLE head that is missing or does not fit: fail before the core starts
    check_speculative_model(config.speculative, hf_config, tokenizer_path,
                            config.load.load_format)
    scenario = config.scenario.scenario
    logger.info("Engine configuration%s: %s", f" (scenario {scenario})" if scenario else "",
                describe_sources(config))
    return config, hf_config


def load_frontend_tokenizer(config: EngineConfig, hf_config) -> tuple[object | None, list[int]]:
    """(tokenizer or None under skip_tokenizer_init, EOS token ids)."""
    if config.model.skip_tokenizer_init:
        return None, config_eos_token_ids(hf_config)
    tokenizer = load_tokenizer(config.model.tokenizer)
    return tokenizer, get_eos_token_ids(config.model.model, tokenizer)


def process_request(input_processor: InputProcessor, prompt: PromptType | ProcessedPrompt,
                    params: SamplingParams) -> tuple[ProcessedPrompt, SamplingParams]:
    """Tokenize (once) and validate one prompt; ClientError when it cannot be served."""
    prompt_data = input_processor.process_prompt(prompt)
    return prompt_data, input_processor.validate(prompt_data, params)


def register_requests(config: EngineConfig, input_processor: InputProcessor,
                      output_processor: OutputProcessor, prompt_data: ProcessedPrompt,
                      params: SamplingParams, request_id: str, priority: int,
                      arrival_time: float, lora_request=None) -> list[Request]:
    """Register a prompt that ``process_request`` accepted with ``output_processor``; returns
    the core Requests to send. ClientError (nothing registered) for a bad id or priority."""
    if priority != 0 and config.scheduler.policy != "priority":
        raise ClientError("priority is only used with policy='priority'", param="priority")
    if request_id in output_processor.requests:
        raise ClientError(f"request id {request_id!r} is already in use", param="request_id")
    input_processor.check_lora_request(lora_request)
    requests = input_processor.make_requests(request_id, prompt_data, params, arrival_time,
                                             priority, lora_request)
    output_processor.add_request(request_id, prompt_data, params, arrival_time,
                                 max_tokens=requests[0].max_tokens)
    return requests


def prepare_requests(config: EngineConfig, input_processor: InputProcessor,
                     output_processor: OutputProcessor, prompt: PromptType | ProcessedPrompt,
                     params: SamplingParams, request_id: str, priority: int,
                     arrival_time: float, lora_request=None) -> list[Request]:
    """``process_request`` then ``register_requests``: raises ClientError and registers
    nothing when the request is invalid."""
    prompt_data, params = process_request(input_processor, prompt, params)
    return register_requests(config, input_processor, output_processor, prompt_data, params,
                             request_id, priority, arrival_time, lora_request)


class LLMEngine:
    def __init__(self, config: EngineConfig, hf_config):
        self.config = config
        self.tokenizer, eos_ids = load_frontend_tokenizer(config, hf_config)
        if config.parallel.data_parallel_size > 1:
            self.engine_core = None     # the cores live in their own processes
            self.core = SyncDPClient(config)
            vocab_size = self.core.ready.vocab_size
        else:
            self.engine_core = make_engine_core(config, hf_config)
            self.core = InprocClient(self.engine_core)
            vocab_size = self.engine_core.executor.vocab_size
        self.input_processor = InputProcessor(self.tokenizer, config.model.max_model_len,
                                              vocab_size, eos_ids, config.model.max_logprobs,
                                              config.structured_outputs.structured_outputs_backend,
                                              config.structured_outputs.disable_any_whitespace)
        if config.lora.enable_lora:
            self.input_processor.lora_registry = LoRARegistry(config.lora, hf_config)
        self.output_processor = OutputProcessor(self.tokenizer)
        self._counter = itertools.count()

    @classmethod
    def from_engine_args(cls, **kwargs) -> "LLMEngine":
        config, hf_config = resolve_config(**kwargs)
        return cls(config, hf_config)

    def process_request(self, prompt: PromptType | ProcessedPrompt, params: SamplingParams
                        ) -> tuple[ProcessedPrompt, SamplingParams]:
        """Tokenize and validate one prompt without queueing it (``LLM`` checks a whole batch
        before queueing any); pass the result to ``add_request``, which does neither again."""
        return process_request(self.input_processor, prompt, params)

    def add_request(self, prompt: PromptType | ProcessedPrompt, params: SamplingParams,
                    request_id: str | None = None, priority: int = 0,
                    arrival_time: float | None = None, validated: bool = False,
                    lora_request=None) -> str:
        """Validate and queue one prompt; raises ClientError and queues nothing when invalid.
        ``validated``: ``prompt`` and ``params`` come from ``process_request``."""
        request_id = str(next(self._counter)) if request_id is None else request_id
        arrival_time = time.time() if arrival_time is None else arrival_time
        if not validated:
            prompt, params = self.process_request(prompt, params)
        self.core.add_requests(register_requests(self.config, self.input_processor,
                                                 self.output_processor, prompt, params,
                                                 request_id, priority, arrival_time,
                                                 lora_request))
        return request_id

    def abort_request(self, request_id: str) -> None:
        self.core.abort_requests(self.output_processor.abort_request(request_id))

    def has_unfinished_requests(self) -> bool:
        return self.output_processor.has_unfinished()

    def step(self) -> list[RequestOutput]:
        outputs, to_abort = self.output_processor.process(self.core.get_output())
        self.core.abort_requests(to_abort, finished=True)     # ended by a stop string
        return outputs

    def stats(self):
        return self.core.stats()

    def shutdown(self) -> None:
        """Stop the engine core and its workers (worker processes under the mp executor)."""
        self.core.shutdown()
