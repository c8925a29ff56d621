"""One rank of a multiprocess engine: the worker process's main loop and its messages.

``MultiprocExecutor`` spawns one process per rank with ``run_worker_process``; the Ray
executor's actors (ray_executor.RayWorker) reuse ``start_worker``, ``handle_call`` and the
messages, carried as bytes in Ray calls instead of over ZMQ. The only thing Python pickles is
the start-up argument (``WorkerArgs`` as msgspec JSON bytes); every message afterwards is a
msgspec Struct below, encoded with msgpack, holding the step messages themselves
(``SchedulerOutput``, ``ModelRunnerOutput``: columnar Structs from ``pagellm.core.sched_output``,
no mirror types):

    executor PUSH -> rank r PULL (one socket per rank)   ExecutorCall (same call to every rank)
    every rank PUSH -> executor PULL (one shared socket) WorkerReply

Call order: ``WorkerReady`` is sent once the model is loaded; then ``DetermineNumBlocks`` ->
``NumBlocks`` from every rank, ``InitializeCache`` -> ``CacheReady`` from every rank,
``ExecuteModel`` -> ``StepResult`` from ``ParallelConfig.output_rank`` only (TP rank 0 of
the last pipeline stage: every rank of that stage samples the same tokens, see
LogitsProcessor; earlier stages pass their hidden states on and sample nothing), ``Shutdown``
-> exit 0. Under pipeline parallelism the executor sends the next ExecuteModel before the
previous StepResult is back; each rank runs its calls in order. An exception sends
``WorkerFailed`` and exits 1. A worker whose parent is gone exits on its own.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import traceback

import msgspec
import torch
import zmq

from pagellm.config.engine_args import EngineConfig
from pagellm.core.sched_output import (GrammarOutput, ModelRunnerOutput, SchedulerOutput,
                                       decode_array, encode_array)
from pagellm.errors import ClientError
from pagellm.logger import init_logging

logger = logging.getLogger(__name__)

IDLE_POLL_MS = 1000     # how often an idle worker checks that its parent is alive


class WorkerArgs(msgspec.Struct, frozen=True):
    """Everything a worker process needs to start (sent once, as JSON)."""
    config: EngineConfig
    rank: int
    world_size: int
    device_type: str            # "cpu" | "cuda"
    dtype: str                  # torch dtype name, e.g. "float32"
    store_host: str             # the executor's TCPStore, for torch.distributed rendezvous
    store_port: int
    input_address: str          # this rank's ipc:// address for ExecutorCall ("" under Ray)
    result_address: str         # the shared ipc:// address for WorkerReply ("" under Ray)
    device_index: int | None = None
    """CUDA device of this rank among the visible ones; None = the rank (mp: every GPU of
    the host is visible to every worker). The Ray executor sets it per node."""


class DetermineNumBlocks(msgspec.Struct, tag=True):
    pass


class InitializeCache(msgspec.Struct, tag=True):
    num_blocks: int
    num_swap_blocks: int


class ExecuteModel(msgspec.Struct, tag=True):
    scheduler_output: SchedulerOutput


class SampleTokens(msgspec.Struct, tag=True):
    """The late bitmask of the last ExecuteModel, sent when that step had
    ``has_structured_output_requests`` (async scheduling: the rank masks and samples)."""
    grammar_output: GrammarOutput


class Shutdown(msgspec.Struct, tag=True):
    pass


class Profile(msgspec.Struct, tag=True):
    is_start: bool


ExecutorCall = (DetermineNumBlocks | InitializeCache | ExecuteModel | SampleTokens | Profile
                | Shutdown)


class WorkerReady(msgspec.Struct, tag=True):
    rank: int
    checkpoint_bytes_read: int
    """This rank's LoadStats: checkpoint bytes it read and parameter bytes it holds."""
    param_bytes: int
    custom_all_reduce_max_bytes: int = 0
    """All-reduces up to this size take the one-shot path on this rank (0: NCCL only)."""
    fused_all_reduce_max_bytes: int = 0
    """All-reduces up to this size before an RMSNorm run fused with it (0: never)."""


class NumBlocks(msgspec.Struct, tag=True):
    rank: int
    num_blocks: int
    num_swap_blocks: int


