"""Turn a user's prompt and SamplingParams into validated core Requests.

Raises ``ClientError`` (a ValueError naming the field) for anything the engine cannot serve;
nothing invalid ever reaches the scheduler. This module owns the rules that depend on the model
(vocabulary, context length, max_logprobs, tokenizer); ``SamplingParams`` owns the rest. The
HTTP server relies on both, so it and the offline ``LLM`` give the same messages.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pagellm.core.request import Request
from pagellm.engine.tokenizer import check_prompt_chars
from pagellm.errors import ClientError
from pagellm.sampling_params import SamplingParams
from pagellm.structured_output import validate_structured_outputs

# What a prompt may be: text, token ids, or {"prompt": ...} / {"prompt_token_ids": [...]}.
PromptType = str | list[int] | dict


@dataclass
class ProcessedPrompt:
    prompt: str | None
    prompt_token_ids: list[int]


class InputProcessor:
    def __init__(self, tokenizer, max_model_len: int, vocab_size: int, eos_token_ids: list[int],
                 max_logprobs: int, structured_outputs_backend: str = "auto",
                 disable_any_whitespace: bool = False):
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.vocab_size = vocab_size
        self.eos_token_ids = frozenset(eos_token_ids)
        self.eos_token_id = eos_token_ids[0] if eos_token_ids else None
        self.max_logprobs = max_logprobs
        self.structured_outputs_backend = structured_outputs_backend
        self.disable_any_whitespace = disable_any_whitespace
        self.lora_registry = None
        """``LoRARegistry`` set by the engine front end; None: LoRA requests are refused."""

    def process_prompt(self, prompt: PromptType | ProcessedPrompt) -> ProcessedPrompt:
        """Token ids (and text) of a prompt: text is tokenized here, once; a ProcessedPrompt is
        returned as is. ClientError for an empty prompt or a token id outside the vocabulary."""
        if isinstance(prompt, ProcessedPrompt):
            return prompt
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                return self.process_prompt(list(prompt["prompt_token_ids"]))
            if "prompt" in prompt:
                return self.process_prompt(prompt["prompt"])
            raise ClientError("a prompt dict needs 'prompt' or 'prompt_token_ids'", param="prompt")
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ClientError("text prompts need a tokenizer but the engine runs with "
                                  "skip_tokenizer_init=True; pass token ids", param="prompt")
            check_prompt_chars(self.tokenizer, prompt, self.max_model_len)
            token_ids = self.tokenizer.encode(prompt)
            text = prompt
        elif isinstance(prompt, (list, tuple)):
            token_ids, text = list(prompt), None
            self.check_token_ids(token_ids, "prompt")
        else:
            raise ClientError(f"a prompt must be text or a list of token ids, got "
                              f"{type(prompt).__name__}", param="prompt")
        if not token_ids:
            raise ClientError("the prompt is empty", param="prompt")
        return ProcessedPrompt(text, token_ids)

    def check_token_ids(self, token_ids: list, param: str) -> None:
        """ClientError ``prompt[1] must be a token id in [0, 49152), got -1`` for the first
        entry of ``token_ids`` that is not an integer in the vocabulary."""
        for index, token_id in enumerate(token_ids):
            if type(token_id) is not int or not 0 <= token_id < self.vocab_size:
                raise ClientError(f"{param}[{index}] must be a token id in "
                                  f"[0, {self.vocab_size}), got {token_id!r}", param=param)

    def check_lora_request(self, lora_request) -> None:
        """ClientError when ``lora_request`` cannot be served (see ``LoRARegistry.check``)."""
        if lora_request is None:
            return
        if self.lora_registry is None:
            raise ClientError("LoRA adapters need enable_lora=True (--enable-lora)",
                              param="lora_request")
        self.lora_registry.check(lora_request)

    def make_requests(self, request_id: str, prompt: ProcessedPrompt, params: SamplingParams,
                      arrival_time: float | None = None, priority: int = 0,
                      lora_request=None) -> list[Request]:
        """One core Request, or n children (ids ``"{i}_{request_id}"``) sharing the prompt's KV
        blocks and seeded ``seed + i``. ``params`` must come from ``validate``."""
        num_prompt = len(prompt.prompt_token_ids)
        max_tokens = params.max_tokens if params.max_tokens is not None else self.max_model_len - num_prompt
        arrival_time = time.time() if arrival_time is None else arrival_time
        if params.n == 1:
            return [Request(request_id, prompt.prompt_token_ids, params, max_tokens,
                            self.eos_token_id, arrival_time, priority,
                            lora_request=lora_request)]
        children = []
        for index in range(params.n):
            seed = None if params.seed is None else params.seed + index
            child_params = params.clone(n=1, seed=seed)
            child_params.all_stop_token_ids = params.all_stop_token_ids
            children.append(Request(child_request_id(request_id, index), prompt.prompt_token_ids,
                                    child_params, max_tokens, self.eos_token_id, arrival_time,
                                    priority, group_id=request_id, lora_request=lora_request))
        return children

    def validate(self, prompt: ProcessedPrompt, params: SamplingParams) -> SamplingParams:
        """``params`` checked against the model and the prompt, with the EOS ids filled in
        (``all_stop_token_ids``, the same set for every request of this engine, so a params
        object shared by several prompts stays valid for all); ClientError if the request
        cannot be served. Not a copy: SamplingParams is built once per request."""
        num_prompt = len(prompt.prompt_token_ids)
        if num_prompt >= self.max_model_len:
            raise ClientError(
                f"This model's maximum context length is {self.max_model_len} tokens, but the "
                f"prompt has {num_prompt} tokens. Please shorten the prompt.", param="prompt")
        if params.max_tokens is not None and num_prompt + params.max_tokens > self.max_model_len:
            raise ClientError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"you requested {num_prompt + params.max_tokens} tokens ({num_prompt} in the "
                f"prompt, {params.max_tokens} in the completion). Please reduce the length of "
                "the prompt or max_tokens.", param="max_tokens")
        if self.tokenizer is None and (params.detokenize or params.stop):
            raise ClientError("detokenize and stop strings need a tokenizer but the engine runs "
                              "with skip_tokenizer_init=True; use SamplingParams(detokenize=False)"
                              " and stop_token_ids", param="detokenize")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(params, name)
            if value is not None and value > self.max_logprobs:
                raise ClientError(f"{name}={value} exceeds the engine's max_logprobs="
                                  f"{self.max_logprobs}; ask for fewer or raise max_logprobs "
                                  "(--max-logprobs)", param=name)
            if value is not None and value > self.vocab_size:     # top-k of more than V fails
                raise ClientError(f"{name}={value} exceeds the model's vocabulary size "
                                  f"{self.vocab_size}", param=name)
        self.check_token_ids(params.stop_token_ids, "stop_token_ids")
        self.check_token_ids(sorted(params.logit_bias or ()), "logit_bias")
        self.check_structured_outputs(params)
        params.all_stop_token_ids = self.eos_token_ids
        return params


    def check_structured_outputs(self, params: SamplingParams) -> None:
        """ClientError when ``params.structured_outputs`` cannot compile (a bad schema, regex
        or grammar, named in the message); applies the engine's disable_any_whitespace. The
        first check of a constraint imports the
        grammar engine and parses it (milliseconds, seconds for the import): the server calls
        this off its event loop before ``validate``, which then finds it cached."""
        if self.disable_any_whitespace and params.structured_outputs is not None:
            params.structured_outputs.disable_any_whitespace = True
        validate_structured_outputs(params, self.structured_outputs_backend,
                                    self.tokenizer is not None)


def child_request_id(parent_id: str, index: int) -> str:
    return f"{index}_{parent_id}"
