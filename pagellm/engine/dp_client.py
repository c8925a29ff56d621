"""Data parallelism: ``data_parallel_size`` engine cores behind one client.

``DPClient`` (asyncio; the server's ``AsyncLLM``) holds one ``MPClient`` per replica. Each
replica is a whole engine core in its own process: its own scheduler, KV cache and executor
(with tp x pp > 1, its own group of worker processes and its own torch.distributed rendezvous
store on a free port, so replicas never share a group). On CUDA replica ``i`` sees only the
devices ``[i * tp * pp, (i + 1) * tp * pp)`` of this process's visible ones
(``CUDA_VISIBLE_DEVICES`` set in its environment before torch starts there).

A ``DPLoadBalancer`` picks the replica of each request (queue length, KV usage, prefix-cache
affinity: see ``dp_balancer``); the request's n > 1 children go with it, and aborts follow the
request to its replica. Outputs of all replicas arrive on one queue, tagged with the replica.
One replica dying is the engine's death: every in-flight request (on any replica) fails with
``EngineDeadError`` naming the replica, as a single core's death does.

``SyncDPClient`` runs a ``DPClient`` on an event loop in a background thread, with the
blocking calls of ``InprocClient``: the offline ``LLM`` with ``data_parallel_size > 1``.

Several API servers (``--api-server-count N``, vLLM's): the serve parent starts the cores
with ``start_engine_cores(config, N)``, each a client of all N API servers; API server ``i``
attaches with ``DPClient.connect`` (client index ``i``). Every core pushes its stats to every
client, so each API server's balancer routes from the same per-replica loads.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
from dataclasses import dataclass

from pagellm.config.engine_args import EngineConfig
from pagellm.core.request import Request
from pagellm.core.stats import EngineStats
from pagellm.engine.core_client import MPClient, client_addresses, make_socket_dir
from pagellm.engine.core_proc import start_engine_core_process
from pagellm.engine.dp_balancer import DPLoadBalancer, prefix_block_hashes
from pagellm.engine.messages import EngineCoreOutputs, EngineReady
from pagellm.errors import ClientError, EngineDeadError

logger = logging.getLogger(__name__)


def replica_environments(config: EngineConfig, is_cuda: bool,
                         visible_devices: list[str] | None = None) -> list[dict[str, str]]:
    """Per replica, the environment variables its engine-core process gets: on CUDA with
    more than one replica, ``CUDA_VISIBLE_DEVICES`` = its slice of ``visible_devices`` (this
    process's ``CUDA_VISIBLE_DEVICES``, or every device); on CPU with more than one replica,
    ``OMP_NUM_THREADS`` = its share of the host's threads (``cpu_threads_per_replica``: the
    replicas share the cores, as the ranks of a CPU tensor-parallel group do); nothing otherwise
    (the ray backend included: Ray assigns the ranks' GPUs). ClientError naming
    data_parallel_size when there are fewer devices than replicas x ranks."""
    parallel = config.parallel
    num_engines, ranks = parallel.data_parallel_size, parallel.world_size
    if not is_cuda and num_engines > 1:
        threads = cpu_threads_per_replica(num_engines)
        return [{"OMP_NUM_THREADS": str(threads)} for _ in range(num_engines)]
    if not is_cuda or num_engines == 1 or parallel.executor_backend == "ray":
        # Ray places each replica's rank actors on the cluster's GPUs itself
        return [{} for _ in range(num_engines)]
    if visible_devices is None:
        visible_devices = _visible_cuda_devices()
    needed = num_engines * ranks
    if needed > len(visible_devices):
        raise ClientError(f"data_parallel_size={num_engines} x tensor_parallel_size x "
                          f"pipeline_parallel_size = {needed} devices, but only "
                          f"{len(visible_devices)} CUDA devices are visible",
                          param="data_parallel_size")
    return [{"CUDA_VISIBLE_DEVICES": ",".join(visible_devices[i * ranks:(i + 1) * ranks])}
            for i in range(num_engines)]


def cpu_threads_per_replica(num_engines: int) -> int:
    """Intra-op threads for each of ``num_engines`` CPU replicas: this process's
    ``OMP_NUM_THREADS`` when set, else the cores it may run on, divided among them (at least
    1). Without it every replica starts a thread per core and N replicas oversubscribe the
    host N times (2 replicas on 2 cores ran a burst 10-18x slower than one engine)."""
    listed = os.environ.get("OMP_NUM_THREADS", "").strip()
    total = int(listed) if listed.isdigit() and int(listed) > 0 else len(os.sched_getaffinity(0))
    return max(1, total // num_engines)


def _visible_cuda_devices() -> list[str]:
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None and listed.strip():
        return [device.strip() for device in listed.split(",") if device.strip()]
    import torch
    return [str(index) for index in range(torch.cuda.device_count())]


def replica_names(num_engines: int) -> list[str]:
    """The engine-core processes' names: "pagellm-engine-core", or one per replica."""
    if num_engines == 1:
        return ["pagellm-engine-core"]
    return [f"pagellm-engine-core-{index}" for index in range(num_engines)]


@dataclass
class EngineCoreGroup:
    """The engine cores the serve parent started for ``num_clients`` API servers."""

    processes: list[multiprocessing.Process]
    """By replica index."""
    socket_dir: str
    """Holds every (replica, client) address pair (``client_addresses``)."""
    num_clients: int

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]


