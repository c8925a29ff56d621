"""AsyncLLM: the server's engine. Tokenization, detokenization and stop strings run here, in
the API process; the engine core runs in its own process behind an ``MPClient``, or, with
``data_parallel_size=N``, N engine cores (replicas) run behind a ``DPClient`` that picks the
replica of each request (see ``dp_client`` and ``dp_balancer``).

Contract for callers (the HTTP layer):
- ``generate`` is an async generator of ``RequestOutput``s. ``SamplingParams.output_kind``
  picks the shape: "delta" yields new tokens/text as they come (streaming), "final" yields
  one output when the request finishes.
- Leaving the generator early (break + ``aclose()``, or cancelling the task iterating it)
  aborts the request; the core frees its KV blocks before its next step.
- Invalid input raises ``ClientError`` on the first iteration, before anything reaches the
  core; the engine keeps serving.
- When the engine core (any replica) dies every in-flight and later ``generate`` raises
  ``EngineDeadError`` and ``is_healthy()`` turns False.
- SIGTERM handling: ``await drain(timeout_s)`` then ``await shutdown()``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable

from pagellm.config.engine_args import EngineConfig
from pagellm.core.stats import EngineStats
from pagellm.engine.dp_client import DPClient, merge_stats
from pagellm.engine.input_processor import InputProcessor, PromptType
from pagellm.engine.llm_engine import load_frontend_tokenizer, prepare_requests, resolve_config
from pagellm.engine.output_processor import OutputProcessor
from pagellm.errors import EngineDeadError, ServiceUnavailableError
from pagellm.lora.registry import LoRARegistry
from pagellm.outputs import RequestOutput
from pagellm.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

OUTPUT_CHUNK_SIZE = 128     # outputs routed between yields to the event loop


class AsyncLLM:
    def __init__(self, config: EngineConfig, client: DPClient, tokenizer, eos_token_ids: list[int]):
        """Use ``await AsyncLLM.from_engine_args(...)``; this takes a started client."""
        self.config = config
        self.client = client
        self.tokenizer = tokenizer
        self.input_processor = InputProcessor(tokenizer, config.model.max_model_len,
                                              client.ready.vocab_size, eos_token_ids,
                                              config.model.max_logprobs,
                                              config.structured_outputs.structured_outputs_backend,
                                              config.structured_outputs.disable_any_whitespace)
        self.output_processor = OutputProcessor(tokenizer)
        # request id -> its unread outputs (merged); an exception ends the generator with it,
        # None quietly
        self._queues: dict[str, OutputCollector] = {}
        self.engine_stats: list[EngineStats | None] = [None] * client.num_engines
        """Per replica, the latest stats it pushed (after each step, and when its gauges
        change); None until it pushed any."""
        self.stats_listeners: list[Callable[[EngineStats, int], None]] = []
        """Called with every pushed EngineStats and the index of the replica that pushed it,
        in the output handler (keep them cheap)."""
        self._engine_of_request: dict[str, int] = {}     # unfinished request id -> replica
        self.draining = False                            # set by drain(): no new requests
        self._handler = asyncio.create_task(self._handle_outputs(), name="pagellm-outputs")

    @classmethod
    async def from_engine_args(cls, *, startup_timeout_s: float = 600.0,
                               **engine_args) -> "AsyncLLM":
        """Start an engine-core process for the same engine arguments as ``LLM``. Raises
        ClientError for bad arguments, EngineDeadError when the core fails to start."""
        config, hf_config = await asyncio.to_thread(resolve_config, **engine_args)
        return await cls._create(config, hf_config,
                                 lambda: DPClient.start(config, startup_timeout_s))

    @classmethod
    async def connect(cls, config: EngineConfig, socket_dir: str, core_pids: list[int],
                      client_index: int, startup_timeout_s: float = 600.0) -> "AsyncLLM":
        """API server ``client_index`` of several (``--api-server-count``): the engine for
        the cores the serve parent started (``dp_client.start_engine_cores``); its
        ``shutdown`` leaves them to the parent. Errors as ``from_engine_args``."""
        from pagellm.models.hf_config import load_hf_config

        hf_config = await asyncio.to_thread(load_hf_config, config.model.model)
        return await cls._create(config, hf_config, lambda: DPClient.connect(
            config, socket_dir, core_pids, client_index, startup_timeout_s))

    @classmethod
    async def _create(cls, config: EngineConfig, hf_config, start_client) -> "AsyncLLM":
        tokenizer, eos_token_ids = await asyncio.to_thread(load_frontend_tokenizer, config,
                                                           hf_config)
        engine = cls(config, await start_client(), tokenizer, eos_token_ids)
        if config.lora.enable_lora:
            engine.input_processor.lora_registry = LoRARegistry(config.lora, hf_config)
        return engine

    # ---- properties the server reads ----------------------------------------------------------

    @property
    def served_model_name(self) -> str:
        return self.config.model.served_model_name

    @property
    def max_model_len(self) -> int:
        return self.config.model.max_model_len

    @property
    def num_engines(self) -> int:
        """Engine cores (data-parallel replicas)."""
        return self.client.num_engines

    @property
    def last_stats(self) -> EngineStats | None:
        """The replicas' latest pushed stats merged (``merge_stats``); None before any push."""
        pushed = [stats for stats in self.engine_stats if stats is not None]
        return merge_stats(pushed) if pushed else None

    def engine_index_of(self, request_id: str) -> int:
        """The replica serving unfinished request ``request_id`` (0 when unknown)."""
        return self._engine_of_request.get(request_id, 0)

    @property
    def num_gpu_blocks(self) -> int:
        """KV-cache blocks on one replica's device (vLLM's name, CPU included)."""
        return self.client.ready.num_blocks

    @property
    def num_cpu_blocks(self) -> int:
        """CPU swap blocks (0 unless preemption_mode='swap')."""
        return self.client.ready.num_swap_blocks

    @property
    def num_unfinished_requests(self) -> int:
        return len(self._queues)

    @property
    def num_waiting_requests(self) -> int:
        """Core requests (n > 1 children counted) that would wait for a batch slot now: an
        estimate, without a round trip. The sent-but-unfinished count is exact; the batch
        capacity is max_num_seqs, or the running count of the last step when requests were
        waiting then (the KV cache or the token budget was the limit)."""
        capacity = self.config.scheduler.max_num_seqs * self.num_engines
        last_stats = self.last_stats
        if last_stats is not None and last_stats.num_waiting > 0:
            capacity = last_stats.num_running
        return max(0, len(self.output_processor.core_to_parent) - capacity)

    @property
    def errored(self) -> bool:
        return self.client.dead_error is not None

    @property
    def dead_error(self) -> EngineDeadError | None:
        return self.client.dead_error

    def is_healthy(self) -> bool:
        """False once the core died or was shut down (cheap: no round trip)."""
        return not self.errored and self.client.is_alive()

    def check_alive(self) -> None:
        """EngineDeadError unless the core is running (cheap: no round trip); right after the
        core process exits this already raises, before the exit is reported."""
        self.client.raise_if_dead()

    async def check_health(self, timeout_s: float = 5.0) -> None:
        """A round trip to the core; raises EngineDeadError if it does not answer."""
        try:
            await asyncio.wait_for(self.client.ping(), timeout_s)
        except asyncio.TimeoutError:
            raise EngineDeadError(f"the engine core did not answer within {timeout_s} s") from None

    async def stats(self) -> EngineStats:
        """Fresh stats from the core, every replica's merged (a round trip that waits for the
        current step to end; ``last_stats`` and ``stats_listeners`` have the pushed ones
        without waiting)."""
        return merge_stats(await self.client.stats())

    # ---- requests -----------------------------------------------------------------------------

    async def generate(self, prompt: PromptType, sampling_params: SamplingParams | None = None,
                       request_id: str | None = None, priority: int = 0,
                       lora_request=None) -> AsyncIterator[RequestOutput]:
        """Outputs of one prompt (see the module docstring for the contract)."""
        self.check_alive()
        if self.draining:
            raise ServiceUnavailableError("the server is shutting down and starts no new requests")
        params = sampling_params if sampling_params is not None else SamplingParams()
        request_id = uuid.uuid4().hex if request_id is None else request_id
        requests = prepare_requests(self.config, self.input_processor, self.output_processor,
                                    prompt, params, request_id, priority, time.time(),
                                    lora_request)
        queue = OutputCollector()
        self._queues[request_id] = queue
        finished = False
        # abort() or drain() ended it: they unregister the queue, then set their verdict (None
        # or an error); any output not read yet is dropped so that nothing arrives after it
        dropped = lambda: self._queues.get(request_id) is not queue  # noqa: E731
        try:
            self._engine_of_request[request_id] = await self.client.add_requests(requests)
            while not finished:
                item = await queue.get(dropped)
                if item is None:        # abort() ended it
                    return
                if isinstance(item, Exception):
                    finished = True     # nothing left to abort in a dead core
                    raise item
                finished = item.finished
                yield item
        finally:
            self._queues.pop(request_id, None)
            self._engine_of_request.pop(request_id, None)
            if not finished:
                await self._abort(request_id)

    async def abort(self, request_id: str) -> None:
        """End a request now: its generator returns and the core frees its blocks. Unknown or
        finished ids are ignored."""
        queue = self._queues.pop(request_id, None)
        await self._abort(request_id)
        if queue is not None:
            queue.end(None)

    async def _abort(self, request_id: str) -> bool:
        """Abort ``request_id`` in the core; False when it had nothing left to abort there."""
        core_ids = self.output_processor.abort_request(request_id)
        if core_ids and not self.errored:
            try:
                await self.client.abort_requests(core_ids)
            except EngineDeadError:
                pass
        return bool(core_ids)

    async def _handle_outputs(self) -> None:
        """Route each core output batch to the request queues; send stop-string aborts back."""
        try:
            while True:
                engine_index, batch = await self.client.get_output()
                self._publish_stats(batch.stats, engine_index)
                for start in range(0, len(batch), OUTPUT_CHUNK_SIZE):
                    if start:
                        await asyncio.sleep(0)
                    outputs, to_abort = self.output_processor.process(
                        batch, start, min(start + OUTPUT_CHUNK_SIZE, len(batch)))
                    for output in outputs:
                        queue = self._queues.get(output.request_id)
                        if queue is not None:
                            queue.put(output)
                    await self.client.abort_requests(to_abort, finished=True)   # stop strings
        except EngineDeadError as error:
            self._fail_all(error)
        except Exception as error:      # a bug here must not leave generators hanging
            logger.exception("the output handler failed")
            self._fail_all(EngineDeadError(f"the output handler failed: {error!r}"))
            await self.client.shutdown()

    def _publish_stats(self, stats: EngineStats, engine_index: int) -> None:
        self.engine_stats[engine_index] = stats
        for listener in self.stats_listeners:
            try:
                listener(stats, engine_index)
            except Exception:       # metrics must never stop the outputs
                logger.exception("a stats listener failed")

    def _fail_all(self, error: EngineDeadError) -> None:
        for queue in self._queues.values():
            queue.end(error)

    async def drain(self, timeout_s: float, drain_timeout_s: float | None = None) -> list[str]:
        """Take no new requests (``generate`` raises ServiceUnavailableError), wait up to
        ``timeout_s`` for the in-flight ones to finish, then abort the rest: their generators
        raise ServiceUnavailableError, whose message names ``drain_timeout_s`` (the configured
        timeout, when the caller already spent part of it; default ``timeout_s``). Returns the
        aborted ids."""
        if drain_timeout_s is None:
            drain_timeout_s = timeout_s
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._queues and not self.errored and loop.time() < deadline:
            await asyncio.sleep(0.05)
        aborted = []
        for request_id in list(self._queues):
            queue = self._queues.pop(request_id, None)
            if await self._abort(request_id):
                aborted.append(request_id)
            if queue is not None:   # behind a final output already queued, it is never read
                queue.end(ServiceUnavailableError(
                    f"the server shut down before this request finished (drain timeout "
                    f"{drain_timeout_s:g} s)"))
        return aborted

    async def shutdown(self, timeout_s: float = 10.0) -> None:
        """Stop the core processes (in-flight generators raise EngineDeadError). Idempotent."""
        await self.client.shutdown(timeout_s)
        try:
            await asyncio.wait_for(self._handler, timeout_s)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            pass


