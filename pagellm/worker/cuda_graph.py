"""CUDA graphs for decode, mixed and speculative-verify batches (GPU only; off with
``enforce_eager`` or ``compilation_config={"cudagraph_mode": "NONE"}``; the modes are mapped in
``pagellm/config/compilation.py``).

A step of a small batch is mostly kernel-launch overhead (an eager Llama-8B forward is ~10 ms
of launches), so whole-model forwards are captured once per padded size and replayed. Inputs
go through static buffers; padding writes its K/V into a scratch block that no request owns,
so it cannot disturb real requests. Two families:

* Decode graphs (every mode but NONE), one per padded request count, for all-decode batches
  (one token per request): padding rows are requests of one token attending to one scratch
  slot, and attention may take the split-KV path (its segment length is computed on the device).
* Mixed graphs (FULL, FULL_AND_PIECEWISE, PIECEWISE), one per padded token count T, for any
  other batch of at most T tokens (prefill chunks with decodes, speculative verify steps of
  1 + k rows per request, decode batches past the largest decode size). A mixed graph has
  ``min(T, max_num_seqs) + 1`` request slots: the real requests, then one padding request that
  owns the T - N padding rows (possibly none; its context is its own rows, K/V written to the
  scratch block at offsets ``row % block_size``, so every key it reads was written by finite
  values), then zero-length slots whose attention tiles exit at once. Padding rows therefore
  hold finite values, so row-coupled ops (a dynamic per-tensor activation scale) stay exact.

Why a full graph can serve any mix: the unified Triton attention kernel
(``pagellm/ops/triton/paged_attention.py``) reads query_start_loc, seq_lens, block tables and
slot mappings from device tensors, finds each tile's request by a search over query_start_loc
on the device, and sizes its grid as ``num_tokens // BLOCK_Q + num_reqs`` from the padded
shapes. Its host-side bounds stay valid when frozen at capture: ``max_query_len`` only picks
the tile shape (BLOCK_Q = 1 for decode graphs, the prefill tile for mixed graphs, captured
with max_query_len = T > 1, which serves any query lengths up to T) and whether split-KV may
run (never with max_query_len > 1); ``max_seq_len`` only picks the split count of decode
graphs (captured at max_model_len; each request's segments follow its own device seq_len).
The host lists (``query_start_loc_cpu``, ``seq_lens_cpu``) of a mixed graph are placeholders:
the torch backend reads them, so mixed graphs are captured only with the Triton backend.
No piecewise graphs: see ``pagellm/config/compilation.py`` for why.

Contract: ``capture`` must run after the KV cache is bound (graphs hold its addresses);
``run`` returns a view of a static output buffer that stays valid until the next ``run``.
Counters (replays since capture; capture's own runs are not counted): ``num_replays`` per
decode size, ``num_mixed_replays`` per mixed token count, ``num_uniform_replays`` the mixed
replays whose batch had ``uniform_query_len`` (1 + num_speculative_tokens) rows in every
request: vLLM's uniform decode batches, the full verify steps of speculative decoding (also
counted in ``num_mixed_replays``).

``eager_replay`` (tests on CPU): nothing is captured; ``run`` fills the same static buffers and
runs the model eagerly on them with the metadata a graph would have baked in (with the Triton
backend under ``TRITON_INTERPRET=1`` this is the graph's computation, launch by launch).

LoRA (``enable_lora``): each decode size is captured twice, once without adapters (the base
path pays nothing when no adapter is in the batch) and once with the LoRA Triton kernels reading
static mapping buffers (the slot segments ``lora_sorted_tokens``, ``lora_seg_start``,
``lora_seg_len``; ``token_slots`` stays -1: the SGMV kernels do not read it). A step whose
tokens use adapters copies its segments into those buffers and replays the LoRA graph (the
kernels' grids depend only on the padded size); the adapters' weights live in the layers'
fixed slot tensors, so loading an adapter into a slot needs no re-capture (vLLM
captures its punica wrapper's static metadata the same way). ``num_lora_replays`` counts them.
Mixed graphs are captured without adapters and serve only steps that use none.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from pagellm.config.compilation import MAX_CAPTURE_SIZE, CudaGraphOptions
from pagellm.layers.attention_metadata import AttentionMetadata
from pagellm.lora.layers import LoRAContext
from pagellm.lora.ops import LoRABatchMapping
from pagellm.platforms import use_triton_kernels

logger = logging.getLogger(__name__)

GiB = 1024**3


def default_capture_sizes(max_num_seqs: int) -> list[int]:
    """Decode graphs: 1, 2, 4, 8, then steps of 8 up to max_num_seqs (at most 512)."""
    limit = min(max_num_seqs, 512)
    sizes = [s for s in (1, 2, 4, 8) if s <= limit]
    sizes += list(range(16, limit + 1, 8))
    if sizes[-1] < limit:
        sizes.append(limit)
    return sizes


def default_mixed_capture_sizes(max_size: int) -> list[int]:
    """Mixed graphs, vLLM's default token counts: 2, 4, steps of 8 below 256, steps of 16 from
    256, up to ``max_size`` (which is always the last)."""
    sizes = [s for s in [2, 4] + list(range(8, 256, 8)) + list(range(256, max_size + 1, 16))
             if s <= max_size]
    if not sizes or sizes[-1] != max_size:
        sizes.append(max_size)
    return sizes


@dataclass(frozen=True)
class CaptureSizes:
    decode: list[int]
    """Requests (= tokens) per decode graph."""
    mixed: list[int]
    """Tokens per mixed graph (each >= 2); empty when mixed graphs are off."""


def capture_sizes(options: CudaGraphOptions, max_num_seqs: int,
                  max_num_batched_tokens: int) -> CaptureSizes:
    """The sizes to capture. Decode: ``cudagraph_capture_sizes`` as given, else
    ``default_capture_sizes`` up to min(max_num_seqs, max_cudagraph_capture_size). Mixed: the
    given sizes, else ``default_mixed_capture_sizes`` up to max_cudagraph_capture_size
    (default 512), keeping 2 <= T <= max_num_batched_tokens (no step has more tokens)."""
    largest = options.max_cudagraph_capture_size
    decode = list(options.cudagraph_capture_sizes
                  or default_capture_sizes(min(max_num_seqs, largest or MAX_CAPTURE_SIZE)))
    if not options.mixed_graphs:
        return CaptureSizes(decode, [])
    tokens = options.cudagraph_capture_sizes or default_mixed_capture_sizes(
        min(largest or MAX_CAPTURE_SIZE, max_num_batched_tokens))
    return CaptureSizes(decode, [s for s in tokens if 2 <= s <= max_num_batched_tokens])


class MixedInputs:
    """Static inputs of the mixed graphs: up to ``max_tokens`` tokens in
    ``num_slots(T)`` request slots per graph of T tokens (layout in the module docstring).
    ``load`` mutates every buffer; the slices a graph captured stay the same tensors."""

    def __init__(self, max_tokens: int, max_num_seqs: int, max_blocks: int, block_size: int,
                 scratch_block: int, device: torch.device):
        self.max_num_seqs = max_num_seqs
        slots = self.num_slots(max_tokens)
        # the padding request's context is up to max_tokens rows, all on the scratch block
        width = max(max_blocks, -(-max_tokens // block_size))
        self.scratch_block = scratch_block
        self.pad_slots = (scratch_block * block_size
                          + torch.arange(max_tokens, device=device) % block_size)  # [max_tokens]
        self.input_ids = torch.zeros(max_tokens, dtype=torch.int64, device=device)  # [max_tokens]
        self.positions = torch.zeros(max_tokens, dtype=torch.int64, device=device)  # [max_tokens]
        self.slot_mapping = self.pad_slots.clone()                                 # [max_tokens]
        self.block_tables = torch.full((slots, width), scratch_block, dtype=torch.int32,
                                       device=device)                              # [slots, width]
        self.seq_lens = torch.zeros(slots, dtype=torch.int32, device=device)      # [slots]
        self.query_start_loc = torch.zeros(slots + 1, dtype=torch.int32, device=device)

    def num_slots(self, size: int) -> int:
        """Request slots of the graph of ``size`` tokens: the real requests, then padding."""
        return min(size, self.max_num_seqs) + 1

    def metadata(self, size: int, block_size: int, max_model_len: int) -> AttentionMetadata:
        """What the graph of ``size`` tokens bakes in: views of the static buffers; the host
        lists are placeholders (the Triton backend does not read them)."""
        slots = self.num_slots(size)
        return AttentionMetadata(
            num_reqs=slots, num_tokens=size, block_size=block_size,
            query_start_loc=self.query_start_loc[:slots + 1], seq_lens=self.seq_lens[:slots],
            block_tables=self.block_tables[:slots], slot_mapping=self.slot_mapping[:size],
            query_start_loc_cpu=[0] * (slots + 1), seq_lens_cpu=[0] * slots,
            max_query_len=size, max_seq_len=max_model_len)

    def load(self, size: int, input_ids: torch.Tensor, positions: torch.Tensor,
             metadata: AttentionMetadata) -> None:
        """Copy a step of N <= size tokens in n < num_slots(size) requests into the buffers
        (device copies only, no host sync), then the padding request n owning rows N..size-1."""
        n, num_tokens = metadata.num_reqs, metadata.num_tokens
        self.input_ids[:num_tokens].copy_(input_ids)
        self.positions[:num_tokens].copy_(positions)
        self.slot_mapping[:num_tokens].copy_(metadata.slot_mapping)
        self.query_start_loc[:n + 1].copy_(metadata.query_start_loc)
        self.seq_lens[:n].copy_(metadata.seq_lens)
        width = metadata.block_tables.shape[1]
        self.block_tables[:n, :width].copy_(metadata.block_tables)
        self.pad(size, n, num_tokens)

    def pad(self, size: int, n: int, num_tokens: int) -> None:
        """Request slot n owns rows num_tokens..size-1 (its whole context, on the scratch
        block); the later slots own nothing."""
        self.query_start_loc[n + 1:self.num_slots(size) + 1].fill_(size)
        self.seq_lens[n].fill_(size - num_tokens)
        self.seq_lens[n + 1:self.num_slots(size)].zero_()
        self.block_tables[n].fill_(self.scratch_block)
        self.slot_mapping[num_tokens:size].copy_(self.pad_slots[:size - num_tokens])
        self.positions[num_tokens:size].zero_()


def _attention_backend_name(model: torch.nn.Module) -> str | None:
    from pagellm.layers.attention import Attention

    for module in model.modules():
        if isinstance(module, Attention):
            return module.backend.name
    return None


class CudaGraphRunner:
    def __init__(self, model: torch.nn.Module, kv_caches: list[torch.Tensor],
                 capture_sizes: list[int], max_model_len: int, block_size: int,
                 scratch_block: int, device: torch.device, lora_context: LoRAContext | None = None,
                 mixed_sizes: list[int] = (), max_num_seqs: int | None = None,
                 uniform_query_len: int | None = None, eager_replay: bool = False):
        """``capture_sizes``: decode graph sizes; ``mixed_sizes``: mixed graph token counts
        (``max_num_seqs`` then bounds their request slots; default the largest size);
        ``uniform_query_len``: 1 + num_speculative_tokens (None without speculation)."""
        self.model = model
        self.kv_caches = kv_caches
        self.capture_sizes = sorted(set(capture_sizes))
        self.max_batch = self.capture_sizes[-1] if self.capture_sizes else 0
        self.mixed_sizes = sorted(set(mixed_sizes))
        self.max_model_len = max_model_len
        self.block_size = block_size
        self.scratch_block = scratch_block
        self.eager_replay = eager_replay
        self.uniform_query_len = uniform_query_len
        max_blocks = -(-max_model_len // block_size)
        n = max(self.max_batch, 1)
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)           # [n]
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)           # [n]
        self.slot_mapping = torch.full((n,), scratch_block * block_size, dtype=torch.int64,
                                       device=device)                                # [n]
        self.block_tables = torch.full((n, max_blocks), scratch_block, dtype=torch.int32,
                                       device=device)                                # [n, max_blocks]
        self.seq_lens = torch.ones(n, dtype=torch.int32, device=device)             # [n]
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=device)  # [n + 1]
        self.mixed = None
        if self.mixed_sizes:
            self.mixed = MixedInputs(self.mixed_sizes[-1], max_num_seqs or self.mixed_sizes[-1],
                                     max_blocks, block_size, scratch_block, device)
        self.graphs: dict[tuple[int, bool], torch.cuda.CUDAGraph] = {}     # (size, with LoRA)
        self.outputs: dict[tuple[int, bool], torch.Tensor] = {}
        self.mixed_graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.mixed_outputs: dict[int, torch.Tensor] = {}
        self.num_replays: dict[int, int] = dict.fromkeys(self.capture_sizes, 0)
        """Decode replays since capture, per padded batch size."""
        self.num_mixed_replays: dict[int, int] = dict.fromkeys(self.mixed_sizes, 0)
        """Mixed replays since capture, per padded token count."""
        self.num_uniform_replays: dict[int, int] = dict.fromkeys(self.mixed_sizes, 0)
        """Mixed replays of uniform batches (1 + k rows per request: speculative verify)."""
        self.lora_context = lora_context
        self.num_lora_replays: dict[int, int] = dict.fromkeys(self.capture_sizes, 0)
        """Replays of the LoRA graphs per padded size (also counted in ``num_replays``)."""
        self.token_slots = torch.full((n,), -1, dtype=torch.int64, device=device)  # [n] LoRA slot
        self.lora_sorted_tokens = torch.zeros(n, dtype=torch.int64, device=device)    # [n]
        if lora_context is not None and not use_triton_kernels(self.token_slots):
            raise ValueError("CUDA graphs with LoRA need the Triton LoRA kernels: set "
                             "enforce_eager=True, or PAGELLM_TRITON_KERNELS=1")
        self.lora_seg_start = self.lora_seg_len = None      # [max_loras] each, set at capture

    def padded_size(self, num_reqs: int) -> int | None:
        """The decode graph for ``num_reqs`` requests, None past the largest."""
        return _smallest_fitting(self.capture_sizes, num_reqs)

    def padded_tokens(self, num_tokens: int) -> int | None:
        """The mixed graph for ``num_tokens`` tokens, None past the largest."""
        return _smallest_fitting(self.mixed_sizes, num_tokens)

    def route(self, metadata: AttentionMetadata) -> tuple[str, int] | None:
        """("decode", padded requests), ("mixed", padded tokens), or None (eager)."""
        if metadata.is_all_decode and metadata.num_reqs <= self.max_batch:
            return "decode", self.padded_size(metadata.num_reqs)
        if self.lora_context is not None and self.lora_context.mapping is not None:
            return None                           # mixed graphs hold no adapters
        size = self.padded_tokens(metadata.num_tokens)
        if size is None or metadata.num_reqs >= self.mixed.num_slots(size):
            return None
        return "mixed", size

    def can_run(self, metadata: AttentionMetadata) -> bool:
        return self.route(metadata) is not None

    def _metadata(self, size: int) -> AttentionMetadata:
        # Host fields are fixed at capture: the kernels must read the per-step truth from the
        # device tensors (seq_lens, block_tables) and size their work for max_model_len.
        return AttentionMetadata(
            num_reqs=size, num_tokens=size, block_size=self.block_size,
            query_start_loc=self.query_start_loc[:size + 1], seq_lens=self.seq_lens[:size],
            block_tables=self.block_tables[:size], slot_mapping=self.slot_mapping[:size],
            query_start_loc_cpu=list(range(size + 1)), seq_lens_cpu=[self.max_model_len] * size,
            max_query_len=1, max_seq_len=self.max_model_len)

    def _mixed_metadata(self, size: int) -> AttentionMetadata:
        return self.mixed.metadata(size, self.block_size, self.max_model_len)

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every graph (largest first, one memory pool); logs the time and memory.
        With ``eager_replay`` nothing is captured."""
        if self.eager_replay:
            return
        start, free_before = time.perf_counter(), torch.cuda.mem_get_info()[0]
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream()
        variants = [False, True] if self.lora_context is not None else [False]
        try:
            if self.lora_context is not None:
                self.lora_context.mapping = None          # mixed graphs: the base model only
            for size in reversed(self.mixed_sizes):       # the largest graphs: the pool fits all
                self.mixed.pad(size, 0, 0)
                self.mixed_graphs[size], self.mixed_outputs[size] = self._capture_graph(
                    self.mixed.input_ids[:size], self.mixed.positions[:size],
                    self._mixed_metadata(size), pool, stream)
            for size in reversed(self.capture_sizes):
                for with_lora in variants:
                    self._capture_decode(size, with_lora, pool, stream)
        finally:
            if self.lora_context is not None:
                self.lora_context.mapping = None
        torch.cuda.synchronize()
        logger.info("Captured CUDA graphs for %d decode batch sizes (%s)%s and %d mixed token "
                    "counts (%s) in %.1f s, %.2f GiB", len(self.capture_sizes),
                    _span(self.capture_sizes),
                    ", each with and without LoRA" if len(variants) == 2 else "",
                    len(self.mixed_sizes), _span(self.mixed_sizes), time.perf_counter() - start,
                    (free_before - torch.cuda.mem_get_info()[0]) / GiB)

    def _static_lora_mapping(self, size: int) -> LoRABatchMapping:
        if self.lora_seg_start is None:
            num_slots = self.lora_context.num_slots
            device = self.token_slots.device
            self.lora_seg_start = torch.zeros(num_slots, dtype=torch.int64, device=device)
            self.lora_seg_len = torch.zeros(num_slots, dtype=torch.int64, device=device)
        return LoRABatchMapping(self.token_slots[:size], [], self.lora_sorted_tokens[:size],
                                self.lora_seg_start, self.lora_seg_len)

    def _capture_decode(self, size: int, with_lora: bool, pool, stream: torch.cuda.Stream) -> None:
        if self.lora_context is not None:      # the LoRA kernels read the static buffers
            self.lora_context.mapping = (self._static_lora_mapping(size) if with_lora else None)
        self.graphs[size, with_lora], self.outputs[size, with_lora] = self._capture_graph(
            self.input_ids[:size], self.positions[:size], self._metadata(size), pool, stream)

    def _capture_graph(self, input_ids: torch.Tensor, positions: torch.Tensor,
                       metadata: AttentionMetadata, pool, stream: torch.cuda.Stream):
        """(graph, its static output [size, hidden]) of one forward over static inputs."""
        args = (input_ids, positions, self.kv_caches, metadata)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):                              # warm-up: autotuning, lazy init
                self.model(*args)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, stream=stream):
            output = self.model(*args)
        return graph, output

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor,
            metadata: AttentionMetadata, route: tuple[str, int] | None = None) -> torch.Tensor:
        """Replay the graph ``route`` picks (``can_run`` must hold; ``route``: its answer when
        the caller already has it); [num_tokens, hidden]."""
        kind, size = route or self.route(metadata)
        if kind == "mixed":
            return self._run_mixed(size, input_ids, positions, metadata)
        return self._run_decode(size, input_ids, positions, metadata)

    def _run_mixed(self, size: int, input_ids: torch.Tensor, positions: torch.Tensor,
                   metadata: AttentionMetadata) -> torch.Tensor:
        self.mixed.load(size, input_ids, positions, metadata)
        if self.eager_replay:
            output = self.model(self.mixed.input_ids[:size], self.mixed.positions[:size],
                                self.kv_caches, self._mixed_metadata(size))
        else:
            self.mixed_graphs[size].replay()
            output = self.mixed_outputs[size]
        self.num_mixed_replays[size] += 1
        if metadata.max_query_len == self.uniform_query_len and (
                metadata.num_tokens == metadata.num_reqs * metadata.max_query_len):
            self.num_uniform_replays[size] += 1            # every request 1 + k rows
        return output[:metadata.num_tokens]

    def _run_decode(self, size: int, input_ids: torch.Tensor, positions: torch.Tensor,
                    metadata: AttentionMetadata) -> torch.Tensor:
        n = metadata.num_reqs
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(positions)
        self.slot_mapping[:n].copy_(metadata.slot_mapping)
        width = metadata.block_tables.shape[1]
        self.block_tables[:n, :width].copy_(metadata.block_tables)
        self.seq_lens[:n].copy_(metadata.seq_lens)
        if size > n:                                          # reset padding rows
            self.slot_mapping[n:size].fill_(self.scratch_block * self.block_size)
            self.block_tables[n:size].fill_(self.scratch_block)
            self.seq_lens[n:size].fill_(1)
            self.positions[n:size].zero_()
        mapping = self.lora_context.mapping if self.lora_context is not None else None
        with_lora = mapping is not None
        if with_lora:                                         # this step's mapping
            sorted_tokens, seg_start, seg_len = mapping.segments
            self.lora_sorted_tokens[:n].copy_(sorted_tokens)
            self.lora_seg_start.copy_(seg_start)             # padding rows are in no segment
            self.lora_seg_len.copy_(seg_len)
            self.num_lora_replays[size] += 1
        if self.eager_replay:
            output = self.model(self.input_ids[:size], self.positions[:size], self.kv_caches,
                                self._metadata(size))
        else:
            self.graphs[size, with_lora].replay()
            output = self.outputs[size, with_lora]
        self.num_replays[size] += 1
        return output[:n]


