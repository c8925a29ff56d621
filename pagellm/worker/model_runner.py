"""The model runner: request states -> one flattened batch -> forward -> sample.

The same code runs on CPU and CUDA; device specifics come from the platform and the
attention backend. One device-to-host copy of the sampled ids (and logprobs) per step.

Async scheduling: ``execute_model_async`` launches a step and returns a ``PendingStep`` at
once; the sampled ids travel to pinned host memory behind a CUDA event, and ``resolve`` waits
for that event only (no other host sync in the step). The scheduler may then send step N+1
before step N is resolved: the positions whose tokens are still on the device (the tokens step
N sampled) are filled in step N+1's ``input_ids`` from step N's sampled tensor, on the device.
At most one step is unresolved when the next one is built (the executors resolve in order).
A step whose sampling needs the host copy of earlier outputs (penalties, min_tokens) resolves
the previous step first, after its own forward pass is queued. ``num_forced_resolves`` counts
those waits and ``num_device_input_tokens`` the tokens fed on the device (tests assert them).
Structured outputs under async scheduling (vLLM's execute_model / sample_tokens split): a
step with ``has_structured_output_requests`` is launched up to its logits and
``execute_model_async`` returns None; the engine core meanwhile waits for the previous step,
advances the grammars and builds this step's bitmask, and ``sample_tokens(grammar_output)``
masks, samples and returns the PendingStep. The forward overlaps the host's grammar work.

Under pipeline parallelism every stage's runner applies the same SchedulerOutput and builds
the same step inputs; a stage other than the first receives the previous stage's hidden
states and residual ([2, num_tokens, hidden_size], one message from the same TP rank of the
previous stage; num_tokens is known from the step), a stage other than the last sends its
own on and returns an empty output, and only the last stage computes logits and samples.

Speculative decoding (``speculative_config``: n-gram, draft model, EAGLE; pipeline
parallelism is off then): a step with drafts runs synchronously through ``_speculative_step``
(with a draft model or EAGLE head every step does). The scheduled drafts are written past
each row's last token, the target model scores all 1 + k
positions of every request in one forward, and the sampler draws one token per position
(seeded requests from their own generator, in position order). Drafts are accepted while the
drawn token equals the draft; the first drawn token that differs (or the bonus token after
the last draft) ends the request's new tokens. With point-mass drafts (n-gram, and the
argmax drafts of a draft model or EAGLE head) this is the
rejection sampling rule exactly: draft x is accepted with probability p(x), and on rejection
the token is distributed as p restricted to tokens != x, i.e. normalised max(p - q, 0); for
greedy rows it is "accept while the argmax equals the draft". The logprobs of each accepted
token are those of its position. After the step the proposer drafts the next tokens
of every request that may speculate (no penalties, min_tokens or grammar: their logits depend
on the tokens before each position in ways the expanded rows do not model); a draft model or
EAGLE head first brings its own KV cache level with the target's (``worker/draft_proposer.py``).

With async scheduling, a step without drafts takes the async path above and the n-gram
proposer runs in ``resolve`` over each row's tokens up to that step's own (a later step may
already be in flight); proposers that need more than the host token ids (``_proposes_on_resolve``
False) keep every step in ``_speculative_step``. A verify step takes the previous step's
tokens on the device like any step, queues its forward, then resolves the previous step before
its own host work (acceptance and the next drafts need those tokens). So what overlaps: a
plain step's input preparation and launch with the step in flight before it, and a verify
step's input preparation and launch with the plain step in flight before it; what does not: a
verify step's acceptance and drafting, which wait for its own forward (the engine core also
waits for a verify step before scheduling the next, see ``Scheduler.waits_for_drafts``).
"""

from __future__ import annotations

import numpy as np
import torch

from dataclasses import dataclass

from pagellm.core.sched_output import (GrammarOutput, ModelRunnerOutput, SchedulerOutput,
                                       TopLogprobs)