def start_engine_cores(config: EngineConfig, num_clients: int) -> EngineCoreGroup:
    """Spawn ``data_parallel_size`` engine cores, each connecting to ``num_clients`` clients
    (client ``i`` of replica ``e`` binds ``client_addresses(socket_dir, e, i)``; see
    ``DPClient.connect``). Returns at once: readiness reaches the clients. ClientError as
    ``replica_environments``."""
    from pagellm.platforms import current_platform

    num_engines = config.parallel.data_parallel_size
    envs = replica_environments(config, current_platform(config.parallel.device).is_cuda)
    socket_dir = make_socket_dir()
    processes = []
    for engine_index, (env, name) in enumerate(zip(envs, replica_names(num_engines))):
        addresses = [client_addresses(socket_dir, engine_index, client_index)
                     for client_index in range(num_clients)]
        processes.append(start_engine_core_process(
            config, [a[0] for a in addresses], [a[1] for a in addresses], env, name))
    return EngineCoreGroup(processes, socket_dir, num_clients)


def merge_stats(stats: list[EngineStats]) -> EngineStats:
    """The replicas' stats as one engine's: counts and totals summed, KV usage averaged (every
    replica has the same number of blocks), iteration tokens concatenated."""
    return EngineStats(
        num_running=sum(s.num_running for s in stats),
        num_waiting=sum(s.num_waiting for s in stats),
        kv_cache_usage=sum(s.kv_cache_usage for s in stats) / len(stats),
        num_preemptions=sum(s.num_preemptions for s in stats),
        prefix_cache_queries=sum(s.prefix_cache_queries for s in stats),
        prefix_cache_hits=sum(s.prefix_cache_hits for s in stats),
        num_steps=sum(s.num_steps for s in stats),
        prompt_tokens=sum(s.prompt_tokens for s in stats),
        generation_tokens=sum(s.generation_tokens for s in stats),
        iteration_tokens=[n for s in stats for n in s.iteration_tokens],
        running_lora_adapters=sorted({a for s in stats for a in s.running_lora_adapters}),
        waiting_lora_adapters=sorted({a for s in stats for a in s.waiting_lora_adapters}))