_OPEN = object()    # OutputCollector.verdict before the request's end is known


class OutputCollector:
    """One request's outputs that its consumer has not read yet, as vLLM's
    ``RequestOutputCollector``: a delta output put while the previous one is unread merges into
    it (``merge_delta_outputs``), so a consumer that falls behind the engine reads all of its
    new tokens at once, and each read costs one wake-up however many steps it covers. The
    request's end (``end``: None for an abort, or the exception to raise) comes after the
    outputs, unless they were dropped."""

    __slots__ = ("output", "verdict", "ready", "num_puts", "num_reads")

    def __init__(self):
        self.output: RequestOutput | None = None
        self.verdict: Exception | None | object = _OPEN
        self.ready = asyncio.Event()
        self.num_puts = 0       # outputs put (one per step that had news for the request)
        self.num_reads = 0      # outputs read (merged ones count once)

    def put(self, output: RequestOutput) -> None:
        self.num_puts += 1
        self.output = output if self.output is None else merge_delta_outputs(self.output, output)
        self.ready.set()

    def end(self, verdict: Exception | None) -> None:
        """The request's end: None (aborted) or the exception its generator raises. Only the
        first verdict counts."""
        if self.verdict is _OPEN:
            self.verdict = verdict
        self.ready.set()

    async def get(self, dropped: Callable[[], bool]) -> RequestOutput | Exception | None:
        """The unread outputs merged into one, else the verdict, waiting for either. Once
        ``dropped()`` is true the outputs are discarded and only the verdict comes."""
        while True:
            if self.output is not None and not dropped():
                output, self.output = self.output, None
                self.num_reads += 1
                return output
            self.output = None
            if self.verdict is not _OPEN:
                return self.verdict
            self.ready.clear()
            await self.ready.wait()


def merge_delta_outputs(first: RequestOutput, later: RequestOutput) -> RequestOutput:
    """``first`` (mutated and returned) followed by ``later``, two delta outputs of the same
    request: each completion's text, token ids and logprobs concatenated, the rest (finish
    and stop reasons, cumulative logprob, metrics, prompt logprobs) from ``later``. A final
    ("final" output kind) output replaces ``first``: it already holds everything."""
    if not later.outputs or len(first.outputs) != len(later.outputs) or any(
            a.index != b.index for a, b in zip(first.outputs, later.outputs)):
        return later
    for completion, new in zip(first.outputs, later.outputs):
        completion.text += new.text
        completion.token_ids.extend(new.token_ids)
        if completion.logprobs is not None and new.logprobs is not None:
            completion.logprobs.extend(new.logprobs)
        else:
            completion.logprobs = new.logprobs
        completion.cumulative_logprob = new.cumulative_logprob
        completion.finish_reason, completion.stop_reason = new.finish_reason, new.stop_reason
    first.prompt_logprobs, first.finished = later.prompt_logprobs, later.finished
    first.metrics, first.num_cached_tokens = later.metrics, later.num_cached_tokens
    return first
