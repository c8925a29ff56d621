"""RayDistributedExecutor ("ray"): one Ray actor per rank, in a placement group, so that the
ranks of one engine may span several hosts of a Ray cluster.

Same contract as ``MultiprocExecutor`` (see executor.py) and the same per-rank code: each actor
builds its Worker with ``worker_proc.start_worker`` from a ``WorkerArgs`` (JSON bytes) and
answers ``worker_proc.handle_call``. Calls and replies are the msgspec structs of worker_proc,
encoded with msgpack; Ray carries those bytes as remote-call arguments and results, so nothing
but bytes is pickled. Every rank runs every call; the step's tokens come from the rank that
reports them (rank 0).

Cluster: ``ray.init()`` connects to the cluster named by ``RAY_ADDRESS`` or to one started on
this host with ``ray start``, and otherwise starts a local one; an already initialised Ray is
used as it is. Placement: one bundle per rank (``{"GPU": 1}`` on CUDA, ``{"CPU": 1}`` on CPU),
``STRICT_PACK`` when one node holds them all, else ``PACK`` (as few nodes as possible). Ranks
are numbered node by node, the driver's node first, so a tensor-parallel group (consecutive
ranks) stays on one node when it fits. torch.distributed meets at a TCPStore hosted by this
process on the driver node's IP and a free port.

Failures: an actor that dies (process killed, node lost) makes its call raise
``RayActorError`` at once; a rank that raises replies ``WorkerFailed``. Either stops every
actor and raises ``EngineDeadError`` (``ClientError`` for a bad configuration found while
loading); later calls raise it again. A rank that hangs makes its peers' collectives time out
(parallel_state.DEFAULT_DIST_TIMEOUT_S), which they report as a failure.

This module imports ray; it is imported only when ``distributed_executor_backend="ray"``.
"""

from __future__ import annotations

import logging
import os
from typing import NoReturn

import msgspec
import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError, RayError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from pagellm.config.engine_args import EngineConfig
from pagellm.core.sched_output import ModelRunnerOutput, SchedulerOutput
from pagellm.distributed.worker_proc import (CacheReady, DetermineNumBlocks, ExecuteModel,
                                             InitializeCache, NumBlocks, StepResult,
                                             WorkerArgs, WorkerFailed, WorkerReady, encoder,
                                             reply_decoder)
from pagellm.errors import ClientError, EngineDeadError
from pagellm.models.loader import LoadStats
from pagellm.platforms import Platform

logger = logging.getLogger(__name__)

PLACEMENT_TIMEOUT_S = 120.0   # how long the cluster gets to reserve every rank's bundle
SHUTDOWN_TIMEOUT_S = 10.0     # how long actors get to leave their process groups before a kill
FAILURE_GRACE_S = 2.0         # after one rank fails, wait this long to learn which actors died


class RayWorker:
    """One rank inside a Ray actor: the mp worker's start-up and call handling, with calls
    and replies as msgspec bytes. Methods never raise: an error becomes a WorkerFailed."""

    def __init__(self) -> None:
        self.worker = None
        self.rank = -1

    def node_info(self) -> tuple[str, str, list[str], int]:
        """(Ray node id, node IP, GPU ids Ray gave this actor, pid)."""
        return (ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address(),
                [str(gpu) for gpu in ray.get_gpu_ids()], os.getpid())

    def start(self, args_json: bytes, visible_devices: str | None) -> bytes:
        """Join the process groups and load this rank's shard: WorkerReady or WorkerFailed.
        ``visible_devices`` replaces CUDA_VISIBLE_DEVICES (every GPU of the node that holds a
        rank of this engine, so that peers on the node can reach each other's memory)."""
        from pagellm.distributed.worker_proc import start_worker

        args = msgspec.json.decode(args_json, type=WorkerArgs)
        self.rank = args.rank
        logging.basicConfig(level=logging.INFO,
                            format=f"%(asctime)s worker-{args.rank} %(message)s")
        if visible_devices is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = visible_devices
        try:
            self.worker = start_worker(args)
        except Exception as error:
            return self._failed(error)
        stats = self.worker.load_stats
        return encoder.encode(WorkerReady(args.rank, stats.checkpoint_bytes_read,
                                          stats.param_bytes))

    def call(self, message: bytes) -> bytes | None:
        """One encoded ExecutorCall: the encoded reply, or None when another rank reports."""
        from pagellm.distributed.worker_proc import call_decoder, handle_call

        try:
            reply = handle_call(self.worker, self.rank, call_decoder.decode(message))
        except Exception as error:
            return self._failed(error)
        return None if reply is None else encoder.encode(reply)

    def shutdown(self) -> None:
        """Leave the process groups and drop the model (the actor is killed afterwards)."""
        from pagellm.distributed.parallel_state import destroy_distributed_environment

        self.worker = None
        destroy_distributed_environment()

    def _failed(self, error: Exception) -> bytes:
        import traceback

        logger.error("worker %d failed: %s", self.rank, error, exc_info=True)
        return encoder.encode(WorkerFailed(self.rank, f"{type(error).__name__}: {error}",
                                           traceback.format_exc(),
                                           isinstance(error, ClientError)))