def make_cuda_graph_runner(model: torch.nn.Module, kv_cache, options: CudaGraphOptions,
                           max_num_seqs: int, max_num_batched_tokens: int, max_model_len: int,
                           block_size: int, device: torch.device,
                           lora_context: LoRAContext | None = None,
                           uniform_query_len: int | None = None,
                           eager_replay: bool = False) -> CudaGraphRunner | None:
    """The runner for ``compilation_config``'s options over a bound ``KVCache``, not yet
    captured; None for cudagraph_mode NONE. Mixed graphs need the Triton attention backend
    (the torch one reads host metadata): with another backend only decode graphs are built."""
    if not options.decode_graphs:
        logger.info("cudagraph_mode NONE: CUDA graphs are not captured (eager mode)")
        return None
    sizes = capture_sizes(options, max_num_seqs, max_num_batched_tokens)
    mixed = sizes.mixed
    backend = _attention_backend_name(model)
    if mixed and backend != "triton":
        logger.info("attention backend %s: mixed-batch CUDA graphs are not captured (they need "
                    "the Triton backend); decode graphs only", backend)
        mixed = []
    if mixed and options.cudagraph_mode == "PIECEWISE":
        logger.info("cudagraph_mode PIECEWISE runs as FULL: pagellm's attention is graph-safe "
                    "for any batch, so full graphs replace piecewise ones")
    return CudaGraphRunner(model, kv_cache.layers, sizes.decode, max_model_len, block_size,
                           kv_cache.scratch_block, device, lora_context=lora_context,
                           mixed_sizes=mixed, max_num_seqs=max_num_seqs,
                           uniform_query_len=uniform_query_len, eager_replay=eager_replay)


def _smallest_fitting(sizes: list[int], n: int) -> int | None:
    for size in sizes:
        if size >= n:
            return size
    return None


def _span(sizes: list[int]) -> str:
    return f"{sizes[0]}..{sizes[-1]}" if sizes else "none"
