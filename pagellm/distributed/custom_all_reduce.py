"""A one-shot all-reduce over peer GPU memory for the small tensor-parallel all-reduces of
decode steps, used instead of NCCL where it measures faster.

Why: a decode step of Llama-3.1-8B at TP=2 runs 64 all-reduces of ``batch x hidden x 2``
bytes (8 KB at batch 1). NCCL's ring/tree protocols cost ~18.6 µs each inside a CUDA graph on
two NVLink-connected H200s (BENCHMARKS.md), about 1.2 ms a step against ~2 ms of weight
reads. A one-shot all-reduce (vLLM's custom all-reduce, arXiv 2211.05102's "one-shot"
scheme) copies the input into a buffer every peer can read, passes a barrier, and has each
rank read all peers' buffers and add them: one kernel and one NVLink read per peer.

The peer-memory buffer and the kernel come from PyTorch's symmetric memory
(``torch.distributed._symmetric_memory``: ``empty`` + ``rendezvous``, and
``torch.ops.symm_mem.one_shot_all_reduce``), a maintained library rather than our own IPC and
kernel. It reads peers' memory directly; it does not use NVLink multicast (NVLS), which must
stay off here (``TORCH_SYMM_MEM_DISABLE_MULTICAST=1``).

Which is faster depends on the message size, so ``SymmMemAllReduce.measure`` times NCCL and
the one-shot kernel inside CUDA graphs (the decode path) at each size of
``MEASURE_SIZES`` when the worker starts; the ranks agree on the slowest timing of each (a
collective must take the same path on every rank) and the one-shot path is used for messages
up to the largest size where it won at every size below. ``max_bytes`` = 0 disables it.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

MEASURE_SIZES = [2**k for k in range(12, 23)]
"""Message sizes timed at start-up, in bytes: 4 KiB .. 4 MiB."""
BUFFER_BYTES = MEASURE_SIZES[-1]
"""Size of each rank's symmetric buffer: the largest message the one-shot path can take."""
CALLS_PER_GRAPH = 16
REPLAYS = 5


class SymmMemAllReduce:
    """One-shot all-reduce of ``dtype`` tensors over a tensor-parallel group's GPUs.

    Construct on every rank of the group (collective: the buffers rendezvous). Raises
    RuntimeError when symmetric memory is unavailable (no CUDA, an old driver, ranks on
    different hosts); the caller then keeps NCCL."""

    def __init__(self, device_group, cpu_group, device: torch.device, dtype: torch.dtype):
        import torch.distributed._symmetric_memory as symm_mem

        self.device = device
        self.dtype = dtype
        self.cpu_group = cpu_group
        self.device_group = device_group
        self.group_name = device_group.group_name
        self.buffer = symm_mem.empty(BUFFER_BYTES // dtype.itemsize, dtype=dtype,
                                     device=device)                        # [numel]
        self.handle = symm_mem.rendezvous(self.buffer, self.group_name)
        self.max_bytes = 0
        """Messages up to this many bytes take the one-shot path (0: none, until measured)."""
        self.num_calls = 0
        """One-shot all-reduces issued from Python (a CUDA graph replay repeats its own)."""
        self.timings: list[tuple[int, float, float]] = []
        """(bytes, NCCL µs, one-shot µs) per measured size, slowest rank's."""

    def should_use(self, tensor: torch.Tensor) -> bool:
        nbytes = tensor.numel() * tensor.element_size()
        return (nbytes <= self.max_bytes and tensor.dtype == self.dtype and tensor.is_cuda
                and nbytes % 16 == 0)

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over the group of ``tensor`` (any shape), as a new tensor."""
        self.num_calls += 1
        numel = tensor.numel()
        staged = self.buffer[:numel]
        staged.copy_(tensor.reshape(-1))
        out = torch.ops.symm_mem.one_shot_all_reduce(staged, "sum", self.group_name)
        return out.view(tensor.shape)

    def measure(self) -> int:
        """Time NCCL and the one-shot kernel at each of MEASURE_SIZES inside CUDA graphs,
        check the one-shot sums against NCCL's, and set ``max_bytes``. Collective."""
        rows = []
        for nbytes in MEASURE_SIZES:
            numel = nbytes // self.dtype.itemsize
            rank = dist.get_rank(self.device_group)
            x = torch.randn(numel, dtype=self.dtype, device=self.device,
                            generator=torch.Generator(self.device).manual_seed(rank + numel))
            expected = x.clone()
            dist.all_reduce(expected, group=self.device_group)
            got = self.all_reduce(x)
            if not torch.allclose(got.float(), expected.float(), rtol=1e-2, atol=1e-2):
                raise RuntimeError(f"one-shot all-reduce differs from NCCL at {nbytes} bytes")
            rows.append([nbytes, self._time(lambda t: dist.all_reduce(t, group=self.device_group), x),
                         self._time(self.all_reduce, x)])
        timings = torch.tensor([[r[1], r[2]] for r in rows], dtype=torch.float64)
        dist.all_reduce(timings, op=dist.ReduceOp.MAX, group=self.cpu_group)
        self.timings = [(r[0], float(t[0]), float(t[1])) for r, t in zip(rows, timings)]
        self.max_bytes = 0
        for nbytes, nccl_us, one_shot_us in self.timings:
            if one_shot_us >= nccl_us:
                break
            self.max_bytes = nbytes
        self.num_calls = 0
        return self.max_bytes

    def _time(self, fn, x: torch.Tensor) -> float:
        """µs per call of ``fn(x)``, CALLS_PER_GRAPH calls captured in one CUDA graph."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                fn(x)                                   # warm-up outside the graph
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                for _ in range(CALLS_PER_GRAPH):
                    fn(x)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph.replay()
        torch.cuda.synchronize(self.device)
        dist.barrier(group=self.cpu_group)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(REPLAYS):
            graph.replay()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1000 / (REPLAYS * CALLS_PER_GRAPH)


def maybe_create(device_group, cpu_group, device: torch.device, dtype: torch.dtype,
                 world_size: int) -> SymmMemAllReduce | None:
    """A measured SymmMemAllReduce for a CUDA tensor-parallel group, or None where it cannot
    run or never wins (logged). Collective over the group."""
    if world_size < 2 or device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16,
                                                                  torch.float32):
        return None
    ok = torch.ones(1)
    try:
        custom = SymmMemAllReduce(device_group, cpu_group, device, dtype)
    except Exception as error:      # no symmetric memory here: every rank must agree
        logger.warning("custom all-reduce unavailable (%s: %s); using NCCL",
                       type(error).__name__, error)
        custom, ok = None, torch.zeros(1)
    dist.all_reduce(ok, op=dist.ReduceOp.MIN, group=cpu_group)
    if not ok.item():
        return None
    try:
        custom.measure()
    except Exception as error:
        logger.warning("custom all-reduce failed its check (%s: %s); using NCCL",
                       type(error).__name__, error)
        custom.max_bytes = 0
    table = ", ".join(f"{b // 1024} KiB {n:.1f}/{o:.1f}" for b, n, o in custom.timings)
    logger.info("custom all-reduce (one-shot, symmetric memory) for messages <= %d KiB; "
                "µs per all-reduce in a CUDA graph, NCCL/one-shot: %s",
                custom.max_bytes // 1024, table)
    return custom if custom.max_bytes else None
