"""CUDA graphs for decode batches (GPU only; off with ``enforce_eager``).

A decode step of a small model is mostly kernel-launch overhead, so the whole forward of an
all-decode batch is captured once per padded batch size and replayed. Inputs go through
static buffers; padding rows write their K/V into a scratch block that no request owns and
attend to one token of it, so they cannot disturb real requests.

Contract: ``capture`` must run after the KV cache is bound (graphs hold its addresses);
``run`` returns a view of a static output buffer that stays valid until the next ``run``.
``num_replays`` counts the replays per captured size (the proof that decode steps used them).

LoRA (``enable_lora``): each size is captured twice, once without adapters (the base path
pays nothing when no adapter is in the batch) and once with the LoRA Triton kernels reading
static mapping buffers (the slot segments ``lora_sorted_tokens``, ``lora_seg_start``,
``lora_seg_len``; ``token_slots`` stays -1: the SGMV kernels do not read it). A step whose
tokens use adapters copies its segments into those buffers and replays the LoRA graph (the
kernels' grids depend only on the padded size); the adapters' weights live in the layers'
fixed slot tensors, so loading an adapter into a slot needs no re-capture (vLLM
captures its punica wrapper's static metadata the same way). ``num_lora_replays`` counts them.
"""

from __future__ import annotations

import logging
import time

import torch

from pagellm.layers.attention_metadata import AttentionMetadata
from pagellm.lora.layers import LoRAContext
from pagellm.lora.ops import LoRABatchMapping
from pagellm.platforms import use_triton_kernels

logger = logging.getLogger(__name__)


def default_capture_sizes(max_num_seqs: int) -> list[int]:
    """1, 2, 4, 8, then steps of 8 up to max_num_seqs (at most 512)."""
    limit = min(max_num_seqs, 512)
    sizes = [s for s in (1, 2, 4, 8) if s <= limit]
    sizes += list(range(16, limit + 1, 8))
    if sizes[-1] < limit:
        sizes.append(limit)
    return sizes


class CudaGraphRunner:
    def __init__(self, model: torch.nn.Module, kv_caches: list[torch.Tensor],
                 capture_sizes: list[int], max_model_len: int, block_size: int,
                 scratch_block: int, device: torch.device, lora_context: LoRAContext | None = None):
        self.model = model
        self.kv_caches = kv_caches
        self.capture_sizes = sorted(set(capture_sizes))
        self.max_batch = self.capture_sizes[-1]
        self.max_model_len = max_model_len
        self.block_size = block_size
        self.scratch_block = scratch_block
        max_blocks = -(-max_model_len // block_size)
        n = self.max_batch
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)           # [n]
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)           # [n]
        self.slot_mapping = torch.full((n,), scratch_block * block_size, dtype=torch.int64,
                                       device=device)                                # [n]
        self.block_tables = torch.full((n, max_blocks), scratch_block, dtype=torch.int32,
                                       device=device)                                # [n, max_blocks]
        self.seq_lens = torch.ones(n, dtype=torch.int32, device=device)             # [n]
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=device)  # [n + 1]
        self.graphs: dict[tuple[int, bool], torch.cuda.CUDAGraph] = {}     # (size, with LoRA)
        self.outputs: dict[tuple[int, bool], torch.Tensor] = {}
        self.num_replays: dict[int, int] = dict.fromkeys(self.capture_sizes, 0)
        """Replays since capture, per padded batch size (capture's own runs not counted)."""
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
        for size in self.capture_sizes:
            if size >= num_reqs:
                return size
        return None

    def can_run(self, metadata: AttentionMetadata) -> bool:
        return metadata.is_all_decode and metadata.num_reqs <= self.max_batch

    def _metadata(self, size: int) -> AttentionMetadata:
        # Host fields are fixed at capture: the kernels must read the per-step truth from the
        # device tensors (seq_lens, block_tables) and size their work for max_model_len.
        return AttentionMetadata(
            num_reqs=size, num_tokens=size, block_size=self.block_size,
            query_start_loc=self.query_start_loc[:size + 1], seq_lens=self.seq_lens[:size],
            block_tables=self.block_tables[:size], slot_mapping=self.slot_mapping[:size],
            query_start_loc_cpu=list(range(size + 1)), seq_lens_cpu=[self.max_model_len] * size,
            max_query_len=1, max_seq_len=self.max_model_len)

    @torch.inference_mode()
    def capture(self) -> None:
        start = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream()
        variants = [False, True] if self.lora_context is not None else [False]
        try:
            for size in reversed(self.capture_sizes):      # largest first: the pool fits all
                for with_lora in variants:
                    self._capture_one(size, with_lora, pool, stream)
        finally:
            if self.lora_context is not None:
                self.lora_context.mapping = None
        torch.cuda.synchronize()
        logger.info("Captured CUDA graphs for %d decode batch sizes (%d..%d)%s in %.1f s",
                    len(self.capture_sizes), self.capture_sizes[0], self.max_batch,
                    ", each with and without LoRA" if len(variants) == 2 else "",
                    time.perf_counter() - start)

    def _static_lora_mapping(self, size: int) -> LoRABatchMapping:
        if self.lora_seg_start is None:
            num_slots = self.lora_context.num_slots
            device = self.token_slots.device
            self.lora_seg_start = torch.zeros(num_slots, dtype=torch.int64, device=device)
            self.lora_seg_len = torch.zeros(num_slots, dtype=torch.int64, device=device)
        return LoRABatchMapping(self.token_slots[:size], [], self.lora_sorted_tokens[:size],
                                self.lora_seg_start, self.lora_seg_len)

    def _capture_one(self, size: int, with_lora: bool, pool, stream: torch.cuda.Stream) -> None:
        if self.lora_context is not None:      # the LoRA kernels read the static buffers
            self.lora_context.mapping = (self._static_lora_mapping(size) if with_lora else None)
        metadata = self._metadata(size)
        args = (self.input_ids[:size], self.positions[:size], self.kv_caches, metadata)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):                              # warm-up: autotuning, lazy init
                self.model(*args)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, stream=stream):
            self.outputs[size, with_lora] = self.model(*args)
        self.graphs[size, with_lora] = graph

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor,
            metadata: AttentionMetadata) -> torch.Tensor:
        """Replay the graph of the smallest captured size >= num_reqs; [num_reqs, hidden]."""
        n = metadata.num_reqs
        size = self.padded_size(n)
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
        self.graphs[size, with_lora].replay()
        self.num_replays[size] += 1
        return self.outputs[size, with_lora][:n]