class DPClient:
    """Routes requests over the replicas' ``MPClient``s (see the module docstring). Create
    with ``start``. ``data_parallel_size=1`` is one replica and no routing choice."""

    def __init__(self, clients: list[MPClient], balancer: DPLoadBalancer, block_size: int,
                 prefix_affinity: bool):
        self.clients = clients
        self.balancer = balancer
        self.block_size = block_size
        self.prefix_affinity = prefix_affinity
        """Hash prompts for affinity (only when the cores cache prefixes)."""
        self.dead_error: EngineDeadError | None = None
        self._engine_of: dict[str, int] = {}      # unfinished core request id -> replica
        self._outputs: asyncio.Queue[tuple[int, EngineCoreOutputs] | EngineDeadError] = \
            asyncio.Queue()
        self._readers = [asyncio.create_task(self._read_outputs(index),
                                             name=f"pagellm-dp-reader-{index}")
                         for index in range(len(clients))]

    @classmethod
    async def start(cls, config: EngineConfig, startup_timeout_s: float = 600.0) -> "DPClient":
        """Start every replica at once and wait until all are ready. When one fails, the
        others are stopped and its error is raised (ClientError for a config the core
        rejected, EngineDeadError otherwise)."""
        from pagellm.platforms import current_platform

        num_engines = config.parallel.data_parallel_size
        is_cuda = current_platform(config.parallel.device).is_cuda
        envs = replica_environments(config, is_cuda)
        return await cls._gather(config, [
            MPClient.start(config, startup_timeout_s, env, name)
            for env, name in zip(envs, replica_names(num_engines))])

    @classmethod
    async def connect(cls, config: EngineConfig, socket_dir: str, core_pids: list[int],
                      client_index: int, startup_timeout_s: float = 600.0) -> "DPClient":
        """Be client ``client_index`` of every core (``core_pids``, by replica; their
        addresses in ``socket_dir``) that the serve parent started with
        ``start_engine_cores``, and wait until all are ready; the errors of ``start``.
        ``shutdown`` then only closes this client: the parent stops the cores."""
        return await cls._gather(config, [
            MPClient.connect(socket_dir, engine_index, pid, client_index, startup_timeout_s)
            for engine_index, pid in enumerate(core_pids)])

    @classmethod
    async def _gather(cls, config: EngineConfig, starts: list) -> "DPClient":
        """Await the replicas' clients; when one fails, close the others and raise its error."""
        results = await asyncio.gather(*starts, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await asyncio.gather(*(r.shutdown() for r in results if isinstance(r, MPClient)))
            raise failures[0]
        num_engines = len(results)
        num_blocks = sum(client.ready.num_blocks for client in results)
        balancer = DPLoadBalancer(num_engines, client_index=results[0].client_index,
                                  max_affinity_entries=max(1, num_blocks))
        if num_engines > 1 and results[0].client_index == 0:
            logger.info("data parallel: %d engine cores (pids %s)", num_engines,
                        [client.process.pid for client in results])
        return cls(results, balancer, config.cache.block_size,
                   config.cache.enable_prefix_caching)

    # ---- what the replicas share --------------------------------------------------------------

    @property
    def num_engines(self) -> int:
        return len(self.clients)

    @property
    def ready(self) -> EngineReady:
        """Replica 0's ready message (every replica has the same vocabulary and blocks)."""
        return self.clients[0].ready

    def engine_index_of(self, request_id: str) -> int | None:
        """The replica serving unfinished core request ``request_id``, else None."""
        return self._engine_of.get(request_id)

    def has_unfinished_requests(self) -> bool:
        return bool(self._engine_of)

    # ---- requests -----------------------------------------------------------------------------

    async def add_requests(self, requests: list[Request]) -> int:
        """Send one prompt's core requests (its n > 1 children) to one replica, chosen by the
        balancer; returns that replica's index. EngineDeadError when the engine is dead."""
        self.raise_if_dead()
        first = requests[0]
        hashes = (prefix_block_hashes(first.prompt_token_ids, self.block_size, first.cache_salt)
                  if self.prefix_affinity and self.num_engines > 1 else [])
        engine_index = self.balancer.choose(hashes, len(requests))
        client = self.clients[engine_index]
        for request in requests:
            self._engine_of[request.request_id] = engine_index
            await client.add_request(request)
        return engine_index

    async def abort_requests(self, request_ids, finished: bool = False) -> None:
        """Abort each id on its replica; unknown or finished ids are ignored."""
        by_engine: dict[int, list[str]] = {}
        for request_id in request_ids:
            engine_index = self._engine_of.pop(request_id, None)
            if engine_index is not None:
                by_engine.setdefault(engine_index, []).append(request_id)
        for engine_index, ids in by_engine.items():
            await self.clients[engine_index].abort_requests(ids, finished)

    async def get_output(self) -> tuple[int, EngineCoreOutputs]:
        """(replica index, its next output batch) in arrival order; EngineDeadError once any
        replica died."""
        item = await self._outputs.get()
        if isinstance(item, EngineDeadError):
            self._outputs.put_nowait(item)      # for the next caller too
            raise item
        return item

    async def _read_outputs(self, engine_index: int) -> None:
        client = self.clients[engine_index]
        while True:
            try:
                batch = await client.get_output()
            except EngineDeadError as error:
                self._set_dead(engine_index, error)
                return
            self.balancer.update_stats(engine_index, batch.stats)
            for request_id in batch.finished_req_ids():
                self._engine_of.pop(request_id, None)
            self._outputs.put_nowait((engine_index, batch))

    def _set_dead(self, engine_index: int, error: EngineDeadError) -> None:
        if self.dead_error is not None:
            return
        if self.num_engines > 1:
            error = EngineDeadError(f"data-parallel engine {engine_index}: {error}")
        self.dead_error = error
        self._outputs.put_nowait(error)

    # ---- health and lifecycle -----------------------------------------------------------------

    def raise_if_dead(self) -> None:
        """EngineDeadError when any replica died, was shut down or its process exited."""
        if self.dead_error is not None:
            raise self.dead_error
        for engine_index, client in enumerate(self.clients):
            try:
                client.raise_if_dead()
            except EngineDeadError as error:
                if self.num_engines == 1:
                    raise
                raise EngineDeadError(f"data-parallel engine {engine_index}: {error}") from None

    def is_alive(self) -> bool:
        """No replica died and every core process runs (cheap: no round trip)."""
        return self.dead_error is None and all(
            client.dead_error is None and client.process.is_alive() for client in self.clients)

    async def stats(self) -> list[EngineStats]:
        """Fresh stats of every replica, in replica order (round trips)."""
        return list(await asyncio.gather(*(client.stats() for client in self.clients)))

    async def ping(self) -> None:
        await asyncio.gather(*(client.ping() for client in self.clients))

    async def shutdown(self, timeout_s: float = 10.0) -> None:
        """Stop every replica (in parallel); later calls raise EngineDeadError. Idempotent."""
        await asyncio.gather(*(client.shutdown(timeout_s) for client in self.clients))
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        if self.dead_error is None:
            self.dead_error = EngineDeadError("the engine was shut down")
            self._outputs.put_nowait(self.dead_error)


class SyncDPClient:
    """A ``DPClient`` behind ``InprocClient``'s blocking calls, for the offline ``LLM``. Its
    event loop runs in a daemon thread; every call waits for its coroutine there."""

    def __init__(self, config: EngineConfig, startup_timeout_s: float = 600.0):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="pagellm-dp-client")
        self._thread.start()
        try:
            self.client: DPClient = self._call(DPClient.start(config, startup_timeout_s))
        except BaseException:
            self._stop_loop()
            raise
        self._closed = False

    def _call(self, coroutine):
        """Run ``coroutine`` on the loop thread and wait for it. When the wait is interrupted
        (Ctrl-C) the coroutine is cancelled, so no output batch is taken and then dropped."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    @property
    def ready(self) -> EngineReady:
        return self.client.ready

    def add_requests(self, requests: list[Request]) -> int:
        return self._call(self.client.add_requests(requests))

    def abort_requests(self, request_ids, finished: bool = False) -> None:
        if request_ids:
            self._call(self.client.abort_requests(list(request_ids), finished))

    def get_output(self) -> EngineCoreOutputs:
        """The outputs of the next batch any replica pushes (waits for one)."""
        _, batch = self._call(self.client.get_output())
        return batch

    def has_unfinished_requests(self) -> bool:
        return self.client.has_unfinished_requests()

    def stats(self) -> EngineStats:
        """Every replica's fresh stats merged (``merge_stats``)."""
        return merge_stats(self.stats_per_engine())

    def stats_per_engine(self) -> list[EngineStats]:
        """Every replica's fresh stats, in replica order."""
        return self._call(self.client.stats())

    def shutdown(self) -> None:
        """Stop every replica and the loop thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._call(self.client.shutdown())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
