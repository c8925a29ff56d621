"""Chained block hashes for prefix caching.

A full block's hash covers its parent's hash, its token ids and extra keys (LoRA id, cache
salt), so equal hashes mean equal prefixes, not just equal blocks. With ``next_tokens`` > 0
(an EAGLE head, whose K/V at a position depends on the token after it) a block is hashed only
once that many tokens follow it, and its hash covers them too.
"""

from __future__ import annotations

import hashlib
import struct

ROOT_HASH = b"pagellm-prefix-root"


def hash_block(parent_hash: bytes | None, token_ids: list[int] | tuple[int, ...],
               extra_keys: tuple = ()) -> bytes:
    digest = hashlib.sha256()
    digest.update(parent_hash if parent_hash is not None else ROOT_HASH)
    digest.update(struct.pack(f"<{len(token_ids)}q", *token_ids))
    if extra_keys:
        digest.update(repr(extra_keys).encode())
    return digest.digest()


def num_hashable_blocks(num_tokens: int, block_size: int, next_tokens: int = 0) -> int:
    """Blocks of a ``num_tokens``-token sequence that can be hashed (see the module)."""
    return max(0, num_tokens - next_tokens) // block_size


def extend_block_hashes(block_hashes: list[bytes], token_ids: list[int], block_size: int,
                        extra_keys: tuple = (), next_tokens: int = 0) -> None:
    """Append the hashes of every newly full block of ``token_ids`` to ``block_hashes``
    (a block and the ``next_tokens`` tokens after it)."""
    num_full_blocks = num_hashable_blocks(len(token_ids), block_size, next_tokens)
    parent = block_hashes[-1] if block_hashes else None
    for index in range(len(block_hashes), num_full_blocks):
        start = index * block_size
        parent = hash_block(parent, token_ids[start:start + block_size + next_tokens], extra_keys)
        block_hashes.append(parent)
