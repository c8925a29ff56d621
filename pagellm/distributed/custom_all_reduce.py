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

Beyond torch's kernel, pagellm's own Triton one-shot kernel (``pagellm.ops.triton.
one_shot_all_reduce``: one barrier per program pair, double-buffered slots, no staging copy)
is timed too, plain and fused with the residual add + RMSNorm that follows every row-parallel
linear of a decoder layer (``fused_add_rms_norm``: the layer hands its un-reduced partial sums
to the next norm). Each message size takes the fastest measured plain path; the fused path is
used up to the largest size where it beat the best plain all-reduce plus the separate norm.
``PAGELLM_TRITON_ALL_REDUCE=0`` leaves pagellm's kernel out (torch's one-shot or NCCL only), for
ablations.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

MEASURE_SIZES = [2**k for k in range(12, 23)]
"""Message sizes timed at start-up, in bytes: 4 KiB .. 4 MiB."""
BUFFER_BYTES = MEASURE_SIZES[-1]
"""Size of each rank's symmetric buffer: the largest message the one-shot path can take."""
CALLS_PER_GRAPH = 16
REPLAYS = 5
TRIALS = 3
"""Timed runs of REPLAYS replays each, the fastest kept: a rank that starts late (the host
barrier's skew) or a busy moment makes one run slow, and one H200 run chose NCCL + norm over
the fused kernel at 8 KiB on a 9.0 vs 6.7 µs outlier."""
PLAIN_ROW = 1024
"""Plain all-reduces through the Triton kernel run as rows of this many elements (a program
sums whole rows); messages of other sizes take torch's kernel."""
FUSED_HIDDEN = 4096
"""Row width of the fused path's start-up timing (Llama-8B's hidden size; the time depends on
the bytes, which every size of MEASURE_SIZES fixes)."""


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
        self.world_size = dist.get_world_size(device_group)
        self.group_name = device_group.group_name
        self.buffer = symm_mem.empty(BUFFER_BYTES // dtype.itemsize, dtype=dtype,
                                     device=device)                        # [numel]
        self.handle = symm_mem.rendezvous(self.buffer, self.group_name)
        self.max_bytes = 0
        """Messages up to this many bytes take the one-shot path (0: none, until measured)."""
        self.num_calls = 0
        """One-shot all-reduces issued from Python (a CUDA graph replay repeats its own)."""
        self.timings: list[tuple[int, float, float]] = []
        """(bytes, NCCL µs, one-shot µs) per measured size, slowest rank's: the one-shot time
        is the faster of torch's and pagellm's kernels, see ``plain_paths``."""
        self.plain_paths: list[tuple[int, str]] = []
        """(bytes, "torch" | "triton") per measured size: which one-shot kernel takes plain
        all-reduces up to that size (from ``measure``)."""
        self.fused_max_bytes = 0
        """Messages up to this many bytes take the fused all-reduce + add + RMSNorm kernel
        (0: never, until measured)."""
        self.fused_timings: list[tuple[int, float, float]] = []
        """(bytes, fused µs, best plain all-reduce + separate norm µs) per measured size."""
        self.num_fused_calls = 0
        """Fused calls issued from Python (a CUDA graph replay repeats its own)."""
        self.triton_ok = False
        """Whether pagellm's Triton kernel passed its start-up check on every rank (set by
        ``measure``): the embedding and all-gather paths need it."""
        self.num_embedding_calls = 0
        """Vocabulary-parallel embeddings fused with their all-reduce, issued from Python."""
        self.num_gather_calls = 0
        """One-shot all-gathers issued from Python."""
        self._init_triton_buffers(symm_mem)

    def _init_triton_buffers(self, symm_mem) -> None:
        """The Triton kernel's own symmetric buffer: data slots [2 (parity), world (source
        rank), BUFFER_BYTES], then int32 [MAX_PROGRAMS, world] barrier flags; zeroed flags and
        epoch counters on every rank before any call (collective)."""
        from pagellm.ops.triton.one_shot_all_reduce import MAX_PROGRAMS

        world = dist.get_world_size(self.device_group)
        sms = torch.cuda.get_device_properties(self.device).multi_processor_count
        if MAX_PROGRAMS > sms:
            raise RuntimeError(f"the one-shot kernel needs {MAX_PROGRAMS} SMs, the GPU has {sms}")
        data_bytes, flag_bytes = 2 * world * BUFFER_BYTES, MAX_PROGRAMS * world * 4
        self.triton_buffer = symm_mem.empty(data_bytes + flag_bytes, dtype=torch.uint8,
                                            device=self.device)            # [bytes]
        self.triton_buffer[data_bytes:].zero_()
        handle = symm_mem.rendezvous(self.triton_buffer, self.group_name)
        bases = list(handle.buffer_ptrs)
        self.data_ptrs = torch.tensor(bases, dtype=torch.int64, device=self.device)  # [world]
        self.flag_ptrs = torch.tensor([b + data_bytes for b in bases], dtype=torch.int64,
                                      device=self.device)                            # [world]
        self.counters = torch.zeros(MAX_PROGRAMS, dtype=torch.int32, device=self.device)
        self.rank = dist.get_rank(self.device_group)
        self.slot_numel = BUFFER_BYTES // self.dtype.itemsize
        torch.cuda.synchronize(self.device)
        dist.barrier(group=self.cpu_group)

    def should_use(self, tensor: torch.Tensor) -> bool:
        nbytes = tensor.numel() * tensor.element_size()
        return (nbytes <= self.max_bytes and tensor.dtype == self.dtype and tensor.is_cuda
                and nbytes % 16 == 0)

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over the group of ``tensor`` (any shape), as a new tensor, by the one-shot
        kernel measured fastest at its size."""
        nbytes = tensor.numel() * tensor.element_size()
        path = next((p for b, p in self.plain_paths if nbytes <= b), "torch")
        if path == "triton" and tensor.numel() % PLAIN_ROW == 0:
            return self.triton_all_reduce(tensor)
        return self.torch_all_reduce(tensor)

    def torch_all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over the group of ``tensor`` by torch's one-shot kernel (staged copy)."""
        self.num_calls += 1
        numel = tensor.numel()
        staged = self.buffer[:numel]
        staged.copy_(tensor.reshape(-1))
        out = torch.ops.symm_mem.one_shot_all_reduce(staged, "sum", self.group_name)
        return out.view(tensor.shape)

    def triton_all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over the group of ``tensor`` (any shape, a multiple of PLAIN_ROW elements,
        at most BUFFER_BYTES) by pagellm's Triton one-shot kernel, as a new tensor."""
        from pagellm.ops.triton.one_shot_all_reduce import one_shot_all_reduce

        self.num_calls += 1
        rows = tensor.reshape(-1, PLAIN_ROW)                  # [numel / PLAIN_ROW, PLAIN_ROW]
        out = one_shot_all_reduce(rows, self.data_ptrs, self.flag_ptrs, self.counters,
                                  self.slot_numel, self.rank)
        return out.view(tensor.shape)

    def should_fuse(self, x: torch.Tensor) -> bool:
        """Whether ``fused_add_rms_norm`` takes ``x`` ([T, hidden] partial sums)."""
        nbytes = x.numel() * x.element_size()
        return (nbytes <= self.fused_max_bytes and x.dtype == self.dtype and x.is_cuda
                and x.dim() == 2)

    def fused_add_rms_norm(self, x: torch.Tensor, residual: torch.Tensor,
                           weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rms_norm(sum + residual) * weight, sum + residual)`` with ``sum`` the all-reduce
        of ``x`` over the group, in one kernel. x, residual: [T, hidden] of ``dtype``;
        weight: [hidden]. Same results as NCCL + ``fused_add_rms_norm_triton`` (module doc)."""
        from pagellm.ops.triton.one_shot_all_reduce import one_shot_all_reduce

        self.num_fused_calls += 1
        if x.stride(-1) != 1:
            x = x.contiguous()
        return one_shot_all_reduce(x, self.data_ptrs, self.flag_ptrs, self.counters,
                                   self.slot_numel, self.rank, residual, weight, eps)

    def can_embed(self, input_ids: torch.Tensor, weight: torch.Tensor) -> bool:
        """Whether ``embedding_all_reduce`` takes this lookup: the Triton kernel passed its
        check, the [T, dim] result is a message the one-shot path takes (``max_bytes``), and
        the table has the buffers' dtype."""
        nbytes = input_ids.numel() * weight.shape[1] * weight.element_size()
        return (self.triton_ok and nbytes <= self.max_bytes and weight.dtype == self.dtype
                and weight.is_cuda and weight.stride(-1) == 1 and input_ids.dim() == 1)

    def embedding_all_reduce(self, input_ids: torch.Tensor, weight: torch.Tensor,
                             vocab_start: int) -> torch.Tensor:
        """The vocabulary-parallel embedding of ``input_ids`` [T] from this rank's rows
        ``weight`` [rows, dim] (starting at vocabulary id ``vocab_start``) in one kernel:
        [T, dim], the same on every rank (``one_shot_embedding_all_reduce``)."""
        from pagellm.ops.triton.one_shot_all_reduce import one_shot_embedding_all_reduce

        self.num_embedding_calls += 1
        return one_shot_embedding_all_reduce(input_ids, weight, vocab_start, self.data_ptrs,
                                             self.flag_ptrs, self.counters, self.slot_numel,
                                             self.rank)

    def can_gather(self, tensor: torch.Tensor) -> bool:
        """Whether ``all_gather`` takes ``tensor``: the Triton kernel passed its check, the
        message is one the one-shot path takes (``max_bytes``; NCCL's all-gather costs about
        its all-reduce at these sizes), the buffers' dtype, and a row width exists."""
        from pagellm.ops.triton.one_shot_all_reduce import gather_row

        nbytes = tensor.numel() * tensor.element_size()
        return (self.triton_ok and nbytes <= self.max_bytes and tensor.dtype == self.dtype
                and tensor.is_cuda and gather_row(tensor.numel()) > 0)

    def all_gather(self, tensor: torch.Tensor, out_dtype: torch.dtype | None = None
                   ) -> torch.Tensor:
        """Every rank's ``tensor`` stacked in rank order: [world, *tensor.shape] in
        ``out_dtype`` (default tensor's), by the one-shot kernel (``one_shot_all_gather``)."""
        from pagellm.ops.triton.one_shot_all_reduce import one_shot_all_gather

        self.num_gather_calls += 1
        return one_shot_all_gather(tensor.contiguous(), self.data_ptrs, self.flag_ptrs,
                                   self.counters, self.slot_numel, self.rank, out_dtype)

    def measure(self) -> int:
        """At each of MEASURE_SIZES inside CUDA graphs, time NCCL, torch's and pagellm's
        one-shot kernels, and the fused all-reduce + add + RMSNorm against the best plain
        all-reduce plus the separate norm kernel; check every result against NCCL's (the fused
        one against NCCL + the norm). Sets ``max_bytes``, ``plain_paths`` and
        ``fused_max_bytes`` from the slowest rank's timings (every rank decides the same).
        A Triton kernel that fails its check is not used. Collective. Returns ``max_bytes``."""
        rows, triton_ok = [], os.environ.get("PAGELLM_TRITON_ALL_REDUCE", "1") != "0"
        for nbytes in MEASURE_SIZES:
            row, ok = self._measure_size(nbytes, triton_ok)
            rows.append(row)
            triton_ok = triton_ok and ok
        agreed = torch.tensor([float(triton_ok)])
        dist.all_reduce(agreed, op=dist.ReduceOp.MIN, group=self.cpu_group)
        timings = torch.tensor([r[1:] for r in rows], dtype=torch.float64)
        dist.all_reduce(timings, op=dist.ReduceOp.MAX, group=self.cpu_group)
        self.triton_ok = bool(agreed.item())
        self._choose([(r[0], *map(float, t)) for r, t in zip(rows, timings)], self.triton_ok)
        self.num_calls = self.num_fused_calls = 0
        return self.max_bytes

    def _measure_size(self, nbytes: int, triton_ok: bool) -> tuple[list, bool]:
        """[bytes, NCCL, torch one-shot, Triton one-shot, separate norm, fused] (µs; the
        Triton ones inf when not ``triton_ok`` or wrong here) and whether the Triton kernels
        were right at this size."""
        from pagellm.ops.triton.norm import fused_add_rms_norm_triton

        numel = nbytes // self.dtype.itemsize
        hidden = min(FUSED_HIDDEN, numel)
        shared = torch.Generator(self.device).manual_seed(numel)     # same on every rank
        x = torch.randn(numel, dtype=self.dtype, device=self.device,
                        generator=torch.Generator(self.device).manual_seed(self.rank + numel))
        residual = torch.randn(numel // hidden, hidden, dtype=self.dtype, device=self.device,
                               generator=shared)
        weight = torch.randn(hidden, dtype=self.dtype, device=self.device, generator=shared)
        exact, magnitude = x.float(), x.float().abs()         # the float32 sum and sum of |x|
        dist.all_reduce(exact, group=self.device_group)
        dist.all_reduce(magnitude, group=self.device_group)
        tolerance = sum_rounding_bound(magnitude, self.world_size, self.dtype)
        if not reduced_close(self.torch_all_reduce(x), exact, tolerance):
            raise RuntimeError(f"one-shot all-reduce differs from the sum at {nbytes} bytes")
        rows_x = x.view(-1, hidden)
        if triton_ok:
            got = self.fused_add_rms_norm(rows_x, residual, weight, 1e-5)
            # the new residual is the sum plus the old one; the normed rows are its RMSNorm
            want_normed = fused_add_rms_norm_triton(got[1], torch.zeros_like(residual), weight,
                                                    1e-5)[0]
            residual_tolerance = sum_rounding_bound(
                magnitude.view(-1, hidden) + residual.float().abs(), self.world_size + 1,
                self.dtype)
            triton_ok = (reduced_close(self.triton_all_reduce(x), exact, tolerance)
                         and reduced_close(got[1], exact.view(-1, hidden) + residual.float(),
                                           residual_tolerance)
                         and _close(got[0], want_normed))
            if not triton_ok:
                logger.warning("the Triton one-shot all-reduce differs from the sum at %d bytes; "
                               "not using it", nbytes)
        inf = float("inf")
        return [nbytes, self._time(lambda t: dist.all_reduce(t, group=self.device_group), x),
                self._time(self.torch_all_reduce, x),
                self._time(self.triton_all_reduce, x) if triton_ok else inf,
                self._time(lambda t: fused_add_rms_norm_triton(t, residual, weight, 1e-5), rows_x),
                self._time(lambda t: self.fused_add_rms_norm(t, residual, weight, 1e-5), rows_x)
                if triton_ok else inf], triton_ok

    def _choose(self, timings: list[tuple[int, float, float, float, float, float]],
                triton_ok: bool) -> None:
        """Set the paths from (bytes, NCCL, torch, Triton, norm, fused) µs rows: each size's
        faster one-shot kernel; one-shot up to the largest size where it beat NCCL at every size
        below, fused likewise against the best plain all-reduce + norm."""
        self.timings, self.plain_paths, self.fused_timings = [], [], []
        self.max_bytes = self.fused_max_bytes = 0
        plain_wins = fused_wins = True
        for nbytes, nccl_us, torch_us, triton_us, norm_us, fused_us in timings:
            use_triton = triton_ok and triton_us < torch_us
            one_shot_us = triton_us if use_triton else torch_us
            self.timings.append((nbytes, nccl_us, one_shot_us))
            self.plain_paths.append((nbytes, "triton" if use_triton else "torch"))
            plain_wins = plain_wins and one_shot_us < nccl_us
            if plain_wins:
                self.max_bytes = nbytes
            unfused_us = min(nccl_us, one_shot_us) + norm_us
            self.fused_timings.append((nbytes, fused_us, unfused_us))
            fused_wins = fused_wins and triton_ok and fused_us < unfused_us
            if fused_wins:
                self.fused_max_bytes = nbytes

    def _time(self, fn, x: torch.Tensor) -> float:
        """µs per call of ``fn(x)``, CALLS_PER_GRAPH calls captured in one CUDA graph, the
        fastest of TRIALS timed runs."""
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
        best = float("inf")
        for _ in range(TRIALS):
            torch.cuda.synchronize(self.device)
            dist.barrier(group=self.cpu_group)   # the ranks start within the barrier's skew
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(REPLAYS):
                graph.replay()
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end) * 1000 / (REPLAYS * CALLS_PER_GRAPH))
        return best