class RayDistributedExecutor:
    """Ranks as Ray actors; calls go to every actor, the step's result comes from rank 0."""

    def __init__(self, config: EngineConfig, platform: Platform, hf_config, dtype: torch.dtype):
        self.world_size = config.parallel.world_size
        self.vocab_size = hf_config.vocab_size
        self.dead_error: Exception | None = None
        self.workers: list = []
        """Actor handles in rank order."""
        self.worker_pids: list[int] = []
        self.worker_nodes: list[str] = []
        """Node IP of each rank."""
        self._placement_group = None
        if not ray.is_initialized():
            ray.init()
        driver_ip = ray.util.get_node_ip_address()
        # the rendezvous store lives here, so its address is known before any actor starts
        self._store = torch.distributed.TCPStore(driver_ip, 0, is_master=True,
                                                 wait_for_workers=False)
        try:
            bundle = {"GPU": 1} if platform.is_cuda else {"CPU": 1}
            self._placement_group = _reserve(bundle, self.world_size)
            visible = self._create_workers(bundle, driver_ip)
            self._start_workers(config, platform, dtype, driver_ip, visible)
        except BaseException:
            self.shutdown()
            raise

    def _create_workers(self, bundle: dict, driver_ip: str) -> list[tuple[str | None, int]]:
        """One actor per bundle, then ordered by node (the driver's first): returns per rank
        (CUDA_VISIBLE_DEVICES for it, its device index there); (None, rank) on CPU."""
        actor_class = ray.remote(RayWorker)
        actors = [actor_class.options(
            num_cpus=bundle.get("CPU", 0), num_gpus=bundle.get("GPU", 0),
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=self._placement_group, placement_group_bundle_index=index))
            .remote() for index in range(self.world_size)]
        self.workers = actors           # in bundle order until the ranks are known
        infos = self._wait({index: actor.node_info.remote() for index, actor in enumerate(actors)})
        order = sorted(range(self.world_size),
                       key=lambda i: (infos[i][1] != driver_ip, infos[i][1], i))
        self.workers = [actors[i] for i in order]
        self.worker_nodes = [infos[i][1] for i in order]
        self.worker_pids = [infos[i][3] for i in order]
        node_gpus: dict[str, list[str]] = {}
        for _, ip, gpus, _ in infos.values():
            node_gpus.setdefault(ip, []).extend(gpus)
        visible = []
        for rank, i in enumerate(order):
            gpus = sorted(node_gpus[infos[i][1]], key=_gpu_sort_key)
            own = infos[i][2]
            visible.append((",".join(gpus), gpus.index(own[0])) if own else (None, rank))
        logger.info("Ray workers: %s", ", ".join(f"rank {r} on {ip} (pid {pid})" for r, (ip, pid)
                                                 in enumerate(zip(self.worker_nodes,
                                                                  self.worker_pids))))
        return visible

    def _start_workers(self, config, platform, dtype, driver_ip: str,
                       visible: list[tuple[str | None, int]]) -> None:
        """Every actor joins the process groups and loads its shard; sets load_stats."""
        refs = {}
        for rank, (actor, (devices, device_index)) in enumerate(zip(self.workers, visible)):
            args = WorkerArgs(config=config, rank=rank, world_size=self.world_size,
                              device_type=platform.name,
                              dtype=str(dtype).removeprefix("torch."), store_host=driver_ip,
                              store_port=self._store.port, input_address="", result_address="",
                              device_index=device_index if platform.is_cuda else None)
            refs[rank] = actor.start.remote(msgspec.json.encode(args), devices)
        ready = self._wait(refs)
        self.load_stats = [LoadStats(r.checkpoint_bytes_read, r.param_bytes)
                           for r in (ready[rank] for rank in range(self.world_size))]

    def determine_num_blocks(self) -> tuple[int, int]:
        """The minimum over ranks of each rank's (KV blocks, swap blocks)."""
        replies = self._call_all(DetermineNumBlocks()).values()
        assert all(isinstance(r, NumBlocks) for r in replies), replies
        return min(r.num_blocks for r in replies), min(r.num_swap_blocks for r in replies)

    def initialize_cache(self, num_blocks: int, num_swap_blocks: int) -> None:
        replies = self._call_all(InitializeCache(num_blocks, num_swap_blocks)).values()
        assert all(isinstance(r, CacheReady) for r in replies), replies

    def execute_model(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        replies = self._call_all(ExecuteModel(sched))
        results = [r for r in replies.values() if isinstance(r, StepResult)]
        assert len(results) == 1, f"expected one StepResult, got {replies}"
        return results[0].output

    def _call_all(self, call) -> dict:
        """Send ``call`` to every rank; {rank: decoded reply or None} once all answered."""
        if self.dead_error is not None:
            raise self.dead_error
        message = encoder.encode(call)
        return self._wait({rank: actor.call.remote(message)
                           for rank, actor in enumerate(self.workers)})

    def _wait(self, refs: dict) -> dict:
        """{rank: result} for {rank: ObjectRef}, bytes results decoded as WorkerReply; raises
        (after stopping every actor) as soon as one actor died or replied WorkerFailed."""
        rank_of = {ref: rank for rank, ref in refs.items()}
        pending, results = list(refs.values()), {}
        while pending:
            [ref], pending = ray.wait(pending, num_returns=1)
            rank = rank_of[ref]
            try:
                result = ray.get(ref)
            except RayActorError as error:
                self._fail(None, [self._death_text(rank, error)], pending, rank_of)
            except RayError as error:     # an exception that escaped a RayWorker method
                self._fail(WorkerFailed(rank, f"{type(error).__name__}: {error}", "", False),
                           [], pending, rank_of)
            if isinstance(result, bytes):
                result = reply_decoder.decode(result)
                if isinstance(result, WorkerFailed):
                    self._fail(result, [], pending, rank_of)
            results[rank] = result
        return results

    def _fail(self, failure: WorkerFailed | None, deaths: list[str], pending: list,
              rank_of: dict) -> NoReturn:
        """Stop every actor and raise. Deaths come first (a peer's collective error is only
        their consequence): those known, then those of ``pending`` calls that end within
        FAILURE_GRACE_S."""
        ready, _ = ray.wait(pending, num_returns=len(pending), timeout=FAILURE_GRACE_S)
        for ref in ready:
            try:
                ray.get(ref)
            except RayActorError as error:
                deaths.append(self._death_text(rank_of[ref], error))
            except Exception:   # noqa: BLE001 - only actor deaths are named here
                pass
        causes = deaths + ([f"worker rank {failure.rank} failed: {failure.error}"]
                           if failure is not None else [])
        text = "Ray executor: " + "; ".join(causes)
        error: Exception = (ClientError(failure.error)
                            if failure is not None and failure.client_error and not deaths
                            else EngineDeadError(text))
        logger.error("%s%s", text, f"\n{failure.traceback}" if failure and failure.traceback
                     else "")
        self.dead_error = error
        self.shutdown()
        raise error

    def _death_text(self, rank: int, error: RayActorError) -> str:
        """'worker rank r (pid p on ip) died: <Ray's reason>'."""
        where = (f" (pid {self.worker_pids[rank]} on {self.worker_nodes[rank]})"
                 if rank < len(self.worker_pids) else "")
        return f"worker rank {rank}{where} died: {_death_reason(error)}"

    def shutdown(self) -> None:
        """Ask every actor to leave its process groups (unless one failed), kill the actors,
        release the placement group. Idempotent; leaves Ray itself running."""
        if self.workers and self.dead_error is None:
            refs = [actor.shutdown.remote() for actor in self.workers]
            try:
                ray.get(refs, timeout=SHUTDOWN_TIMEOUT_S)
            except (GetTimeoutError, RayActorError):
                pass
        for actor in self.workers:
            ray.kill(actor)
        self.workers = []
        if self._placement_group is not None:
            remove_placement_group(self._placement_group)
            self._placement_group = None


def _reserve(bundle: dict, world_size: int):
    """A ready placement group of ``world_size`` bundles; ClientError when the cluster lacks
    the resources or cannot place them within PLACEMENT_TIMEOUT_S."""
    total = ray.cluster_resources()
    needed = {name: amount * world_size for name, amount in bundle.items()}
    short = {name: amount for name, amount in needed.items() if total.get(name, 0) < amount}
    if short:
        raise ClientError(f"the Ray cluster has {_resources_text(total, needed)} but "
                          f"{world_size} ranks need {needed}: add nodes (ray start --address "
                          "...) or lower tensor_parallel_size x pipeline_parallel_size",
                          param="tensor_parallel_size")
    strategy = "STRICT_PACK" if _one_node_fits(needed) else "PACK"
    group = placement_group([dict(bundle) for _ in range(world_size)], strategy=strategy)
    try:
        ray.get(group.ready(), timeout=PLACEMENT_TIMEOUT_S)
    except GetTimeoutError:
        remove_placement_group(group)
        raise ClientError(f"the Ray cluster could not place {world_size} bundles of {bundle} "
                          f"({strategy}) within {PLACEMENT_TIMEOUT_S:.0f} s; available: "
                          f"{ray.available_resources()}", param="tensor_parallel_size") from None
    logger.info("Ray placement group: %d x %s, %s", world_size, bundle, strategy)
    return group


def _one_node_fits(needed: dict) -> bool:
    return any(node["Alive"] and all(node["Resources"].get(name, 0) >= amount
                                     for name, amount in needed.items())
               for node in ray.nodes())


def _resources_text(total: dict, needed: dict) -> str:
    return ", ".join(f"{total.get(name, 0):g} {name}" for name in needed)


def _gpu_sort_key(gpu: str):
    return (0, int(gpu)) if gpu.isdigit() else (1, gpu)


def _death_reason(error: RayActorError) -> str:
    """Ray's 'The actor is dead because ...' sentence up to its generic advice, else the
    message's first line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("The actor is dead because"):
            return line.split(" Some common causes")[0]
    return lines[0] if lines else type(error).__name__
