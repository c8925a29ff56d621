"""Benchmark request sets: random token ids, ShareGPT conversations and JSONL prompt files,
sampled like vLLM's.

Both samplers return ``SampleRequest``s (prompt token ids + the output length to ask for) and
are deterministic for a given seed. Neither needs torch or an engine, so the offline
benchmarks and the (later) serving client share them.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pagellm.errors import ClientError

logger = logging.getLogger(__name__)

# vLLM's ShareGPT filter: drop conversations whose prompt or reply is shorter than this, whose
# prompt is longer than 1024 tokens, or whose prompt + reply is longer than 2048 tokens.
SHAREGPT_MIN_LEN = 4
SHAREGPT_MAX_PROMPT_LEN = 1024
SHAREGPT_MAX_TOTAL_LEN = 2048


@dataclass(frozen=True, slots=True)
class SampleRequest:
    prompt_token_ids: list[int]
    expected_output_len: int
    """max_tokens to ask for (the benchmarks set ignore_eos, so exactly this many come back)."""
    prompt: str | None = None
    """The prompt text where the dataset has one (ShareGPT); None for random token ids."""

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids)


def ratio_range(length: int, range_ratio: float, name: str = "input_len") -> tuple[int, int]:
    """vLLM's ``--random-range-ratio``: lengths uniform in
    ``[int(length * (1 - r)), int(length * (1 + r))]``, with ``r`` in [0, 1) and a floor of 1."""
    if not 0.0 <= range_ratio < 1.0:
        raise ClientError(f"random_range_ratio must be in [0, 1), got {range_ratio}",
                          param="random_range_ratio")
    if length < 1:
        raise ClientError(f"{name} must be >= 1, got {length}", param=name)
    return max(1, int(length * (1 - range_ratio))), max(1, int(length * (1 + range_ratio)))


def sample_random_requests(num_requests: int, input_len_range: tuple[int, int],
                           output_len_range: tuple[int, int], vocab_size: int, seed: int = 0,
                           prefix_len: int = 0,
                           excluded_token_ids: Collection[int] = ()) -> list[SampleRequest]:
    """``num_requests`` prompts of random token ids.

    Each prompt is one shared prefix of ``prefix_len`` tokens followed by a unique part whose
    length is uniform in ``input_len_range`` (inclusive); each output length is uniform in
    ``output_len_range`` (inclusive). Token ids are uniform over ``[0, vocab_size)`` minus
    ``excluded_token_ids`` (special tokens). Same arguments, same requests.
    """
    for name, (low, high) in (("input_len", input_len_range), ("output_len", output_len_range)):
        if not 1 <= low <= high:
            raise ClientError(f"{name} range must satisfy 1 <= min <= max, got [{low}, {high}]",
                              param=name)
    if num_requests < 1:
        raise ClientError(f"num_prompts must be >= 1, got {num_requests}", param="num_prompts")
    if prefix_len < 0:
        raise ClientError(f"prefix_len must be >= 0, got {prefix_len}", param="prefix_len")
    allowed = np.setdiff1d(np.arange(vocab_size), np.fromiter(excluded_token_ids, dtype=np.int64))
    if allowed.size == 0:
        raise ClientError("no token ids left to sample from", param="vocab_size")
    rng = np.random.default_rng(seed)
    input_lens = rng.integers(input_len_range[0], input_len_range[1] + 1, size=num_requests)
    output_lens = rng.integers(output_len_range[0], output_len_range[1] + 1, size=num_requests)
    prefix = allowed[rng.integers(0, allowed.size, size=prefix_len)].tolist()
    requests = []
    for input_len, output_len in zip(input_lens.tolist(), output_lens.tolist()):
        unique = allowed[rng.integers(0, allowed.size, size=input_len)].tolist()
        requests.append(SampleRequest(prefix + unique, output_len))
    return requests


def sample_sharegpt_requests(path: str | Path, num_requests: int,
                             encode: Callable[[str], Sequence[int]], seed: int = 0,
                             output_len: int | None = None) -> list[SampleRequest]:
    """``num_requests`` prompts from a ShareGPT json file, as vLLM samples them.

    The file holds a list of ``{"conversations": [{"from": ..., "value": ...}, ...]}``; entries
    with fewer than two turns are dropped, the rest shuffled with ``seed``. The first turn is
    the prompt (tokenized by ``encode``), the second turn's token count the output length unless
    ``output_len`` overrides it. Conversations outside vLLM's length filter are skipped; if
    fewer than ``num_requests`` remain, some are repeated (seeded) to make up the number.
    Raises ``ClientError`` for a missing or malformed file or when nothing passes the filter.
    """
    conversations = _load_sharegpt(path)
    random.Random(seed).shuffle(conversations)
    requests: list[SampleRequest] = []
    for turns in conversations:
        if len(requests) >= num_requests:
            break
        prompt, completion = str(turns[0].get("value", "")), str(turns[1].get("value", ""))
        prompt_ids = list(encode(prompt))
        reply_len = len(encode(completion)) if output_len is None else output_len
        if _is_valid_sharegpt(len(prompt_ids), reply_len, output_len is not None):
            requests.append(SampleRequest(prompt_ids, reply_len, prompt))
    if not requests:
        raise ClientError(f"no conversation in {str(path)!r} passes the length filter",
                          param="dataset_path")
    if len(requests) < num_requests:
        logger.warning("only %d of %d requests found in %s; repeating some to make up the "
                       "number", len(requests), num_requests, path)
        requests += random.Random(seed).choices(requests, k=num_requests - len(requests))
    return requests


def _load_sharegpt(path: str | Path) -> list[list[dict]]:
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except (OSError, json.JSONDecodeError) as error:
        raise ClientError(f"cannot read the ShareGPT file {str(path)!r}: {error}",
                          param="dataset_path") from error
    if not isinstance(data, list):
        raise ClientError(f"{str(path)!r} is not a ShareGPT file (expected a JSON list)",
                          param="dataset_path")
    return [entry["conversations"] for entry in data
            if isinstance(entry, dict) and isinstance(entry.get("conversations"), list)
            and len(entry["conversations"]) >= 2
            and all(isinstance(turn, dict) for turn in entry["conversations"][:2])]


def _is_valid_sharegpt(prompt_len: int, output_len: int, output_len_fixed: bool) -> bool:
    if prompt_len < SHAREGPT_MIN_LEN or (not output_len_fixed and output_len < SHAREGPT_MIN_LEN):
        return False
    return (prompt_len <= SHAREGPT_MAX_PROMPT_LEN
            and prompt_len + output_len <= SHAREGPT_MAX_TOTAL_LEN)


JSONL_OUTPUT_LEN_KEYS = ("output_len", "output_tokens", "max_tokens")
"""Keys a JSONL line may give its output length under (the first one present wins)."""


def sample_jsonl_requests(path: str | Path, num_requests: int,
                          encode: Callable[[str], Sequence[int]], seed: int = 0,
                          output_len: int | None = None) -> list[SampleRequest]:
    """``num_requests`` prompts from a JSONL file (vLLM's custom dataset): one JSON object a
    line with a ``"prompt"`` string and optionally its output length under one of
    ``JSONL_OUTPUT_LEN_KEYS``; ``output_len`` overrides it and is required for lines without
    one. Lines are shuffled with ``seed`` and repeated (seeded) when there are fewer than
    ``num_requests``. Raises ``ClientError`` naming the file and line for a malformed line."""
    entries = _load_jsonl(path)
    random.Random(seed).shuffle(entries)
    requests = []
    for line_number, entry in entries[:num_requests]:
        length = output_len
        if length is None:
            length = next((entry[key] for key in JSONL_OUTPUT_LEN_KEYS if key in entry), None)
        if not isinstance(length, int) or isinstance(length, bool) or length < 1:
            raise ClientError(f"{str(path)!r} line {line_number}: no positive output length "
                              f"(give one of {', '.join(JSONL_OUTPUT_LEN_KEYS)} or "
                              "--jsonl-output-len)", param="dataset_path")
        requests.append(SampleRequest(list(encode(entry["prompt"])), length, entry["prompt"]))
    if len(requests) < num_requests:
        requests += random.Random(seed).choices(requests, k=num_requests - len(requests))
    return requests


def _load_jsonl(path: str | Path) -> list[tuple[int, dict]]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ClientError(f"cannot read the JSONL file {str(path)!r}: {error.strerror}",
                          param="dataset_path") from None
    entries = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise ClientError(f"{str(path)!r} line {number} is not JSON: {error.msg}",
                              param="dataset_path") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str):
            raise ClientError(f"{str(path)!r} line {number}: expected an object with a "
                              "\"prompt\" string", param="dataset_path")
        entries.append((number, entry))
    if not entries:
        raise ClientError(f"{str(path)!r} holds no prompt", param="dataset_path")
    return entries
