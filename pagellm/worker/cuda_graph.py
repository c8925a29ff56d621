"""CUDA graphs for decode batches (GPU only; off with ``enforce_eager``).

A decode step of a small model is mostly kernel-launch overhead, so the whole forward of an
all-decode batch is captured once per padded batch size and replayed. Inputs go through
static buffers; padding rows write their K/V into a scratch block that no request owns and
attend to one token of it, so they cannot disturb real requests.

Contract: ``capture`` must run after the KV cache is bound (graphs hold its addresses);
``run`` returns a view of a static output buffer that stays valid until the next ``run``.
``num_replays`` counts the replays per captured size (the proof that decode steps used them).
"""

from __future__ import annotations

import logging
import time

import torch

from pagellm.layers.attention_metadata import AttentionMetadata

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
                 scratch_block: int, device: torch.device):
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
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.num_replays: dict[int, int] = dict.fromkeys(self.capture_sizes, 0)
        """Replays since capture, per padded batch size (capture's own runs not counted)."""

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
        for size in reversed(self.capture_sizes):          # largest first: the pool fits all
            metadata = self._metadata(size)
            args = (self.input_ids[:size], self.positions[:size], self.kv_caches, metadata)
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):                          # warm-up: autotuning, lazy init
                    self.model(*args)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, stream=stream):
                self.outputs[size] = self.model(*args)
            self.graphs[size] = graph
        torch.cuda.synchronize()
        logger.info("Captured CUDA graphs for %d decode batch sizes (%d..%d) in %.1f s",
                    len(self.capture_sizes), self.capture_sizes[0], self.max_batch,
                    time.perf_counter() - start)

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
        self.graphs[size].replay()
        self.num_replays[size] += 1
        return self.outputs[size][:n]
