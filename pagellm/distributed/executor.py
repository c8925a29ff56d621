"""Executors run the worker(s) for the engine core, behind one interface:

``determine_num_blocks()`` -> (KV blocks, swap blocks), the minimum over ranks;
``initialize_cache(num_blocks, num_swap_blocks)``; ``execute_model(SchedulerOutput,
non_block=False)`` -> ``ModelRunnerOutput`` (a ``StepFuture`` of it with ``non_block=True``;
None for a step with ``has_structured_output_requests``, whose output comes from
``sample_tokens(GrammarOutput, non_block)``: async scheduling only, so not on Ray);
``max_concurrent_batches`` (how many steps may be in flight: the pipeline depth);
``shutdown()``; ``vocab_size``; ``load_stats`` (one per rank).

- ``UniProcExecutor`` ("uni"): one rank in the engine-core process (no process group).
- ``MultiprocExecutor`` ("mp"): one spawned worker process per rank, rank 0 included.
- ``RayDistributedExecutor`` ("ray", ray_executor.py): one Ray actor per rank, on one host or
  several; imported only when selected.

Why rank 0 is a worker process too (vLLM V1's layout), not the engine-core process: the
engine core then never sits inside a collective, so it can wait for a step's result and for
the death of any worker at the same time (``zmq.Poller`` on the result socket and on every
process sentinel). A dead worker becomes an ``EngineDeadError`` at once, even on NCCL, which
does not notice a dead peer by itself; the cost is one more process and two ipc:// messages
per step (tens of microseconds).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
import weakref
from collections import deque
from typing import Callable

import msgspec
import torch
import zmq

from pagellm.config.engine_args import EngineConfig
from pagellm.core.sched_output import GrammarOutput, ModelRunnerOutput, SchedulerOutput
from pagellm.distributed.worker_proc import (CacheReady, DetermineNumBlocks, ExecuteModel,
                                             InitializeCache, NumBlocks, Profile, Profiled,
                                             SampleTokens, Shutdown, StepResult,
                                             WorkerArgs, WorkerFailed, WorkerReady, encoder,
                                             reply_decoder, run_worker_process)
from pagellm.errors import ClientError, EngineDeadError
from pagellm.models.loader import LoadStats, get_quant_config
from pagellm.platforms import Platform
from pagellm.zmq_context import make_context

logger = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 10.0     # how long workers get to exit after Shutdown before a kill
FAILURE_GRACE_MS = 500        # after a worker dies, wait this long for its WorkerFailed text


class StepFuture:
    """The ModelRunnerOutput of a step that may still be running on the workers (vLLM's
    ``execute_model(..., non_block=True)``). ``result()`` blocks until it is back (and
    raises what the executor raises when a worker fails)."""

    def __init__(self, wait: Callable[["StepFuture"], None] | None = None,
                 output: ModelRunnerOutput | None = None):
        self._wait = wait
        self._output = output

    def done(self) -> bool:
        return self._output is not None

    def set_result(self, output: ModelRunnerOutput) -> None:
        self._output = output

    def result(self) -> ModelRunnerOutput:
        if self._output is None:
            self._wait(self)
        return self._output


class UniProcExecutor:
    """Rank 0 in the engine-core process. With async scheduling, ``execute_model(non_block=
    True)`` returns once the step is launched on the device; its future's ``result()`` waits
    for the sampled tokens."""

    def __init__(self, config: EngineConfig, platform: Platform, hf_config, dtype: torch.dtype):
        from pagellm.worker.worker import Worker

        self.max_concurrent_batches = 2 if config.scheduler.async_scheduling else 1
        self.worker = Worker(config, platform, hf_config, dtype)
        self.vocab_size = hf_config.vocab_size
        self.load_stats = [self.worker.load_stats]

    def determine_num_blocks(self) -> tuple[int, int]:
        return self.worker.determine_num_blocks()

    def initialize_cache(self, num_blocks: int, num_swap_blocks: int) -> None:
        self.worker.initialize_cache(num_blocks, num_swap_blocks)

    def execute_model(self, sched: SchedulerOutput, non_block: bool = False):
        """The step's output (a StepFuture of it with ``non_block``); None for a step with
        ``has_structured_output_requests`` (its output comes from ``sample_tokens``)."""
        step = self.worker.execute_model_async(sched)
        if step is None:
            return None
        return self._output(step, non_block)

    def sample_tokens(self, grammar_output: GrammarOutput, non_block: bool = False):
        """Mask and sample the step launched last (with ``has_structured_output_requests``);
        its output, or a StepFuture of it."""
        return self._output(self.worker.sample_tokens(grammar_output), non_block)

    def _output(self, step, non_block: bool):
        if not non_block:
            return self.worker.resolve(step)
        return StepFuture(lambda future: future.set_result(self.worker.resolve(step)))

    def profile(self, is_start: bool) -> list[str]:
        """Start or stop the torch profiler (Worker.profile); the kernel table per rank."""
        return [self.worker.profile(is_start)]

    def shutdown(self) -> None:
        self.worker = None


def make_executor(config: EngineConfig, platform: Platform, hf_config, dtype: torch.dtype):
    """The executor ``config.parallel`` asks for, after checking the layout fits the model and
    the devices (ClientError before any worker starts)."""
    parallel = config.parallel
    parallel.verify_with_model(hf_config)
    # the quantization must fit the checkpoint: fail before any worker starts
    get_quant_config(config.model.model, hf_config, config.model.quantization)
    # a Ray cluster's GPUs may be on other hosts: the Ray executor checks its resources
    if (platform.is_cuda and parallel.executor_backend != "ray"
            and parallel.world_size > torch.cuda.device_count()):
        raise ClientError(f"tensor_parallel_size x pipeline_parallel_size = {parallel.world_size} "
                          f"ranks, but only {torch.cuda.device_count()} CUDA devices are visible",
                          param="tensor_parallel_size")
    if parallel.executor_backend == "mp":
        return MultiprocExecutor(config, platform, hf_config, dtype)
    if parallel.executor_backend == "ray":
        from pagellm.distributed.ray_executor import RayDistributedExecutor   # imports ray
        return RayDistributedExecutor(config, platform, hf_config, dtype)
    return UniProcExecutor(config, platform, hf_config, dtype)


class MultiprocExecutor:
    """One spawned worker process per rank; calls go to every rank over ZMQ, step results
    come back from the output rank (TP rank 0 of the last pipeline stage). Under pipeline
    parallelism up to ``max_concurrent_batches`` steps run at once (``non_block=True``);
    their results come back in the order the steps were sent. Any worker failure raises
    EngineDeadError (ClientError for a bad configuration found while loading) and stops
    every worker; later calls raise too."""

    def __init__(self, config: EngineConfig, platform: Platform, hf_config, dtype: torch.dtype):
        self.world_size = config.parallel.world_size
        self.output_rank = config.parallel.output_rank
        self.max_concurrent_batches = (2 if config.scheduler.async_scheduling
                                       else config.parallel.pipeline_parallel_size)
        """Steps that may be in flight at once: one per pipeline stage, or two with async
        scheduling (the workers launch step N+1 before they send step N's tokens)."""
        self._pending_steps: deque[StepFuture] = deque()
        self.vocab_size = hf_config.vocab_size
        self.dead_error: Exception | None = None
        self._socket_dir = tempfile.mkdtemp(prefix="pagellm-workers-")
        # LINGER 0, never terminated by garbage collection (an executor dropped without
        # shutdown must not block a later collection in term(): pagellm/zmq_context.py)
        self._context = make_context()
        self._result_socket = self._context.socket(zmq.PULL)
        result_address = f"ipc://{self._socket_dir}/results"
        self._result_socket.bind(result_address)
        self._input_sockets = []
        self.processes: list[multiprocessing.Process] = []
        # the rendezvous store lives here, so its port is known before any worker starts
        self._store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True,
                                                 wait_for_workers=False)
        # an executor dropped without shutdown() (an LLM going out of scope) still stops them
        weakref.finalize(self, _kill_workers, self.processes, self._socket_dir)
        try:
            self._start_workers(config, platform, dtype, result_address)
            ready = self._collect(WorkerReady, range(self.world_size))
            ranks = sorted(ready.values(), key=lambda r: r.rank)
            self.load_stats = [LoadStats(r.checkpoint_bytes_read, r.param_bytes) for r in ranks]
            self.custom_all_reduce_max_bytes = [r.custom_all_reduce_max_bytes for r in ranks]
            """Per rank: the largest all-reduce taking the one-shot path (0: NCCL only)."""
            self.fused_all_reduce_max_bytes = [r.fused_all_reduce_max_bytes for r in ranks]
            """Per rank: the largest all-reduce fused with the RMSNorm after it (0: never)."""
        except BaseException:
            self.shutdown()
            raise

    def _start_workers(self, config, platform, dtype, result_address: str) -> None:
        context = multiprocessing.get_context("spawn")
        for rank in range(self.world_size):
            socket = self._context.socket(zmq.PUSH)
            input_address = f"ipc://{self._socket_dir}/input-{rank}"
            socket.bind(input_address)
            self._input_sockets.append(socket)
            args = WorkerArgs(config, rank, self.world_size, platform.name,
                              str(dtype).removeprefix("torch."), "127.0.0.1", self._store.port,
                              input_address, result_address)
            process = context.Process(target=run_worker_process, name=f"pagellm-worker-{rank}",
                                      args=(msgspec.json.encode(args),), daemon=True)
            process.start()
            self.processes.append(process)
        logger.info("started %d worker processes (pids %s)", self.world_size,
                    [p.pid for p in self.processes])

    def determine_num_blocks(self) -> tuple[int, int]:
        """The minimum over ranks of each rank's (KV blocks, swap blocks)."""
        self._broadcast(DetermineNumBlocks())
        replies = self._collect(NumBlocks, range(self.world_size)).values()
        return min(r.num_blocks for r in replies), min(r.num_swap_blocks for r in replies)

    def initialize_cache(self, num_blocks: int, num_swap_blocks: int) -> None:
        self._broadcast(InitializeCache(num_blocks, num_swap_blocks))
        self._collect(CacheReady, range(self.world_size))

    def execute_model(self, sched: SchedulerOutput, non_block: bool = False):
        """Send the step to every rank; its ModelRunnerOutput, or with ``non_block`` a
        StepFuture of it (the call returns once the step is sent). None for a step with
        ``has_structured_output_requests``: its output comes from ``sample_tokens``."""
        self._broadcast(ExecuteModel(sched))
        if sched.has_structured_output_requests:
            return None
        return self._expect_step(non_block)

    def sample_tokens(self, grammar_output: GrammarOutput, non_block: bool = False):
        """Send the late bitmask of the step launched last to every rank; its output, or a
        StepFuture of it."""
        self._broadcast(SampleTokens(grammar_output))
        return self._expect_step(non_block)

    def _expect_step(self, non_block: bool):
        future = StepFuture(self._wait_step)
        self._pending_steps.append(future)
        return future if non_block else future.result()

    def profile(self, is_start: bool) -> list[str]:
        """Start or stop the torch profiler on every rank (Worker.profile); after a stop, each
        rank's kernel table, rank order. Steps still in flight are collected first (their
        futures keep the outputs for the engine core)."""
        for future in list(self._pending_steps):
            future.result()
        self._broadcast(Profile(is_start))
        replies = self._collect(Profiled, range(self.world_size))
        return [replies[rank].summary for rank in range(self.world_size)]

    def _wait_step(self, future: StepFuture) -> None:
        """Collect step results, oldest step first, until ``future`` has its output."""
        while not future.done():
            if self.dead_error is not None:
                raise self.dead_error
            output = self._collect(StepResult, [self.output_rank])[self.output_rank].output
            self._pending_steps.popleft().set_result(output)

    def _broadcast(self, call) -> None:
        if self.dead_error is not None:
            raise self.dead_error
        message = encoder.encode(call)
        for socket in self._input_sockets:
            socket.send(message)

    def _collect(self, reply_type: type, ranks) -> dict:
        """Wait for one ``reply_type`` from each of ``ranks``; raises on WorkerFailed or on
        the exit of any worker (whichever comes first), after stopping the workers."""
        pending, replies = set(ranks), {}
        poller = zmq.Poller()
        poller.register(self._result_socket, zmq.POLLIN)
        for process in self.processes:
            poller.register(process.sentinel, zmq.POLLIN)
        while pending:
            events = dict(poller.poll())
            if self._result_socket in events:
                reply = reply_decoder.decode(self._result_socket.recv())
                if isinstance(reply, WorkerFailed):
                    self._fail(reply)
                assert isinstance(reply, reply_type), f"unexpected worker reply {reply}"
                replies[reply.rank] = reply
                pending.discard(reply.rank)
            elif events:
                self._fail(self._failure_after_exit())
        return replies

    def _failure_after_exit(self) -> WorkerFailed:
        """The WorkerFailed a dying worker may still send, or one describing the exit."""
        if self._result_socket.poll(FAILURE_GRACE_MS):
            reply = reply_decoder.decode(self._result_socket.recv())
            if isinstance(reply, WorkerFailed):
                return reply
        return WorkerFailed(-1, "a worker process exited", "", False)

    def _exited_ranks(self, reporting_rank: int) -> list[str]:
        """'rank r (pid p) exited with code c / was killed by SIGX' for every worker that is
        gone, other than the one that reported an error itself."""
        texts = []
        for rank, process in enumerate(self.processes):
            if rank == reporting_rank or process.is_alive():
                continue
            code = process.exitcode
            how = (f"was killed by {signal.Signals(-code).name}" if code is not None and code < 0
                   else f"exited with code {code}")
            texts.append(f"worker rank {rank} (pid {process.pid}) {how}")
        return texts

    def _fail(self, failure: WorkerFailed) -> None:
        """Stop every worker and raise: the exits of workers that died without a word come
        first (a peer's collective error is only their consequence)."""
        exited = self._exited_ranks(failure.rank)
        causes = exited + ([f"worker rank {failure.rank} failed: {failure.error}"]
                           if failure.rank >= 0 else [])
        text = "parallel " + "; ".join(causes or [failure.error])
        error: Exception = (ClientError(failure.error) if failure.client_error and not exited
                            else EngineDeadError(text))
        logger.error("%s%s", text, f"\n{failure.traceback}" if failure.traceback else "")
        self.dead_error = error
        self.shutdown()
        raise error

    def shutdown(self) -> None:
        """Ask every worker to exit, kill those still alive after SHUTDOWN_TIMEOUT_S (at once
        once one has failed); close the sockets. Idempotent."""
        if self._context.closed:
            return
        if self.dead_error is None:
            try:
                message = encoder.encode(Shutdown())
                for socket in self._input_sockets:
                    socket.send(message, zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        deadline = time.monotonic() + (0 if self.dead_error else SHUTDOWN_TIMEOUT_S)
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(5)
        for socket in [self._result_socket, *self._input_sockets]:
            socket.close(linger=0)
        self._context.term()
        shutil.rmtree(self._socket_dir, ignore_errors=True)
        if os.path.exists(self._socket_dir):
            logger.warning("could not remove %s", self._socket_dir)


def _kill_workers(processes: list[multiprocessing.Process], socket_dir: str) -> None:
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join(5)
    shutil.rmtree(socket_dir, ignore_errors=True)
