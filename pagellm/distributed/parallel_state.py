"""Process groups of one worker process and the collectives the model layers use (vLLM names).

A worker process that is one rank of a parallel engine calls ``init_distributed_environment``
then ``initialize_model_parallel`` before it builds its model; the layers ask
``get_tensor_model_parallel_rank/world_size`` which shard they hold, and reduce or gather
through ``tensor_model_parallel_all_reduce/all_gather``. A process that never initialises
(the single-process engine) sees tensor-parallel world size 1: every collective returns its
input untouched and no process group exists.

Groups: the world group, one tensor-parallel group per pipeline stage (ranks
``[stage * tp, (stage + 1) * tp)``), and one pipeline group per tensor-parallel rank (ranks
``[t, t + tp, t + 2 tp, ...]``): stage s's TP rank t sends its hidden states to stage s + 1's
TP rank t. ``get_pp_group().is_first_rank/is_last_rank`` tell a model which ends it holds and
``get_pp_layer_range`` which decoder layers.
Each group has a device group (NCCL on CUDA, gloo on CPU, from ``Platform.dist_backend()``)
and a gloo CPU group for control data. Every collective has the timeout given at init, so a
rank that hangs makes its peers raise instead of waiting forever.

This module imports only torch and ``platforms``/``errors``: layers and models may use it
(tests/unit/test_layering.py treats it as its own layer below ``layers``).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import torch
import torch.distributed as dist

DEFAULT_DIST_TIMEOUT_S = 300.0
"""Collective timeout: a rank stuck longer than this in a collective (a hung peer) raises.
A peer that dies is noticed at once (gloo: connection closed; the executor also watches the
worker processes), so this only bounds true hangs; it is long because the first collective
waits for the slowest rank to finish loading its weights."""


@dataclass
class GroupCoordinator:
    """One process group as seen by one rank: its ranks, this rank's place, the groups."""

    ranks: list[int]
    """Global ranks in the group, in group-rank order."""
    rank_in_group: int
    """This process's index in ``ranks``."""
    device_group: object | None = None
    """torch ProcessGroup for tensors on the device (None when the group has one rank)."""
    cpu_group: object | None = None
    """gloo ProcessGroup for CPU control tensors (the device group itself on CPU)."""
    custom_all_reduce: object | None = None
    """A SymmMemAllReduce taking the small all-reduces it measured faster than NCCL (CUDA
    tensor-parallel groups, see ``init_custom_all_reduce``), or None."""

    @property
    def world_size(self) -> int:
        return len(self.ranks)

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the group's ranks; returns the sum (``tensor`` itself, summed in
        place, unless the custom all-reduce took it). No-op for one rank."""
        if self.world_size == 1:
            return tensor
        custom = self.custom_all_reduce
        if custom is not None and custom.should_use(tensor):
            return custom.all_reduce(tensor)     # out of place; callers use the result
        dist.all_reduce(tensor, group=self.device_group)
        return tensor

    def all_reduce_add_rms_norm(self, x: torch.Tensor, residual: torch.Tensor,
                                norm) -> tuple[torch.Tensor, torch.Tensor]:
        """``norm(sum(x), residual)``: sum this rank's partial sums ``x`` ([T, hidden]) over
        the group, add ``residual`` ([T, hidden]) and RMS-normalise with ``norm`` (an
        ``RMSNorm``). Returns ``(normed, new residual)``. One fused kernel where the custom
        all-reduce measured it faster than the two steps, else the all-reduce, then the norm."""
        custom = self.custom_all_reduce
        if custom is not None and self.world_size > 1 and custom.should_fuse(x):
            return custom.fused_add_rms_norm(x, residual, norm.weight, norm.eps)
        return norm(self.all_reduce(x), residual)

    def all_gather(self, tensor: torch.Tensor, dim: int = -1,
                   out_dtype: torch.dtype | None = None) -> torch.Tensor:
        """Concatenate every rank's ``tensor`` along ``dim`` in rank order: [..., n, ...] ->
        [..., world_size * n, ...] (same on every rank), in ``out_dtype`` (default tensor's).
        Returns the input (converted) for one rank. The custom one-shot kernel takes small
        messages (``SymmMemAllReduce.can_gather``: the LM head's logits at decode), NCCL the
        rest."""
        if self.world_size == 1:
            return tensor if out_dtype is None else tensor.to(out_dtype)
        dim = dim % tensor.dim()
        tensor = tensor.contiguous()
        custom = self.custom_all_reduce
        if custom is not None and custom.can_gather(tensor):
            gathered = custom.all_gather(tensor, out_dtype)            # [world, *shape]
        else:
            gathered = torch.empty((self.world_size, *tensor.shape), dtype=tensor.dtype,
                                   device=tensor.device)             # [world, *shape]
            if tensor.is_cuda:
                dist.all_gather_into_tensor(gathered, tensor, group=self.device_group)
            else:   # gloo has no all_gather_into_tensor; it fills the views in place
                dist.all_gather(list(gathered.unbind(0)), tensor, group=self.device_group)
            if out_dtype is not None:
                gathered = gathered.to(out_dtype)
        return gathered.movedim(0, dim).flatten(dim, dim + 1)

    @property
    def is_first_rank(self) -> bool:
        return self.rank_in_group == 0

    @property
    def is_last_rank(self) -> bool:
        return self.rank_in_group == self.world_size - 1

    def isend_next(self, tensor: torch.Tensor):
        """Start sending ``tensor`` to the next rank of the group; returns the torch Work
        (wait on it before ``tensor`` is freed or changed)."""
        return dist.isend(tensor, self.ranks[self.rank_in_group + 1], group=self.device_group)

    def recv_prev(self, tensor: torch.Tensor) -> torch.Tensor:
        """Fill ``tensor`` (its shape and dtype must match what the previous rank sent) from
        the previous rank of the group; blocks until it arrived (or the group timeout)."""
        dist.recv(tensor, self.ranks[self.rank_in_group - 1], group=self.device_group)
        return tensor


_SINGLE = GroupCoordinator(ranks=[0], rank_in_group=0)
_WORLD: GroupCoordinator | None = None
_TP: GroupCoordinator | None = None
_PP: GroupCoordinator | None = None
_PP_LAYER_PARTITION: list[int] | None = None


def init_distributed_environment(world_size: int, rank: int, backend: str, store_host: str,
                                 store_port: int,
                                 timeout_s: float = DEFAULT_DIST_TIMEOUT_S) -> None:
    """Join the default process group through the TCPStore at ``store_host:store_port`` (the
    executor hosts it). Blocks until every rank joined; RuntimeError after ``timeout_s``."""
    global _WORLD
    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.TCPStore(store_host, store_port, world_size, is_master=False, timeout=timeout)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                            timeout=timeout)
    cpu_group = dist.group.WORLD if backend == "gloo" else dist.new_group(backend="gloo",
                                                                         timeout=timeout)
    _WORLD = GroupCoordinator(list(range(world_size)), rank, dist.group.WORLD, cpu_group)


def initialize_model_parallel(tensor_model_parallel_size: int = 1,
                              pipeline_model_parallel_size: int = 1,
                              pipeline_layer_partition: list[int] | None = None) -> None:
    """Create the tensor-parallel groups (one per pipeline stage) and the pipeline groups
    (one per TP rank). Every rank must call it with the same arguments; ValueError when the
    sizes' product is not the world size. ``pipeline_layer_partition``: decoder layers per
    stage (None = balanced), used by ``get_pp_layer_range``."""
    global _TP, _PP, _PP_LAYER_PARTITION
    world = get_world_group()
    if tensor_model_parallel_size * pipeline_model_parallel_size != world.world_size:
        raise ValueError(f"tensor_parallel_size={tensor_model_parallel_size} x "
                         f"pipeline_parallel_size={pipeline_model_parallel_size} != world size "
                         f"{world.world_size}")
    backend = dist.get_backend()
    for stage in range(pipeline_model_parallel_size):
        ranks = list(range(stage * tensor_model_parallel_size,
                           (stage + 1) * tensor_model_parallel_size))
        device_group = dist.new_group(ranks, backend=backend)    # every rank creates every group
        cpu_group = device_group if backend == "gloo" else dist.new_group(ranks, backend="gloo")
        if world.rank_in_group in ranks:
            _TP = GroupCoordinator(ranks, ranks.index(world.rank_in_group), device_group,
                                   cpu_group)
    for tp_rank in range(tensor_model_parallel_size):
        ranks = list(range(tp_rank, world.world_size, tensor_model_parallel_size))
        device_group = dist.new_group(ranks, backend=backend)
        if world.rank_in_group in ranks:
            _PP = GroupCoordinator(ranks, ranks.index(world.rank_in_group), device_group,
                                   device_group)
    _PP_LAYER_PARTITION = pipeline_layer_partition


def init_custom_all_reduce(device: torch.device, dtype: torch.dtype) -> None:
    """Give this rank's tensor-parallel group a measured one-shot all-reduce for small
    messages where it beats NCCL (CUDA only; collective over the group)."""
    from pagellm.distributed.custom_all_reduce import maybe_create

    tp = get_tp_group()
    if tp.world_size > 1:
        tp.custom_all_reduce = maybe_create(tp.device_group, tp.cpu_group, device, dtype,
                                            tp.world_size)


def model_parallel_is_initialized() -> bool:
    return _TP is not None


def get_world_group() -> GroupCoordinator:
    """The world group; a one-rank group when this process never joined one."""
    return _WORLD or _SINGLE


def get_tp_group() -> GroupCoordinator:
    """This rank's tensor-parallel group; a one-rank group when not initialised."""
    return _TP or _SINGLE


def get_pp_group() -> GroupCoordinator:
    """This rank's pipeline group (its rank is the stage); one rank when not initialised."""
    return _PP or _SINGLE


def get_pp_layer_range(num_layers: int) -> tuple[int, int]:
    """[start, end) of the decoder layers this rank's pipeline stage runs (all of them
    without pipeline parallelism)."""
    from pagellm.config.parallel import stage_layer_range

    pp = get_pp_group()
    return stage_layer_range(num_layers, pp.world_size, pp.rank_in_group, _PP_LAYER_PARTITION)


def get_tensor_model_parallel_world_size() -> int:
    return get_tp_group().world_size


def get_tensor_model_parallel_rank() -> int:
    return get_tp_group().rank_in_group


def tensor_model_parallel_all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over the tensor-parallel group, in place (no-op at TP=1)."""
    return get_tp_group().all_reduce(tensor)


def tensor_model_parallel_all_gather(tensor: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Concatenate the tensor-parallel ranks' tensors along ``dim`` (identity at TP=1)."""
    return get_tp_group().all_gather(tensor, dim)


def destroy_model_parallel() -> None:
    global _TP, _PP, _PP_LAYER_PARTITION
    _TP = _PP = _PP_LAYER_PARTITION = None


def destroy_distributed_environment() -> None:
    """Leave the process groups (idempotent)."""
    global _WORLD
    destroy_model_parallel()
    _WORLD = None
    if dist.is_initialized():
        dist.destroy_process_group()
