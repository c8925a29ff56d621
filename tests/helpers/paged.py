"""Hand-built paged-attention inputs for tests: block tables and AttentionMetadata."""

from __future__ import annotations

import torch

from pagellm.layers.attention_metadata import AttentionMetadata


def random_block_tables(seq_lens: list[int], block_size: int, num_blocks: int,
                        generator: torch.Generator) -> list[list[int]]:
    """Disjoint random block ids per request, enough for each request's seq_len."""
    needed = [-(-n // block_size) for n in seq_lens]
    if sum(needed) > num_blocks:
        raise ValueError(f"need {sum(needed)} blocks, have {num_blocks}")
    order = torch.randperm(num_blocks, generator=generator).tolist()
    tables, start = [], 0
    for n in needed:
        tables.append(order[start:start + n])
        start += n
    return tables


def build_attn_metadata(query_lens: list[int], seq_lens: list[int], block_tables: list[list[int]],
                        block_size: int, device: str | torch.device = "cpu") -> AttentionMetadata:
    """Metadata for requests whose ``query_lens[i]`` new tokens are the last of their
    ``seq_lens[i]`` context tokens, with K/V slots given by ``block_tables``."""
    query_start_loc = [0]
    for q_len in query_lens:
        query_start_loc.append(query_start_loc[-1] + q_len)
    slots = []
    for q_len, seq_len, table in zip(query_lens, seq_lens, block_tables):
        for pos in range(seq_len - q_len, seq_len):
            slots.append(table[pos // block_size] * block_size + pos % block_size)
    width = max(len(t) for t in block_tables)
    padded = [t + [0] * (width - len(t)) for t in block_tables]
    return AttentionMetadata(
        num_reqs=len(query_lens), num_tokens=query_start_loc[-1], block_size=block_size,
        query_start_loc=torch.tensor(query_start_loc, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=torch.tensor(padded, dtype=torch.int32, device=device),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        query_start_loc_cpu=query_start_loc, seq_lens_cpu=list(seq_lens),
        max_query_len=max(query_lens), max_seq_len=max(seq_lens))


def positions_for(query_lens: list[int], seq_lens: list[int]) -> torch.Tensor:
    """[num_tokens] int64 positions of the new tokens of each request."""
    return torch.cat([torch.arange(s - q, s) for q, s in zip(query_lens, seq_lens)])
