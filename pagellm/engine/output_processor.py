"""Engine-core outputs -> RequestOutputs: incremental detokenization, stop strings, logprobs,
n > 1 gathering and request metrics.

Contract: ``process`` returns the RequestOutputs ready for callers, and the child request ids
the core must abort because a stop string ended them here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pagellm.core.sched_output import EngineCoreOutputs, TopLogprobs
from pagellm.engine.detokenizer import IncrementalDetokenizer
from pagellm.engine.input_processor import ProcessedPrompt, child_request_id
from pagellm.outputs import (CompletionOutput, Logprob, PositionLogprobs, RequestMetrics,
                             RequestOutput)
from pagellm.sampling_params import SamplingParams


@dataclass
class _Completion:
    index: int
    detokenizer: IncrementalDetokenizer | None
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[PositionLogprobs] | None = None
    cumulative_logprob: float | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    sent_tokens: int = 0       # for delta outputs

    @property
    def text(self) -> str:
        return self.detokenizer.output_text if self.detokenizer else ""


@dataclass
class _RequestState:
    request_id: str
    prompt: ProcessedPrompt
    params: SamplingParams
    completions: dict[str, _Completion]     # core request id -> completion
    metrics: RequestMetrics
    prompt_logprobs: list[PositionLogprobs | None] | None = None
    num_cached_tokens: int = 0

    @property
    def finished(self) -> bool:
        return all(c.finish_reason is not None for c in self.completions.values())


class OutputProcessor:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.requests: dict[str, _RequestState] = {}
        self.core_to_parent: dict[str, str] = {}

    def add_request(self, request_id: str, prompt: ProcessedPrompt, params: SamplingParams,
                    arrival_time: float, max_tokens: int | None = None) -> None:
        """Track a validated request; ``max_tokens``: its resolved limit, kept in its metrics."""
        ids = [request_id] if params.n == 1 else [child_request_id(request_id, i)
                                                 for i in range(params.n)]
        completions = {core_id: _Completion(index, self._detokenizer(prompt, params),
                                            logprobs=[] if params.logprobs is not None else None,
                                            cumulative_logprob=0.0 if params.logprobs is not None else None)
                       for index, core_id in enumerate(ids)}
        state = _RequestState(request_id, prompt, params, completions,
                              RequestMetrics(arrival_time, max_tokens_param=max_tokens))
        if params.prompt_logprobs is not None:
            state.prompt_logprobs = [None]
        self.requests[request_id] = state
        for core_id in ids:
            self.core_to_parent[core_id] = request_id

    def _detokenizer(self, prompt: ProcessedPrompt, params: SamplingParams):
        if not params.detokenize:
            return None
        return IncrementalDetokenizer(
            self.tokenizer, prompt.prompt_token_ids,
            skip_special_tokens=params.skip_special_tokens,
            spaces_between_special_tokens=params.spaces_between_special_tokens,
            stop=params.stop, include_stop_str_in_output=params.include_stop_str_in_output,
            min_tokens=params.min_tokens)

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    def abort_request(self, request_id: str) -> list[str]:
        """Forget a parent request; returns its core request ids to abort."""
        state = self.requests.pop(request_id, None)
        if state is None:
            return []
        for core_id in state.completions:
            self.core_to_parent.pop(core_id, None)
        return list(state.completions)

    def process(self, outputs: EngineCoreOutputs, start: int = 0,
                stop: int | None = None) -> tuple[list[RequestOutput], list[str]]:
        """Take the requests ``start:stop`` of one step's columnar outputs (all by default)."""
        now = time.time()
        touched: dict[str, _RequestState] = {}
        to_abort: list[str] = []
        stop = len(outputs) if stop is None else stop
        offsets = outputs.token_offsets()
        logprobs = _LogprobRows(outputs.new_logprobs, offsets[start], offsets[stop])
        tokens = outputs.new_token_ids
        for index in range(start, stop):
            request_id = outputs.req_ids[index]
            parent_id = self.core_to_parent.get(request_id)
            if parent_id is None:
                continue
            state = self.requests[parent_id]
            completion = state.completions[request_id]
            if completion.finish_reason is not None:
                continue
            new_token_ids = tokens[offsets[index]:offsets[index + 1]]
            self._update_metrics(state, outputs, index, bool(new_token_ids), now)
            prompt_logprobs = outputs.new_prompt_logprobs.get(request_id)
            if prompt_logprobs is not None and state.prompt_logprobs is not None:
                self._add_prompt_logprobs(state, *prompt_logprobs)
            if completion.logprobs is not None and logprobs.available:
                self._add_logprobs(state, completion, logprobs, offsets[index], offsets[index + 1])
            if self._add_tokens(completion, new_token_ids, outputs.finish_reasons[index],
                                outputs.stop_reasons[index]):
                to_abort.append(request_id)
            touched[parent_id] = state
        ready = []
        for parent_id, state in touched.items():
            finished = state.finished
            if finished:
                state.metrics.finished_time = now
                self.abort_request(parent_id)
            if finished or state.params.output_kind == "delta":
                ready.append(self._request_output(state, finished))
        return ready, to_abort

    @staticmethod
    def _update_metrics(state: _RequestState, outputs: EngineCoreOutputs, index: int,
                        has_tokens: bool, now: float) -> None:
        metrics = state.metrics
        first_scheduled_time = outputs.first_scheduled_times[index]
        if first_scheduled_time is not None and metrics.first_scheduled_time is None:
            metrics.first_scheduled_time = first_scheduled_time
        if has_tokens:
            if metrics.first_token_time is None:
                metrics.first_token_time = now
            metrics.last_token_time = now
        metrics.num_preemptions = max(metrics.num_preemptions, outputs.num_preemptions[index])
        state.num_cached_tokens = max(state.num_cached_tokens, outputs.num_cached_tokens[index])

    def _add_logprobs(self, state: _RequestState, completion: _Completion,
                      logprobs: "_LogprobRows", first: int, end: int) -> None:
        for row in range(first, end):
            completion.logprobs.append(logprobs.position(row, state.params.logprobs, self._decode))
            completion.cumulative_logprob += logprobs.values[row - logprobs.first][0]

    @staticmethod
    def _add_tokens(completion: _Completion, new_token_ids: list[int], finish_reason: str | None,
                    stop_reason: int | str | None) -> bool:
        """Append tokens; True when a stop string ended the completion here."""
        completion.token_ids.extend(new_token_ids)
        stop_string = None
        if completion.detokenizer is not None and new_token_ids:
            # EOS / a stop token id ended it: like vLLM, that token's text is not shown.
            stop_terminated = finish_reason == "stop" and not isinstance(stop_reason, str)
            stop_string = completion.detokenizer.update(new_token_ids, stop_terminated)
        if stop_string is not None:
            completion.finish_reason, completion.stop_reason = "stop", stop_string
            return finish_reason is None
        if finish_reason is not None:
            completion.finish_reason, completion.stop_reason = finish_reason, stop_reason
            if completion.detokenizer is not None:
                completion.detokenizer.flush()
        return False

    def _add_prompt_logprobs(self, state: _RequestState, first_position: int,
                             logprobs: TopLogprobs) -> None:
        rows = _LogprobRows(logprobs, 0, logprobs.num_rows)
        for row in range(logprobs.num_rows):
            if first_position + row == len(state.prompt_logprobs):   # skip recomputed positions
                state.prompt_logprobs.append(
                    rows.position(row, state.params.prompt_logprobs, self._decode))

    def _decode(self, token_id: int) -> str | None:
        return None if self.tokenizer is None else self.tokenizer.decode([token_id])

    def _request_output(self, state: _RequestState, finished: bool) -> RequestOutput:
        delta = state.params.output_kind == "delta"
        completions = []
        for completion in state.completions.values():
            token_ids = completion.token_ids
            text = completion.text
            logprobs = completion.logprobs
            if delta:
                token_ids = token_ids[completion.sent_tokens:]
                logprobs = logprobs[completion.sent_tokens:] if logprobs is not None else None
                text = (completion.detokenizer.get_delta_text(completion.finish_reason is not None)
                        if completion.detokenizer else "")
                completion.sent_tokens = len(completion.token_ids)
            completions.append(CompletionOutput(
                completion.index, text, list(token_ids), completion.cumulative_logprob,
                logprobs, completion.finish_reason, completion.stop_reason))
        return RequestOutput(state.request_id, state.prompt.prompt, state.prompt.prompt_token_ids,
                             state.prompt_logprobs, completions, finished, state.metrics,
                             state.num_cached_tokens)


