"""Per-request block tables over the block pool: prefix lookup, slot allocation, freeing, and
the bookkeeping of swapping a request's blocks to CPU swap space and back.

Contract:
- ``get_computed_blocks`` only looks; ``allocate_slots`` commits (takes references) or, when
  blocks are short, changes nothing and returns None.
- A full block is registered under its hash as soon as the tokens filling it are scheduled:
  the runner writes a step's K/V before any attention of that step reads it, so a request
  scheduled later in the same step may already share it.
- Prefix sharing applies to every request when ``enable_prefix_caching`` is on, and to the
  siblings of one n > 1 group (salted by the group id) when it is off.
"""

from __future__ import annotations

from dataclasses import dataclass

from pagellm.core.block_hash import extend_block_hashes, num_hashable_blocks
from pagellm.core.block_pool import BlockPool, KVCacheBlock
from pagellm.core.request import Request


@dataclass
class PrefixCacheStats:
    queries: int = 0   # prompt tokens looked up
    hits: int = 0      # of which found in the cache


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool,
                 num_swap_blocks: int = 0, num_lookahead_tokens: int = 0,
                 max_model_len: int | None = None, use_eagle: bool = False):
        """``num_lookahead_tokens``: slots reserved past every allocation (a draft model or
        EAGLE head writes its drafts' K/V there before the next step), never past
        ``max_model_len``. ``use_eagle``: an EAGLE head's K/V at a block's last position
        depends on the next block's first token, so a block's hash covers that token too
        (vLLM instead recomputes the last block of a hit, which misses a block whose
        successor in the hit was computed by another request with another next token)."""
        self.num_lookahead_tokens = num_lookahead_tokens
        self.max_model_len = max_model_len
        self.hash_next_tokens = 1 if use_eagle else 0
        """Tokens after a block that its hash covers (``block_hash``)."""
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = BlockPool(num_blocks)
        self.req_to_blocks: dict[str, list[KVCacheBlock]] = {}
        self.num_cached_blocks: dict[str, int] = {}   # blocks of a request already hashed
        self.free_swap_blocks: list[int] = list(range(num_swap_blocks - 1, -1, -1))
        self.num_swap_blocks = num_swap_blocks
        self.req_to_swap_blocks: dict[str, list[int]] = {}
        self.num_swapped_out_blocks = 0   # since start: blocks copied to swap space
        self.num_swapped_in_blocks = 0    # since start: blocks copied back from swap space
        self.prefix_stats = PrefixCacheStats()

    # ---- prefix caching -------------------------------------------------------------------

    def caches(self, request: Request) -> bool:
        return self.enable_prefix_caching or request.group_id is not None

    def _extra_keys(self, request: Request) -> tuple:
        keys = (request.cache_salt,) if request.cache_salt else ()
        if request.lora_request is not None:    # an adapter's KV differs from the base's
            keys += (("lora", request.lora_int_id),)
        if not self.enable_prefix_caching:
            keys += (request.group_id,)
        return keys

    def update_block_hashes(self, request: Request) -> None:
        """Hash the request's newly full blocks (call after tokens are appended)."""
        num_hashable = num_hashable_blocks(len(request.all_token_ids), self.block_size,
                                           self.hash_next_tokens)
        if num_hashable > len(request.block_hashes) and self.caches(request):
            extend_block_hashes(request.block_hashes, request.all_token_ids, self.block_size,
                                self._extra_keys(request), self.hash_next_tokens)

    def get_computed_blocks(self, request: Request) -> tuple[list[KVCacheBlock], int]:
        """The longest run of cached blocks that prefixes the request, and its token count.
        At least one token is always left to compute (its logits are needed)."""
        if not self.caches(request):
            return [], 0
        self.update_block_hashes(request)
        if request.sampling_params.prompt_logprobs is not None:
            return [], 0      # every prompt position must be computed to score it
        max_hit_blocks = (request.num_tokens - 1) // self.block_size
        blocks = []
        for block_hash in request.block_hashes[:max_hit_blocks]:
            block = self.pool.get_cached_block(block_hash)
            if block is None:
                break
            blocks.append(block)
        return blocks, len(blocks) * self.block_size

    def record_prefix_lookup(self, num_tokens: int, num_hit_tokens: int) -> None:
        """Count one admitted request's lookup (not the failed tries before it)."""
        self.prefix_stats.queries += num_tokens
        self.prefix_stats.hits += num_hit_tokens

    # ---- allocation -------------------------------------------------------------------------

    def num_blocks_needed(self, request: Request, num_new_tokens: int,
                          new_computed_blocks: list[KVCacheBlock] = ()) -> int:
        held = len(self.req_to_blocks.get(request.request_id, ())) + len(new_computed_blocks)
        num_computed = request.num_computed_tokens + len(new_computed_blocks) * self.block_size
        total_blocks = -(-(num_computed + num_new_tokens) // self.block_size)
        return max(0, total_blocks - held)

    def allocate_slots(self, request: Request, num_new_tokens: int,
                       new_computed_blocks: list[KVCacheBlock] = ()) -> list[KVCacheBlock] | None:
        """Reserve slots for ``num_new_tokens`` more tokens after the computed ones (and after
        ``new_computed_blocks``, prefix hits that become the request's first blocks).
        Returns the newly allocated blocks, or None if not enough blocks are free (nothing
        changed then). On success ``request.num_computed_tokens`` has moved past the hits."""
        blocks = self.req_to_blocks.get(request.request_id)
        num_computed = request.num_computed_tokens + len(new_computed_blocks) * self.block_size
        lookahead = (self._lookahead(num_computed + num_new_tokens)
                     if self.num_lookahead_tokens else 0)
        if blocks is not None and not new_computed_blocks:
            # The common decode step: the new tokens fit in the blocks already held.
            num_tokens_after = num_computed + num_new_tokens
            block_size = self.block_size
            if num_tokens_after + lookahead <= len(blocks) * block_size:
                if num_tokens_after // block_size > self.num_cached_blocks.get(
                        request.request_id, 0):
                    self._cache_full_blocks(request, num_tokens_after)
                return []
        num_new_blocks = self.num_blocks_needed(request, num_new_tokens + lookahead,
                                                new_computed_blocks)
        # Hit blocks sitting in the free queue stop being free once touched.
        num_evictable_hits = sum(1 for block in new_computed_blocks if block.ref_cnt == 0)
        if num_new_blocks > self.pool.num_free_blocks - num_evictable_hits:
            return None
        blocks = self.req_to_blocks.setdefault(request.request_id, [])
        if new_computed_blocks:
            self.pool.touch(list(new_computed_blocks))
            blocks.extend(new_computed_blocks)
            self.num_cached_blocks[request.request_id] = len(blocks)
            request.num_computed_tokens += len(new_computed_blocks) * self.block_size
        new_blocks = self.pool.get_new_blocks(num_new_blocks) if num_new_blocks else []
        blocks.extend(new_blocks)
        self._cache_full_blocks(request, request.num_computed_tokens + num_new_tokens)
        return new_blocks

    def _lookahead(self, num_tokens_after_step: int) -> int:
        """Lookahead slots to reserve after a step ending at ``num_tokens_after_step``."""
        if self.max_model_len is None:
            return self.num_lookahead_tokens
        return max(0, min(self.num_lookahead_tokens, self.max_model_len - num_tokens_after_step))

    def _cache_full_blocks(self, request: Request, num_tokens_after_step: int) -> None:
        if not self.caches(request):
            return
        start = self.num_cached_blocks.get(request.request_id, 0)
        if num_tokens_after_step // self.block_size <= start:
            return          # the common decode step: no block became full
        self.update_block_hashes(request)
        blocks = self.req_to_blocks[request.request_id]
        num_full = min(num_tokens_after_step // self.block_size, len(request.block_hashes))
        for index in range(start, num_full):
            self.pool.cache_block(blocks[index], request.block_hashes[index])
        self.num_cached_blocks[request.request_id] = max(start, num_full)

    def free(self, request: Request) -> None:
        """Release the request's GPU blocks (tail first) and any swap blocks."""
        blocks = self.req_to_blocks.pop(request.request_id, [])
        # A request preempted in the step that scheduled it hashed blocks whose K/V will never
        # be written (its num_computed_tokens was not advanced): drop those hashes.
        for block in blocks[request.num_computed_tokens // self.block_size:]:
            self.pool.uncache(block)
        self.pool.free_blocks(list(reversed(blocks)))
        self.num_cached_blocks.pop(request.request_id, None)
        self.free_swap_blocks.extend(self.req_to_swap_blocks.pop(request.request_id, []))

    def block_ids(self, request_id: str) -> list[int]:
        return [block.block_id for block in self.req_to_blocks.get(request_id, ())]

    def usage(self) -> float:
        return self.pool.usage()

    # ---- swapping ---------------------------------------------------------------------------

    def swap_out(self, request: Request) -> list[tuple[int, int]] | None:
        """Move the request's computed blocks to swap space and free its GPU blocks.
        Returns (gpu block, swap block) copies to run, or None if swap space is short."""
        blocks = self.req_to_blocks.get(request.request_id, [])
        num_needed = -(-request.num_computed_tokens // self.block_size)
        if num_needed > len(self.free_swap_blocks):
            return None
        swap_blocks = [self.free_swap_blocks.pop() for _ in range(num_needed)]
        mapping = [(blocks[i].block_id, swap_blocks[i]) for i in range(num_needed)]
        self.free(request)
        self.req_to_swap_blocks[request.request_id] = swap_blocks
        self.num_swapped_out_blocks += num_needed
        return mapping

    def can_swap_in(self, request: Request, num_new_tokens: int) -> bool:
        num_swapped = len(self.req_to_swap_blocks.get(request.request_id, ()))
        num_tokens_after = request.num_computed_tokens + num_new_tokens
        total = -(-(num_tokens_after + self._lookahead(num_tokens_after)) // self.block_size)
        return max(total, num_swapped) <= self.pool.num_free_blocks

    def swap_in(self, request: Request) -> list[tuple[int, int]]:
        """Give a swapped request fresh GPU blocks for its swapped KV (call ``can_swap_in``
        first). Returns (swap block, gpu block) copies to run before the next forward."""
        swap_blocks = self.req_to_swap_blocks.pop(request.request_id)
        new_blocks = self.pool.get_new_blocks(len(swap_blocks))
        self.req_to_blocks[request.request_id] = new_blocks
        self.free_swap_blocks.extend(reversed(swap_blocks))
        self._cache_full_blocks(request, request.num_computed_tokens)
        self.num_swapped_in_blocks += len(swap_blocks)
        return [(swap, gpu.block_id) for swap, gpu in zip(swap_blocks, new_blocks)]
