"""Turn a user's prompt and SamplingParams into validated core Requests.

Raises ``ClientError`` (a ValueError naming the field) for anything the engine cannot serve;
nothing invalid ever reaches the scheduler.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pagellm.core.request import Request
from pagellm.engine.tokenizer import check_prompt_chars
from pagellm.errors import ClientError
from pagellm.sampling_params import SamplingParams

# What a prompt may be: text, token ids, or {"prompt": ...} / {"prompt_token_ids": [...]}.
PromptType = str | list[int] | dict


@dataclass
class ProcessedPrompt:
    prompt: str | None
    prompt_token_ids: list[int]


class InputProcessor:
    def __init__(self, tokenizer, max_model_len: int, vocab_size: int, eos_token_ids: list[int],
                 max_logprobs: int):
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.vocab_size = vocab_size
        self.eos_token_ids = set(eos_token_ids)
        self.eos_token_id = eos_token_ids[0] if eos_token_ids else None
        self.max_logprobs = max_logprobs

    def process_prompt(self, prompt: PromptType) -> ProcessedPrompt:
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
            if not all(isinstance(t, int) and not isinstance(t, bool) for t in token_ids):
                raise ClientError("prompt token ids must be integers", param="prompt")
            bad = [t for t in token_ids if not 0 <= t < self.vocab_size]
            if bad:
                raise ClientError(f"prompt token id {bad[0]} is out of the vocabulary "
                                  f"[0, {self.vocab_size})", param="prompt")
        else:
            raise ClientError(f"a prompt must be text or a list of token ids, got "
                              f"{type(prompt).__name__}", param="prompt")
        if not token_ids:
            raise ClientError("the prompt is empty", param="prompt")
        return ProcessedPrompt(text, token_ids)

    def make_requests(self, request_id: str, prompt: ProcessedPrompt, params: SamplingParams,
                      arrival_time: float | None = None, priority: int = 0) -> list[Request]:
        """One core Request, or n children (ids ``"{i}_{request_id}"``) sharing the prompt's KV
        blocks and seeded ``seed + i``. ``params`` must come from ``validate``."""
        num_prompt = len(prompt.prompt_token_ids)
        max_tokens = params.max_tokens if params.max_tokens is not None else self.max_model_len - num_prompt
        arrival_time = time.time() if arrival_time is None else arrival_time
        if params.n == 1:
            return [Request(request_id, prompt.prompt_token_ids, params, max_tokens,
                            self.eos_token_id, arrival_time, priority)]
        children = []
        for index in range(params.n):
            seed = None if params.seed is None else params.seed + index
            child_params = params.clone(n=1, seed=seed)
            child_params.all_stop_token_ids = params.all_stop_token_ids
            children.append(Request(child_request_id(request_id, index), prompt.prompt_token_ids,
                                    child_params, max_tokens, self.eos_token_id, arrival_time,
                                    priority, group_id=request_id))
        return children

    def validate(self, prompt: ProcessedPrompt, params: SamplingParams) -> SamplingParams:
        """A checked copy of ``params`` with the EOS ids filled in; ClientError if the request
        cannot be served."""
        num_prompt = len(prompt.prompt_token_ids)
        if num_prompt >= self.max_model_len:
            raise ClientError(
                f"the prompt has {num_prompt} tokens but max_model_len is {self.max_model_len}; "
                "shorten the prompt or raise max_model_len", param="prompt")
        if params.max_tokens is not None and num_prompt + params.max_tokens > self.max_model_len:
            raise ClientError(
                f"prompt ({num_prompt} tokens) + max_tokens ({params.max_tokens}) = "
                f"{num_prompt + params.max_tokens} exceeds max_model_len={self.max_model_len}; "
                "lower max_tokens or shorten the prompt", param="max_tokens")
        if self.tokenizer is None and (params.detokenize or params.stop):
            raise ClientError("detokenize and stop strings need a tokenizer but the engine runs "
                              "with skip_tokenizer_init=True; use SamplingParams(detokenize=False)"
                              " and stop_token_ids", param="detokenize")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(params, name)
            if value is not None and value > self.max_logprobs:
                raise ClientError(f"{name}={value} exceeds max_logprobs={self.max_logprobs}; "
                                  "ask for fewer or raise max_logprobs", param=name)
        for name, ids in (("stop_token_ids", params.stop_token_ids),
                          ("logit_bias", list(params.logit_bias or ()))):
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad:
                raise ClientError(f"{name} holds token id {bad[0]} outside the vocabulary "
                                  f"[0, {self.vocab_size})", param=name)
        params = params.clone()
        params.all_stop_token_ids = set(self.eos_token_ids)
        return params


def child_request_id(parent_id: str, index: int) -> str:
    return f"{index}_{parent_id}"