from pagellm.distributed.parallel_state import get_pp_group
from pagellm.layers.sampler import Sampler, SamplingMetadata
from pagellm.models.utils import IntermediateTensors
from pagellm.ops.grammar_bitmask import apply_token_bitmask_
from pagellm.ops.sampling import compute_logprobs_topk
from pagellm.platforms import Platform
from pagellm.worker.draft_proposer import ModelProposer
from pagellm.worker.input_batch import InputBatch, StepInputs
from pagellm.worker.kv_cache import KVCache
from pagellm.worker.ngram_proposer import NgramProposer


@dataclass
class PendingStep:
    """A launched step whose sampled tokens may still be on the device."""
    request_ids: list[str]              # the rows that sampled, in order
    rows: np.ndarray                    # [n] their InputBatch rows
    generations: np.ndarray             # [n] the rows' generation at launch (reuse check)
    positions: np.ndarray               # [n] token position each sampled token fills
    sampled: torch.Tensor | None        # [n] int64 on the device (None: nothing sampled)
    host: list[torch.Tensor]            # host copies: sampled ids [, logprob ids, logprobs, ranks]
    event: torch.cuda.Event | None      # recorded after the copies (CUDA only)
    prompt_logprobs: dict
    output: ModelRunnerOutput | None = None   # set by ModelRunner.resolve
    propose: bool = False               # resolve drafts the rows' next tokens (n-gram)


@dataclass
class _Logits:
    """A launched step's logits, waiting to be masked and sampled (``ModelRunner._sample``)."""
    logits: torch.Tensor                # [num_samples, vocab] on the device
    rows: np.ndarray                    # [num_samples] InputBatch rows of the sampling requests
    request_ids: list[str]              # their ids, in the same order
    prompt_logprobs: dict


