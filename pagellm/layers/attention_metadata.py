"""Per-step attention metadata for one flattened batch, built once by the model runner.

The batch holds ``num_tokens`` new tokens from ``num_reqs`` requests, request i owning tokens
``query_start_loc[i]:query_start_loc[i+1]``. Request i attends to ``seq_lens[i]`` tokens of
context (its cached prefix plus its new tokens); its new tokens sit at the last positions of
that context. Keys and values live in a paged cache per layer shaped
``[2, num_blocks, block_size, num_kv_heads, head_dim]`` (index 0 = K, 1 = V); token t of
request i sits in block ``block_tables[i, t // block_size]`` at offset ``t % block_size``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(slots=True)
class AttentionMetadata:
    num_reqs: int
    num_tokens: int
    block_size: int
    query_start_loc: torch.Tensor   # [num_reqs + 1] int32, on device
    seq_lens: torch.Tensor          # [num_reqs] int32, on device
    block_tables: torch.Tensor      # [num_reqs, max_num_blocks_per_req] int32, on device
    slot_mapping: torch.Tensor      # [num_tokens] int64: where each new token's K/V is written
    query_start_loc_cpu: list[int]  # host copy, for backends that loop over requests
    seq_lens_cpu: list[int]         # host copy
    max_query_len: int
    max_seq_len: int

    @property
    def is_all_decode(self) -> bool:
        return self.max_query_len == 1