class _LogprobRows:
    """Rows ``first:end`` of a step's logprob arrays as Python lists (one ``tolist`` per
    array per step, not per position)."""

    def __init__(self, logprobs: TopLogprobs | None, first: int, end: int):
        self.available = logprobs is not None
        self.first = first
        if logprobs is not None:
            self.token_ids = logprobs.token_ids[first:end].tolist()
            self.values = logprobs.logprobs[first:end].tolist()
            self.ranks = logprobs.ranks[first:end].tolist()

    def position(self, row: int, k: int, decode) -> PositionLogprobs:
        """Row ``row`` (numbered in the whole step) as {token id: Logprob}: the sampled or
        actual token first, then the top ``k``. A chosen token that is itself in the top k
        takes its top-k rank: its computed rank counts every token at least as likely, so a
        tie with a token listed before it would rank it k + 1 and drop it from its own top-k
        list (top_logprobs would then hold k - 1 entries)."""
        index = row - self.first
        ids, values = self.token_ids[index], self.values[index]
        top = list(zip(ids[1:k + 1], values[1:k + 1]))
        rank = self.ranks[index]
        for top_rank, (token_id, _) in enumerate(top, start=1):
            if token_id == ids[0]:
                rank = min(rank, top_rank)
                break
        position = {ids[0]: Logprob(values[0], rank, decode(ids[0]))}
        for top_rank, (token_id, value) in enumerate(top, start=1):
            if token_id not in position:
                position[token_id] = Logprob(value, top_rank, decode(token_id))
        return position