def _close(got: torch.Tensor, expected: torch.Tensor) -> bool:
    return torch.allclose(got.float(), expected.float(), rtol=1e-2, atol=1e-2)


def sum_rounding_bound(magnitude: torch.Tensor, num_terms: int, dtype: torch.dtype) -> torch.Tensor:
    """Per element, how far a sum of ``num_terms`` values in ``dtype`` may lie from their exact
    sum when added in any order with a rounding after each addition and at the end:
    ``num_terms * eps(dtype) * magnitude``, ``magnitude`` being the sum of the terms' absolute
    values (float32, same shape), which bounds every partial sum (the standard recursive
    summation bound, Higham, "Accuracy and Stability of Numerical Algorithms", 4.2, with u =
    eps / 2 and a factor 2 of slack). NCCL's ring and the one-shot kernels add the ranks in
    different orders, so at 4 or 8 ranks their bf16 results differ by about this much: a
    fixed tolerance (rtol = atol = 1e-2) failed the start-up check at TP=4 on H200s and sent
    every all-reduce to NCCL (benchmarks/RESULTS.md, session 8)."""
    return num_terms * torch.finfo(dtype).eps * magnitude


def reduced_close(got: torch.Tensor, exact: torch.Tensor, tolerance: torch.Tensor) -> bool:
    """Every element of ``got`` (any float dtype) within ``tolerance`` of the float32
    ``exact``, plus half an ulp of ``got``'s dtype for its final rounding."""
    error = (got.float() - exact).abs()
    return bool((error <= tolerance + torch.finfo(got.dtype).eps * exact.abs()).all())


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
    paths = ", ".join(f"{b // 1024} KiB {p}" for b, p in custom.plain_paths)
    fused = ", ".join(f"{b // 1024} KiB {f:.1f}/{u:.1f}" for b, f, u in custom.fused_timings)
    logger.info("custom all-reduce (one-shot, symmetric memory) for messages <= %d KiB; "
                "µs per all-reduce in a CUDA graph, NCCL/one-shot: %s; kernel: %s. Fused "
                "all-reduce + add + RMSNorm for messages <= %d KiB; µs fused/separate: %s",
                custom.max_bytes // 1024, table, paths, custom.fused_max_bytes // 1024, fused)
    return custom if custom.max_bytes or custom.fused_max_bytes else None