class ModelRunner:
    def __init__(self, model: torch.nn.Module, platform: Platform, block_size: int,
                 max_num_logprobs: int, max_num_reqs: int, max_model_len: int, seed: int = 0,
                 speculative_config=None):
        self.model = model
        self.platform = platform
        self.device = platform.device
        self.block_size = block_size
        self.max_num_logprobs = max_num_logprobs
        self.vocab_size = model.vocab_size
        self.sampler = Sampler()
        self.batch = InputBatch(max_num_reqs, max_model_len, block_size)
        self.generators: dict[str, torch.Generator] = {}   # seeded requests, alive until finished
        self.kv_cache: KVCache | None = None
        self.cuda_graphs = None
        """The CudaGraphRunner once captured (CUDA, not enforce_eager, cudagraph_mode not NONE):
        ``_forward`` replays it for every batch it can take (decode, mixed, verify steps)."""
        self.pp_group = get_pp_group()
        self.lora_manager = None
        """enable_lora: the ``LoRAModelManager`` (set by the worker); None otherwise."""
        self._pending_send: tuple | None = None   # (torch Work, buffer) of the last stage-to-stage send
        self._last_step: PendingStep | None = None
        """The last launched step while it is unresolved (async scheduling)."""
        self._late_sampling: PendingStep | _Logits | None = None
        """A step launched with ``has_structured_output_requests`` until ``sample_tokens``."""
        self.num_forced_resolves = 0
        """Steps resolved early because the next step's sampling needed their tokens on the host."""
        self.num_device_input_tokens = 0
        """Input tokens taken from the previous step's sampled ids on the device."""
        self.proposer = None
        """When speculative decoding is on (``SpeculativeConfig``): the NgramProposer, or the
        draft-model / EAGLE proposer that the worker sets after loading its model."""
        if speculative_config is not None and speculative_config.method == "ngram":
            self.proposer = NgramProposer(speculative_config.num_spec_tokens,
                                          *speculative_config.lookup_range)
        torch.manual_seed(seed)

    def bind_kv_cache(self, kv_cache: KVCache) -> None:
        self.kv_cache = kv_cache

    def execute_model(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        """Run one step and wait for its output."""
        return self.resolve(self.execute_model_async(sched))

    @torch.inference_mode()
    def execute_model_async(self, sched: SchedulerOutput) -> PendingStep | None:
        """Launch one step: apply the scheduler's diff, build the inputs (tokens of the
        unresolved previous step filled on the device), forward, sample, and start the copy
        of the sampled ids to the host. Returns without waiting for the device. A step with
        ``has_structured_output_requests`` stops after its logits and returns None: its
        ``sample_tokens(grammar_output)`` call masks and samples."""
        launched = self._launch_forward(sched)
        if sched.has_structured_output_requests:
            self._late_sampling = launched
            return None
        return self._sample(launched, sched.structured_output_request_ids, sched.grammar_bitmask)

    @torch.inference_mode()
    def sample_tokens(self, grammar_output: GrammarOutput) -> PendingStep:
        """The second half of a step launched with ``has_structured_output_requests``:
        apply its late bitmask and sample (vLLM's ``sample_tokens``). Returns its
        PendingStep, like ``execute_model_async``."""
        launched, self._late_sampling = self._late_sampling, None
        if launched is None:
            raise RuntimeError("sample_tokens without a step launched for late sampling")
        return self._sample(launched, grammar_output.structured_output_request_ids,
                            grammar_output.grammar_bitmask)

    def _launch_forward(self, sched: SchedulerOutput) -> "PendingStep | _Logits":
        """Everything of a step up to its logits (queued on the device); a PendingStep
        already resolved when the step samples nothing here (or runs speculatively)."""
        for request_id in sched.finished_req_ids:
            self.generators.pop(request_id, None)
        self.batch.apply(sched)
        for kv_cache in (self.kv_cache, getattr(self.proposer, "kv_cache", None)):
            if kv_cache is not None:     # the proposer's cache shares the block ids
                kv_cache.swap_out(sched.blocks_to_swap_out)
                kv_cache.swap_in(sched.blocks_to_swap_in)
        if sched.total_num_scheduled_tokens == 0:
            return self._done_step(ModelRunnerOutput([], []))
        if self.proposer is not None and (sched.scheduled_spec_decode_tokens
                                          or not self._proposes_on_resolve):
            return self._done_step(self._speculative_step(sched))
        inputs = self.batch.build_step_inputs(sched, self.device)
        self._feed_previous_tokens(inputs)
        if self.lora_manager is not None:
            for new in sched.scheduled_new_reqs:
                if new.lora_request is not None:
                    self.lora_manager.add_request(new.lora_request)
            self.lora_manager.prepare_step(self.batch.lora_int_id[inputs.token_rows])
        hidden = self._forward(inputs)                              # [num_tokens, hidden]
        if not self.pp_group.is_last_rank:
            self._send_to_next_stage(hidden)
            return self._done_step(ModelRunnerOutput([], []))
        prompt_logprobs = self._prompt_logprobs(inputs, hidden)
        if not inputs.sample_rows:
            return self._done_step(ModelRunnerOutput([], [], prompt_logprobs=prompt_logprobs))
        logits = self.model.compute_logits(hidden[inputs.logits_indices])  # [num_samples, vocab]
        rows = inputs.rows[inputs.sample_rows]
        request_ids = [inputs.request_ids[r] for r in inputs.sample_rows]
        return _Logits(logits, rows, request_ids, prompt_logprobs)

    def _sample(self, launched: "PendingStep | _Logits", first_rows: dict[str, int],
                bitmask: np.ndarray | None) -> PendingStep:
        """Mask (``first_rows`` / ``bitmask``: SchedulerOutput's or GrammarOutput's fields)
        and sample the launched step's logits, and start the copy of its tokens to the
        host; a resolved PendingStep passes through."""
        if isinstance(launched, PendingStep):
            return launched
        logits, rows, request_ids = launched.logits, launched.rows, launched.request_ids
        if self._last_step is not None and self.batch.special[rows].any():
            self.num_forced_resolves += 1      # penalties / min_tokens read earlier outputs
            self.resolve(self._last_step)
        if bitmask is not None:
            self._apply_grammar_bitmask(logits, request_ids, first_rows, bitmask)
        out = self.sampler(logits, self._sampling_metadata(rows, request_ids))
        step = PendingStep(request_ids, rows, self.batch.generation[rows].copy(),
                           self.batch.num_tokens[rows].copy(), out.sampled_token_ids,
                           self._copy_to_host(out), None, launched.prompt_logprobs,
                           propose=self.proposer is not None)
        if self.device.type == "cuda":
            step.event = torch.cuda.Event()
            step.event.record()
        self.batch.num_tokens[rows] += 1        # the token's value arrives in resolve()
        self._last_step = step
        return step

    def _speculative_step(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        """One synchronous step with drafts (see the module docstring): verify the scheduled
        drafts, return 1 + accepted tokens per sampling request and the next drafts."""
        batch, drafts = self.batch, sched.scheduled_spec_decode_tokens
        for request_id, tokens in drafts.items():
            row = batch.row_of[request_id]
            start = int(batch.num_tokens[row])
            batch.token_ids[row, start:start + len(tokens)] = tokens
        num_spec = np.fromiter((len(drafts.get(r, ())) for r in sched.num_scheduled_tokens),
                               dtype=np.int64, count=len(sched.num_scheduled_tokens))
        inputs = batch.build_step_inputs(sched, self.device, num_spec)
        self._feed_previous_tokens(inputs)
        hidden = self._forward(inputs)                              # [num_tokens, hidden]
        if self._last_step is not None:     # async: its tokens are part of the contexts below
            self.resolve(self._last_step)
        prompt_logprobs = self._prompt_logprobs(inputs, hidden)
        if not inputs.sample_rows:
            self._propose(np.zeros(0, dtype=np.int64), inputs, hidden)   # proposer KV only
            return ModelRunnerOutput([], [], prompt_logprobs=prompt_logprobs, spec_token_ids=[])
        sample_rows = np.asarray(inputs.sample_rows)
        k = num_spec[sample_rows]                                   # [S] drafts per request
        ends = np.asarray(inputs.attn_metadata.query_start_loc_cpu)[sample_rows + 1]
        indices = np.concatenate([np.arange(e - 1 - n, e) for e, n in zip(ends, k)])
        logits = self.model.compute_logits(hidden[_device(indices, self.device)])  # [sum(1+k), V]
        rows = inputs.rows[sample_rows]
        request_ids = [inputs.request_ids[r] for r in inputs.sample_rows]
        expanded_ids = [r for r, n in zip(request_ids, k.tolist()) for _ in range(n + 1)]
        if sched.grammar_bitmask is not None:
            self._apply_grammar_bitmask(logits, expanded_ids, sched.structured_output_request_ids,
                                        sched.grammar_bitmask)
        out = self.sampler(logits, self._sampling_metadata(np.repeat(rows, k + 1), expanded_ids))
        sampled = out.sampled_token_ids.cpu().tolist()
        new_tokens, kept = _accept_drafts(sampled, [drafts.get(r, []) for r in request_ids])
        for row, tokens in zip(rows.tolist(), new_tokens):
            start = int(batch.num_tokens[row])
            batch.token_ids[row, start:start + len(tokens)] = tokens
            batch.num_tokens[row] = start + len(tokens)
        logprobs = None
        if out.logprobs is not None:
            logprobs = TopLogprobs(*(t.cpu()[kept].numpy() for t in (
                out.logprob_token_ids, out.logprobs, out.sampled_token_ranks)))
        return ModelRunnerOutput(request_ids, [t for tokens in new_tokens for t in tokens],
                                 [len(tokens) for tokens in new_tokens], logprobs,
                                 prompt_logprobs,
                                 spec_token_ids=self._propose(sample_rows, inputs, hidden))

    @property
    def _proposes_on_resolve(self) -> bool:
        """Whether a step without drafts may run the plain (async) path and draft in
        ``resolve``: the proposer needs only the host token ids (n-gram)."""
        return isinstance(self.proposer, NgramProposer)

    def _propose(self, sample_index: np.ndarray, inputs: StepInputs,
                 hidden: torch.Tensor) -> list[list[int]]:
        """The drafts after the tokens of each sampling request (``sample_index``: [S] its
        index in the step; [] for requests that may not speculate). A draft model or EAGLE
        head also runs on a step that sampled nothing (its KV follows the target's)."""
        rows = inputs.rows[sample_index]
        if isinstance(self.proposer, ModelProposer):
            return self.proposer.propose(self.batch, inputs, hidden, sample_index,
                                         self._may_speculate(rows))
        return self._propose_ngram(rows)

    def _may_speculate(self, rows: np.ndarray) -> np.ndarray:
        """[len(rows)] bool: no grammar, min_tokens or penalties (their logits depend on the
        tokens before each position in ways the expanded rows do not model)."""
        params = [self.batch.sampling_params[r] for r in rows.tolist()]
        return np.array([p.structured_outputs is None and not p.min_tokens
                         and not p.presence_penalty and not p.frequency_penalty
                         and p.repetition_penalty == 1.0 for p in params], dtype=bool)

    def _propose_ngram(self, rows: np.ndarray,
                       lengths: np.ndarray | None = None) -> list[list[int]]:
        """The n-gram drafts after each row's first ``lengths`` tokens (default: all its
        tokens); [] for rows that may not speculate."""
        batch = self.batch
        allowed = self._may_speculate(rows)
        proposals: list[list[int]] = [[] for _ in range(len(rows))]
        if not allowed.any():
            return proposals
        lengths = (batch.num_tokens[rows] if lengths is None else lengths)[allowed]
        drafted = self.proposer.propose(batch.token_ids[rows[allowed], :int(lengths.max())],
                                        lengths)
        for index, draft in zip(np.flatnonzero(allowed).tolist(), drafted):
            proposals[index] = draft
        return proposals

    def _done_step(self, output: ModelRunnerOutput) -> PendingStep:
        """A step that sampled nothing: resolved from the start."""
        empty = np.zeros(0, dtype=np.int64)
        return PendingStep([], empty, empty, empty, None, [], None, {}, output)

    @staticmethod
    def _copy_to_host(out) -> list[torch.Tensor]:
        """Start the device-to-host copies of the sampler's outputs (pinned, non-blocking)."""
        tensors = [out.sampled_token_ids]
        if out.logprobs is not None:
            tensors += [out.logprob_token_ids, out.logprobs, out.sampled_token_ranks]
        if tensors[0].device.type == "cpu":
            return tensors
        copies = []
        for tensor in tensors:
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            copies.append(host.copy_(tensor, non_blocking=True))
        return copies

    def resolve(self, step: PendingStep) -> ModelRunnerOutput:
        """Wait for a launched step's sampled tokens (its CUDA event only), write them into
        the batch's host token ids, and return its ModelRunnerOutput. Idempotent."""
        if step.output is not None:
            return step.output
        if step.event is not None:
            step.event.synchronize()
        sampled_ids = step.host[0].numpy()
        sampled = sampled_ids.tolist()
        # a row freed (finished, aborted, preempted) since launch may hold another request
        live = self.batch.generation[step.rows] == step.generations
        self.batch.token_ids[step.rows[live], step.positions[live]] = sampled_ids[live]
        logprobs = None
        if len(step.host) > 1:
            logprobs = TopLogprobs(*(t.numpy() for t in step.host[1:]))
        step.output = ModelRunnerOutput(step.request_ids, sampled, logprobs=logprobs,
                                        prompt_logprobs=step.prompt_logprobs)
        if step.propose:        # contexts up to the step's own tokens (a later one may be in flight)
            step.output.spec_token_ids = self._propose_ngram(step.rows, step.positions + 1)
        step.sampled = None
        if self._last_step is step:
            self._last_step = None
        return step.output

    def _feed_previous_tokens(self, inputs: StepInputs) -> None:
        """Fill the input positions whose tokens the unresolved previous step sampled: on the
        device, from its sampled ids (no host sync)."""
        last = self._last_step
        if last is None or last.sampled is None:
            return
        live = self.batch.generation[last.rows] == last.generations
        pending_position = np.full(self.batch.max_num_reqs, -1, dtype=np.int64)
        pending_index = np.zeros(self.batch.max_num_reqs, dtype=np.int64)
        pending_position[last.rows[live]] = last.positions[live]
        pending_index[last.rows[live]] = np.flatnonzero(live)
        token_rows, positions = inputs.token_rows, inputs.token_positions
        flat = np.flatnonzero(positions == pending_position[token_rows])
        if not len(flat):
            return
        source = pending_index[token_rows[flat]]
        inputs.input_ids[_device(flat, self.device)] = last.sampled[_device(source, self.device)]
        self.num_device_input_tokens += len(flat)

    def _forward(self, inputs: StepInputs):
        """This stage's layers over the step: final hidden states [num_tokens, hidden] on the
        last pipeline stage, IntermediateTensors on the others."""
        graphs = self.cuda_graphs
        route = graphs.route(inputs.attn_metadata) if graphs is not None else None
        if route is not None:
            return graphs.run(inputs.input_ids, inputs.positions, inputs.attn_metadata, route)
        intermediate = (None if self.pp_group.is_first_rank
                        else self._recv_from_prev_stage(inputs.attn_metadata.num_tokens))
        return self.model(inputs.input_ids, inputs.positions, self.kv_cache.layers,
                          inputs.attn_metadata, intermediate)

    def _recv_from_prev_stage(self, num_tokens: int) -> IntermediateTensors:
        """The previous stage's hidden states and residual for this step (blocks)."""
        buffer = torch.empty((2, num_tokens, self.model.config.hidden_size),
                             dtype=self.model.dtype, device=self.device)  # [2, T, hidden]
        self.pp_group.recv_prev(buffer)
        return IntermediateTensors(buffer[0], buffer[1])

    def _send_to_next_stage(self, tensors: IntermediateTensors) -> None:
        """Start sending this step's hidden states and residual to the next stage; the send
        runs while this stage takes its next batch. The previous step's send is waited for
        first (the next stage received it before it began that step's layers)."""
        if self._pending_send is not None:
            self._pending_send[0].wait()
        buffer = torch.stack([tensors.hidden_states, tensors.residual])  # [2, T, hidden]
        self._pending_send = (self.pp_group.isend_next(buffer), buffer)

    def _apply_grammar_bitmask(self, logits: torch.Tensor, request_ids: list[str],
                               first_rows: dict[str, int], bitmask: np.ndarray) -> None:
        """Structured outputs: mask the constrained rows of ``logits`` [num_samples, vocab]
        in place, the whole batch in one kernel call and one host-to-device copy. The
        scheduler's bitmask [rows, words] int32 follows its own order (``first_rows``:
        ``structured_output_request_ids``);
        they are placed at the rows of ``request_ids`` (the sampling order), -1 elsewhere.
        With speculative decoding a request will own 1 + k consecutive logits rows and
        bitmask rows, matched the same way."""
        indices = [i for i, request_id in enumerate(request_ids) if request_id in first_rows]
        if not indices:
            return
        ordered = np.full((len(request_ids), bitmask.shape[1]), -1, dtype=np.int32)
        ordered[indices] = bitmask[[first_rows[request_ids[i]] for i in indices]]
        apply_token_bitmask_(logits, _device(ordered, self.device), indices)

    def _sampling_metadata(self, rows: np.ndarray, request_ids: list[str]) -> SamplingMetadata:
        batch, device = self.batch, self.device
        temperature = batch.temperature[rows]
        greedy = temperature == 0.0
        generators = {}
        for index in np.flatnonzero(batch.seeded[rows]).tolist():
            generator = self.generators.get(request_ids[index])
            if generator is None:
                generator = torch.Generator(device=device)
                generator.manual_seed(batch.sampling_params[rows[index]].seed)
                self.generators[request_ids[index]] = generator
            generators[index] = generator
        special = bool(batch.special[rows].any())
        penalties = batch.penalties[rows]                            # [B, 3]
        use_penalties = special and bool((penalties[:, :2] != 0).any() or (penalties[:, 2] != 1).any())
        min_tokens_mask, logit_bias, output_ids, max_logprobs = [], [None] * len(rows), [], None
        if special:
            params = [batch.sampling_params[r] for r in rows]
            output_ids = [batch.output_token_ids(r) for r in rows]
            logit_bias = [p.logit_bias for p in params]
            min_tokens_mask = [(i, sorted(set(p.stop_token_ids) | p.all_stop_token_ids))
                               for i, p in enumerate(params) if len(output_ids[i]) < p.min_tokens]
            counts = [p.logprobs for p in params if p.logprobs is not None]
            max_logprobs = max(counts) if counts else None
        return SamplingMetadata(
            temperature=_device(temperature, device), all_greedy=bool(greedy.all()),
            all_random=not bool(greedy.any()),
            top_k=_optional(batch.top_k[rows], 0, device),
            top_p=_optional(batch.top_p[rows], 1.0, device),
            min_p=_optional(batch.min_p[rows], 0.0, device), generators=generators,
            presence_penalties=_device(penalties[:, 0], device) if use_penalties else None,
            frequency_penalties=_device(penalties[:, 1], device) if use_penalties else None,
            repetition_penalties=_device(penalties[:, 2], device) if use_penalties else None,
            prompt_token_ids=self._padded_prompts(rows) if use_penalties else None,
            output_token_ids=output_ids or [[] for _ in rows], logit_bias=logit_bias,
            min_tokens_mask=min_tokens_mask, max_num_logprobs=max_logprobs,
            max_top_k=int(batch.top_k[rows].max(initial=0)))

    def _padded_prompts(self, rows: np.ndarray) -> torch.Tensor:
        lengths = self.batch.num_prompt_tokens[rows]
        padded = np.full((len(rows), int(lengths.max())), self.vocab_size, dtype=np.int64)
        for index, row in enumerate(rows):
            padded[index, :lengths[index]] = self.batch.prompt_token_ids(row)
        return _device(padded, self.device)                          # [num_samples, max_prompt]

    def _prompt_logprobs(self, inputs: StepInputs, hidden: torch.Tensor) -> dict:
        """Logprobs of prompt tokens 1..P-1 covered by this step's chunk of each request that
        asked for them: the hidden state at position p scores prompt token p + 1."""
        result = {}
        for index, request_id in enumerate(inputs.request_ids):
            row = inputs.rows[index]
            k = self.batch.sampling_params[row].prompt_logprobs
            start, count = inputs.starts[index], inputs.counts[index]
            end = min(start + count, int(self.batch.num_prompt_tokens[row]) - 1)
            if k is None or start >= end:
                continue
            offset = inputs.attn_metadata.query_start_loc_cpu[index]
            logits = self.model.compute_logits(hidden[offset:offset + end - start])  # [n, vocab]
            targets = torch.from_numpy(self.batch.token_ids[row, start + 1:end + 1].astype(np.int64))
            ids, values, ranks = compute_logprobs_topk(torch.log_softmax(logits.float(), dim=-1),
                                                       targets.to(self.device), k)
            result[request_id] = (start + 1, TopLogprobs(ids.cpu().numpy(), values.cpu().numpy(),
                                                         ranks.cpu().numpy()))
        return result


def _accept_drafts(sampled: list[int], drafts: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    """Verification: ``sampled`` holds the target's token at each of 1 + len(d) positions per
    request (flattened, request order); a request keeps its drafts while they equal the
    target's tokens, then the target's token at the first mismatch (or the bonus token).
    Returns the new tokens per request and their indices in ``sampled``."""
    new_tokens, kept, offset = [], [], 0
    for draft in drafts:
        accepted = 0
        while accepted < len(draft) and sampled[offset + accepted] == draft[accepted]:
            accepted += 1
        new_tokens.append(sampled[offset:offset + accepted + 1])
        kept.extend(range(offset, offset + accepted + 1))
        offset += len(draft) + 1
    return new_tokens, kept


def _device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cpu":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def _optional(values: np.ndarray, neutral, device: torch.device):
    if (values == neutral).all():
        return None
    return _device(values, device)