class CacheReady(msgspec.Struct, tag=True):
    rank: int


class StepResult(msgspec.Struct, tag=True):
    rank: int
    output: ModelRunnerOutput


class WorkerFailed(msgspec.Struct, tag=True):
    rank: int
    error: str                  # "Type: message"
    traceback: str
    client_error: bool          # a ClientError (bad configuration), not a crash


class Profiled(msgspec.Struct, tag=True):
    rank: int
    summary: str
    """After a stop: this rank's kernel table (see Worker.profile); empty after a start."""


WorkerReply = WorkerReady | NumBlocks | CacheReady | StepResult | Profiled | WorkerFailed

# numpy arrays (the grammar bitmask, logprobs) travel as (dtype, shape, bytes)
encoder = msgspec.msgpack.Encoder(enc_hook=encode_array)
call_decoder = msgspec.msgpack.Decoder(ExecutorCall, dec_hook=decode_array)
reply_decoder = msgspec.msgpack.Decoder(WorkerReply, dec_hook=decode_array)


class _ParentGone(Exception):
    """The executor's process exited."""


def run_worker_process(args_json: bytes) -> None:
    """Entry point of a spawned worker; exits 0 after Shutdown (or when the parent is gone),
    1 after an error (reported as WorkerFailed first)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the engine decides how to shut down
    args = msgspec.json.decode(args_json, type=WorkerArgs)
    init_logging(f"worker-{args.rank}")
    context = zmq.Context()
    input_socket = context.socket(zmq.PULL)
    input_socket.connect(args.input_address)
    result_socket = context.socket(zmq.PUSH)
    result_socket.connect(args.result_address)
    exit_code = 0
    try:
        worker = start_worker(args)
        from pagellm.distributed.parallel_state import get_tp_group
        custom = get_tp_group().custom_all_reduce
        result_socket.send(encoder.encode(WorkerReady(
            args.rank, worker.load_stats.checkpoint_bytes_read, worker.load_stats.param_bytes,
            custom.max_bytes if custom is not None else 0,
            custom.fused_max_bytes if custom is not None else 0)))
        _serve(worker, args.rank, args.rank == args.config.parallel.output_rank, input_socket,
               result_socket, os.getppid())
    except _ParentGone:
        logger.warning("worker %d: the engine process is gone; exiting", args.rank)
    except Exception as error:
        exit_code = 1
        if _peer_lost(error):       # the rank that died tells why; here one line is enough
            logger.error("worker %d: a collective failed because a peer rank is gone (%s)",
                         args.rank, str(error).strip().splitlines()[0][:200])
        else:
            logger.error("worker %d failed: %s", args.rank, error, exc_info=True)
        result_socket.send(encoder.encode(WorkerFailed(
            args.rank, f"{type(error).__name__}: {error}", traceback.format_exc(),
            isinstance(error, ClientError))))
    finally:
        from pagellm.distributed.parallel_state import destroy_distributed_environment
        destroy_distributed_environment()
        input_socket.close(linger=0)
        result_socket.close(linger=2000)
        context.term()
    sys.exit(exit_code)


PEER_LOST_MARKERS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                     "NCCL communicator was aborted", "remote process exited")


def _peer_lost(error: Exception) -> bool:
    """True for the errors gloo / NCCL raise in the surviving ranks when another rank dies
    (a killed worker): those tracebacks say nothing about the cause."""
    text = str(error)
    return isinstance(error, RuntimeError) and any(m in text for m in PEER_LOST_MARKERS)


def start_worker(args: WorkerArgs):
    """Join the process groups, then build this rank's Worker (device, model shard)."""
    from pagellm.distributed.parallel_state import (init_distributed_environment,
                                                    initialize_model_parallel)
    from pagellm.models.hf_config import load_hf_config
    from pagellm.platforms import Platform
    from pagellm.worker.worker import Worker

    if args.device_type == "cuda":
        index = args.rank if args.device_index is None else args.device_index
        platform = Platform("cuda", torch.device("cuda", index))
        torch.cuda.set_device(platform.device)
    else:
        platform = Platform("cpu", torch.device("cpu"))
        # the ranks share the host's cores: without this each one starts a thread per core
        torch.set_num_threads(max(1, torch.get_num_threads() // args.world_size))
    init_distributed_environment(args.world_size, args.rank, platform.dist_backend(),
                                 args.store_host, args.store_port)
    parallel = args.config.parallel
    initialize_model_parallel(parallel.tensor_parallel_size, parallel.pipeline_parallel_size,
                              parallel.layer_partition())
    if platform.is_cuda and not parallel.disable_custom_all_reduce:
        from pagellm.distributed.parallel_state import init_custom_all_reduce
        init_custom_all_reduce(platform.device, getattr(torch, args.dtype))
    hf_config = load_hf_config(args.config.model.model)
    return Worker(args.config, platform, hf_config, getattr(torch, args.dtype))


def _serve(worker, rank: int, reports_steps: bool, input_socket: zmq.Socket,
           result_socket: zmq.Socket, parent_pid: int) -> None:
    """Answer executor calls until Shutdown; ``reports_steps``: this rank sends StepResults.

    A step is launched as soon as it arrives; its result is sent once its tokens are on the
    host. Under async scheduling the executor sends step N+1 before it waits for step N, so
    while step N runs on the device this loop watches for the next call: if it arrives first,
    step N+1 is launched (queued behind N on the device) before step N's result is sent,
    and the device never waits for the host between steps. A step with
    ``has_structured_output_requests`` is launched up to its logits; step N's result goes out
    then (the engine core needs its tokens for the bitmask), and the SampleTokens call that
    follows finishes the step."""
    unresolved = None       # the launched step whose result is not sent yet
    while True:
        if unresolved is not None and not _call_before_done(input_socket, unresolved):
            _send_step(worker, rank, reports_steps, unresolved, result_socket)
            unresolved = None
            continue
        if unresolved is None and not input_socket.poll(IDLE_POLL_MS):
            if os.getppid() != parent_pid:
                raise _ParentGone()
            continue
        call = call_decoder.decode(input_socket.recv())
        if isinstance(call, (ExecuteModel, SampleTokens)):
            # None: a step launched for late sampling (its SampleTokens follows)
            step = (worker.execute_model_async(call.scheduler_output)
                    if isinstance(call, ExecuteModel) else worker.sample_tokens(call.grammar_output))
            if unresolved is not None:
                _send_step(worker, rank, reports_steps, unresolved, result_socket)
            unresolved = step
            continue
        if unresolved is not None:
            _send_step(worker, rank, reports_steps, unresolved, result_socket)
            unresolved = None
        if isinstance(call, Shutdown):
            return
        reply = handle_call(worker, rank, call, reports_steps)
        if reply is not None:
            result_socket.send(encoder.encode(reply))


def _call_before_done(input_socket: zmq.Socket, step) -> bool:
    """Wait until the next executor call arrives (True) or ``step``'s device work is done
    (False), whichever comes first. Spins: a step lasts milliseconds."""
    event = step.event
    while True:
        if input_socket.poll(0):
            return True
        if event is None or event.query():
            return False
        time.sleep(0)


def _send_step(worker, rank: int, reports_steps: bool, step, result_socket: zmq.Socket) -> None:
    output = worker.resolve(step)
    if reports_steps:
        result_socket.send(encoder.encode(StepResult(rank, output)))


def handle_call(worker, rank: int, call: ExecutorCall, reports_steps: bool) -> WorkerReply | None:
    """Run one executor call (not Shutdown) on this rank's Worker: the reply to send, or None
    for a step that another rank reports (``reports_steps``: this rank is the last pipeline
    stage's TP rank 0, ``ParallelConfig.output_rank``). Shared by the mp worker loop and the
    Ray actor."""
    if isinstance(call, ExecuteModel):
        output = worker.execute_model(call.scheduler_output)
        return StepResult(rank, output) if reports_steps else None
    if isinstance(call, DetermineNumBlocks):
        return NumBlocks(rank, *worker.determine_num_blocks())
    if isinstance(call, InitializeCache):
        worker.initialize_cache(call.num_blocks, call.num_swap_blocks)
        return CacheReady(rank)
    if isinstance(call, Profile):
        return Profiled(rank, worker.profile(call.is_start))
    raise TypeError(f"unexpected executor call {call}")
