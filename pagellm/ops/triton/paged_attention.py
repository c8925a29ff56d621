"""Paged causal attention for one flattened mixed batch, in Triton.

Torch twin and oracle: ``pagellm.ops.attention.paged_attention_torch``.

Two paths, both reading the paged cache ``[2, num_blocks, block_size, num_kv_heads, head_dim]``
through the block tables and never syncing with the host:

* The unified kernel handles any mix of prefills, prefill chunks on a cached prefix and decodes
  in one launch. Each program owns one tile of up to ``BLOCK_Q`` query tokens of one request and
  one kv head; its rows are (query token, query head of that kv head's group), so a decode
  program serves the whole GQA group from one read of the kv head's keys and values. Tiles are
  numbered so that request i's tiles start at ``query_start_loc[i] // BLOCK_Q + i``; a program
  finds its request by a binary search over ``query_start_loc`` and exits if its tile is past
  the request's last query token. The grid, ``num_tokens // BLOCK_Q + num_reqs`` tiles, needs
  only host-known sizes.
* Split-KV (flash-decoding) for all-decode batches with too few (request, kv head) pairs to fill
  the GPU: each program attends over one segment of the context and writes its unnormalised
  partial (acc, running max, running sum), then takes a ticket from an atomic counter per
  (request, kv head); the program holding the last ticket merges the segments in a fixed order
  and resets the counter, so there is no second launch (session 7 profile: 2.0 us per layer)
  and a CUDA-graph replay needs no host work. The old separate merge launch stays selectable
  (``merge_in_split_kernel=False``) and gives the same bits.

Softmax runs online in float32 with base-2 exponentials (scale folded with log2(e)).
An fp8 cache is read as fp8 and cast to the query's dtype in registers; ``k_scale`` is folded
into the softmax scale and ``v_scale`` multiplies the normalised output.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from pagellm.ops.attention import is_fp8
from pagellm.ops.triton.pdl import launch_dependents

_LOG2_E = 1.4426950408889634
_DEFAULT_SM_COUNT = 1   # interpreter mode or CPU tensors: no device to fill
MAX_KV_SPLITS = 256
"""Most segments per split-KV context (the merge's pairwise tree goes up to 256)."""
DECODE_TILE_N = 128
"""Keys per tile of a decode program (at most 32 KiB of K or V per tile); a module value so
that ``benchmarks/attention_decode_splits.py`` can time others."""
MERGE_MAX_VALUES = 16384
"""Partial-accumulator values a merging program holds at once (128 registers a thread at 4
warps); past it the merge walks the head dim in chunks."""


@triton.jit
def _find_request(query_start_loc_ptr, tile_id, num_reqs, BLOCK_Q: tl.constexpr):
    """The last request i whose first tile ``query_start_loc[i] // BLOCK_Q + i`` is <= tile_id."""
    lo = num_reqs * 0
    hi = num_reqs - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        first_tile = tl.load(query_start_loc_ptr + mid) // BLOCK_Q + mid
        lo = tl.where(first_tile <= tile_id, mid, lo)
        hi = tl.where(first_tile <= tile_id, hi, mid - 1)
    return lo


@triton.jit
def _attend_range(q, acc, m_i, l_i, query_pos, key_start, key_end,
                  cache_ptr, block_table_ptr, kv_head, qk_scale, stride_cache_kv,
                  stride_cache_block, stride_cache_slot, stride_cache_head, stride_cache_dim,
                  BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
                  TILE_N: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Online-softmax update of (acc [M, D], m_i [M], l_i [M]) with keys ``key_start`` to
    ``key_end`` (exclusive) of one request, masked causally by ``query_pos`` [M]."""
    dims = tl.arange(0, HEAD_DIM_PAD)
    dim_valid = dims < HEAD_DIM
    head_offset = kv_head.to(tl.int64) * stride_cache_head
    for tile_start in range(key_start, key_end, TILE_N):
        key_pos = tile_start + tl.arange(0, TILE_N)                       # [N]
        key_valid = key_pos < key_end
        block_ids = tl.load(block_table_ptr + key_pos // BLOCK_SIZE, mask=key_valid, other=0)
        slot_offsets = (block_ids.to(tl.int64) * stride_cache_block
                        + (key_pos % BLOCK_SIZE) * stride_cache_slot + head_offset)  # [N]
        # keys transposed, [D, N]
        k = tl.load(cache_ptr + slot_offsets[None, :] + dims[:, None] * stride_cache_dim,
                    mask=dim_valid[:, None] & key_valid[None, :], other=0.0).to(q.dtype)
        scores = tl.dot(q, k, input_precision=DOT_PRECISION) * qk_scale   # [M, N] fp32
        visible = key_valid[None, :] & (key_pos[None, :] <= query_pos[:, None])
        scores = tl.where(visible, scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        # A row with nothing visible yet keeps m = -inf; subtract 0 instead to avoid NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(scores - m_safe[:, None])                             # [M, N]
        alpha = tl.exp2(m_i - m_safe)                                     # [M]
        v = tl.load(cache_ptr + stride_cache_kv + slot_offsets[:, None] + dims[None, :] * stride_cache_dim,
                    mask=key_valid[:, None] & dim_valid[None, :], other=0.0).to(q.dtype)  # [N, D]
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _paged_attention_kernel(
        out_ptr, q_ptr, cache_ptr, block_tables_ptr, query_start_loc_ptr,
        seq_lens_ptr, qk_scale, v_scale, num_reqs,
        stride_q_token, stride_q_head, stride_q_dim,
        stride_out_token, stride_out_head, stride_out_dim,
        stride_cache_kv, stride_cache_block, stride_cache_slot, stride_cache_head, stride_cache_dim,
        stride_block_table,
        GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr,
        HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, BLOCK_Q: tl.constexpr,
        BLOCK_M: tl.constexpr, TILE_N: tl.constexpr, DOT_PRECISION: tl.constexpr):
    launch_dependents()     # the o_proj GEMV may start its weight prefetch (``pdl``)
    tile_id = tl.program_id(0)
    kv_head = tl.program_id(1)
    req = _find_request(query_start_loc_ptr, tile_id, num_reqs, BLOCK_Q)
    q_start = tl.load(query_start_loc_ptr + req)
    q_len = tl.load(query_start_loc_ptr + req + 1) - q_start
    q_tile_start = (tile_id - (q_start // BLOCK_Q + req)) * BLOCK_Q
    if q_tile_start >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + req)
    context_len = seq_len - q_len          # cached prefix before this step's tokens

    rows = tl.arange(0, BLOCK_M)
    q_index = q_tile_start + rows // GROUP_PAD                            # [M] within request
    head_in_group = rows % GROUP_PAD
    row_valid = (rows // GROUP_PAD < BLOCK_Q) & (q_index < q_len) & (head_in_group < GROUP)
    head = kv_head * GROUP + head_in_group
    token = (q_start + q_index).to(tl.int64)
    dims = tl.arange(0, HEAD_DIM_PAD)
    io_mask = row_valid[:, None] & (dims < HEAD_DIM)[None, :]
    q = tl.load(q_ptr + token[:, None] * stride_q_token + head[:, None] * stride_q_head
                + dims[None, :] * stride_q_dim, mask=io_mask, other=0.0)  # [M, D]

    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    # Keys up to the tile's last query position; later ones are masked for every row.
    key_end = tl.minimum(seq_len, context_len + q_tile_start + BLOCK_Q)
    acc, m_i, l_i = _attend_range(
        q, acc, m_i, l_i, context_len + q_index, 0, key_end, cache_ptr,
        block_tables_ptr + req.to(tl.int64) * stride_block_table, kv_head, qk_scale,
        stride_cache_kv, stride_cache_block, stride_cache_slot, stride_cache_head, stride_cache_dim,
        BLOCK_SIZE, HEAD_DIM, HEAD_DIM_PAD, TILE_N, DOT_PRECISION)

    out = acc * (v_scale / tl.where(l_i == 0.0, 1.0, l_i))[:, None]
    tl.store(out_ptr + token[:, None] * stride_out_token + head[:, None] * stride_out_head
             + dims[None, :] * stride_out_dim, out.to(out_ptr.dtype.element_ty), mask=io_mask)


@triton.jit
def _split_decode_kernel(
        partial_acc_ptr, partial_max_ptr, partial_sum_ptr, q_ptr, cache_ptr,
        block_tables_ptr, query_start_loc_ptr, seq_lens_ptr, qk_scale,
        out_ptr, counters_ptr, v_scale,
        stride_q_token, stride_q_head, stride_q_dim,
        stride_out_token, stride_out_head, stride_out_dim,
        stride_cache_kv, stride_cache_block, stride_cache_slot, stride_cache_head, stride_cache_dim,
        stride_block_table, num_heads, num_segments,
        GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr,
        HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, BLOCK_M: tl.constexpr,
        TILE_N: tl.constexpr, DOT_PRECISION: tl.constexpr, SEGMENTS_PAD: tl.constexpr,
        DIM_CHUNK: tl.constexpr, MERGE: tl.constexpr):
    """One (request, kv head, context segment); every request has exactly one query token.
    Partials are [num_reqs, num_heads, num_segments(, HEAD_DIM_PAD)] float32; a segment past
    the context writes the empty partial (m = -inf, l = 0, acc = 0), which no merge reads.
    MERGE: then take a ticket on the (request, kv head) counter; the program that takes the
    last one merges the segments into ``out`` and sets the counter back to 0."""
    launch_dependents()     # the o_proj GEMV may start its weight prefetch (``pdl``)
    req = tl.program_id(0)
    kv_head = tl.program_id(1)
    segment = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + req)
    segment_len = _segment_len(seq_len, num_segments, TILE_N)
    key_start = segment * segment_len
    key_end = tl.minimum(seq_len, key_start + segment_len)     # <= key_start: no keys

    rows = tl.arange(0, BLOCK_M)
    row_valid = rows < GROUP
    head = kv_head * GROUP + rows
    token = tl.load(query_start_loc_ptr + req).to(tl.int64)
    dims = tl.arange(0, HEAD_DIM_PAD)
    q = tl.load(q_ptr + token * stride_q_token + head[:, None] * stride_q_head
                + dims[None, :] * stride_q_dim,
                mask=row_valid[:, None] & (dims < HEAD_DIM)[None, :], other=0.0)  # [M, D]
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    query_pos = tl.zeros([BLOCK_M], dtype=tl.int32) + (seq_len - 1)
    acc, m_i, l_i = _attend_range(
        q, acc, m_i, l_i, query_pos, key_start, key_end, cache_ptr,
        block_tables_ptr + req.to(tl.int64) * stride_block_table, kv_head, qk_scale,
        stride_cache_kv, stride_cache_block, stride_cache_slot, stride_cache_head, stride_cache_dim,
        BLOCK_SIZE, HEAD_DIM, HEAD_DIM_PAD, TILE_N, DOT_PRECISION)

    stat_offset = (req.to(tl.int64) * num_heads + head) * num_segments + segment   # [M]
    tl.store(partial_max_ptr + stat_offset, m_i, mask=row_valid)
    tl.store(partial_sum_ptr + stat_offset, l_i, mask=row_valid)
    tl.store(partial_acc_ptr + stat_offset[:, None] * HEAD_DIM_PAD + dims[None, :], acc,
             mask=row_valid[:, None])
    if MERGE:
        # Release: every thread's partial stores precede the ticket (barrier, then the
        # atomic's release at GPU scope); acquire: the last ticket's holder sees all of them.
        tl.debug_barrier()
        counter = counters_ptr + req * tl.num_programs(1) + kv_head
        ticket = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
        tl.debug_barrier()
        if ticket == num_segments - 1:
            _merge_segments(out_ptr, partial_acc_ptr, partial_max_ptr, partial_sum_ptr, req,
                            kv_head, token, seq_len, v_scale, num_heads, num_segments,
                            stride_out_token, stride_out_head, stride_out_dim, GROUP, GROUP_PAD,
                            HEAD_DIM, HEAD_DIM_PAD, SEGMENTS_PAD, DIM_CHUNK, TILE_N)
            tl.store(counter, 0)        # ready for the next launch (a CUDA-graph replay)


@triton.jit
def _segment_len(seq_len, num_segments, TILE_N: tl.constexpr):
    """Keys per segment of one request: its own context spread over the launch's segments in
    whole tiles — sized by the request's length on the device, not by the host's bound (a
    CUDA graph captured at max_model_len's split count still splits a short context)."""
    return tl.cdiv(tl.cdiv(seq_len, num_segments), TILE_N) * TILE_N


@triton.jit
def _halve(x, ROWS: tl.constexpr, HALF: tl.constexpr):
    """[ROWS, 2 * HALF] -> [ROWS, HALF]: column j plus column j + HALF, one add each."""
    return tl.sum(tl.reshape(x, [ROWS, 2, HALF]), 1)


@triton.jit
def _tree_sum(x, ROWS: tl.constexpr, SEGMENTS: tl.constexpr, COLS: tl.constexpr):
    """x: [ROWS, SEGMENTS * COLS], SEGMENTS (a power of two <= MAX_KV_SPLITS) runs of COLS
    values -> [ROWS, COLS], their sum in a fixed pairwise tree: segment s + SEGMENTS/2 added
    to segment s, then again on the halves. Every add has two operands, so the result does
    not depend on how the compiler lays the tensor over threads (``tl.sum`` over the segment
    axis would): both merge paths give the same bits."""
    for level in tl.static_range(8):                        # 2 ** 8 = MAX_KV_SPLITS
        if SEGMENTS >= 256 >> level:
            x = _halve(x, ROWS, (128 >> level) * COLS)
    return x


@triton.jit
def _merge_segments(out_ptr, partial_acc_ptr, partial_max_ptr, partial_sum_ptr, req, kv_head,
                    token, seq_len, v_scale, num_heads, num_segments,
                    stride_out_token, stride_out_head, stride_out_dim,
                    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
                    HEAD_DIM_PAD: tl.constexpr, SEGMENTS_PAD: tl.constexpr,
                    DIM_CHUNK: tl.constexpr, TILE_N: tl.constexpr):
    """Merge the partials of one request's segments that hold context, for the query heads of
    one kv head, and store the normalised output row of each, ``DIM_CHUNK`` dims at a time
    (so that the [GROUP_PAD, SEGMENTS_PAD, DIM_CHUNK] partials fit in registers). The
    partials were written by other programs of the same launch: they are read from L2
    (``.cg``), past this SM's L1."""
    rows = tl.arange(0, GROUP_PAD)
    head = kv_head * GROUP + rows                                         # [G]
    num_used = tl.cdiv(seq_len, _segment_len(seq_len, num_segments, TILE_N))
    segments = tl.arange(0, SEGMENTS_PAD)
    used = (rows < GROUP)[:, None] & (segments < num_used)[None, :]       # [G, S]
    stat_offset = (((req.to(tl.int64) * num_heads + head) * num_segments)[:, None]
                   + segments[None, :])                                   # [G, S]
    seg_max = tl.load(partial_max_ptr + stat_offset, mask=used, other=float("-inf"),
                      cache_modifier=".cg")
    seg_sum = tl.load(partial_sum_ptr + stat_offset, mask=used, other=0.0,
                      cache_modifier=".cg")
    global_max = tl.max(seg_max, 1)                                       # [G]
    global_max = tl.where(global_max == float("-inf"), 0.0, global_max)   # padding rows
    weight = tl.where(used, tl.exp2(seg_max - global_max[:, None]), 0.0)  # [G, S]
    total = _tree_sum(seg_sum * weight, GROUP_PAD, SEGMENTS_PAD, 1)       # [G, 1]
    out_scale = v_scale / tl.where(total == 0.0, 1.0, total)              # [G, 1]
    for chunk in tl.static_range(HEAD_DIM_PAD // DIM_CHUNK):
        dims = chunk * DIM_CHUNK + tl.arange(0, DIM_CHUNK)
        seg_acc = tl.load(partial_acc_ptr + stat_offset[:, :, None] * HEAD_DIM_PAD
                          + dims[None, None, :], mask=used[:, :, None], other=0.0,
                          cache_modifier=".cg")                           # [G, S, C]
        weighted = tl.reshape(seg_acc * weight[:, :, None], [GROUP_PAD, SEGMENTS_PAD * DIM_CHUNK])
        out = _tree_sum(weighted, GROUP_PAD, SEGMENTS_PAD, DIM_CHUNK) * out_scale   # [G, C]
        tl.store(out_ptr + token * stride_out_token + head[:, None] * stride_out_head
                 + dims[None, :] * stride_out_dim, out.to(out_ptr.dtype.element_ty),
                 mask=(rows < GROUP)[:, None] & (dims < HEAD_DIM)[None, :])


@triton.jit
def _split_decode_reduce_kernel(
        out_ptr, partial_acc_ptr, partial_max_ptr, partial_sum_ptr, query_start_loc_ptr,
        seq_lens_ptr, v_scale, num_heads, num_segments,
        stride_out_token, stride_out_head, stride_out_dim,
        GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
        HEAD_DIM_PAD: tl.constexpr, SEGMENTS_PAD: tl.constexpr, DIM_CHUNK: tl.constexpr,
        TILE_N: tl.constexpr):
    """The separate merge launch (``merge_in_split_kernel=False``): one program per
    (request, kv head), the same merge as the split kernel's last program."""
    req = tl.program_id(0)
    token = tl.load(query_start_loc_ptr + req).to(tl.int64)
    _merge_segments(out_ptr, partial_acc_ptr, partial_max_ptr, partial_sum_ptr, req,
                    tl.program_id(1), token, tl.load(seq_lens_ptr + req), v_scale, num_heads,
                    num_segments, stride_out_token, stride_out_head, stride_out_dim, GROUP,
                    GROUP_PAD, HEAD_DIM, HEAD_DIM_PAD, SEGMENTS_PAD, DIM_CHUNK, TILE_N)


@functools.lru_cache(maxsize=8)
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return _DEFAULT_SM_COUNT
    return torch.cuda.get_device_properties(device).multi_processor_count


def choose_num_kv_splits(num_reqs: int, num_kv_heads: int, max_seq_len: int,
                         sm_count: int, tile_n: int = 128) -> int:
    """Segments per decode context: enough programs for about two waves over the SMs, each
    segment at least 2 key tiles long; 1 means the unified kernel (no split) is used.
    Measured on H100 (bf16, 32/8 heads, d=128, GPU time): batch 1 x 8192 keys 155 us unsplit,
    13 us in 32 segments; batch 8 x 2048 52 us -> 30 us; batch 32 x 8192 splitting loses ~2%."""
    programs = num_reqs * num_kv_heads
    if programs >= sm_count or max_seq_len < 512:
        return 1
    wanted = -(-2 * sm_count // programs)
    return max(1, min(wanted, max_seq_len // (2 * tile_n), MAX_KV_SPLITS))


def _launch_config(query: torch.Tensor, kv_cache: torch.Tensor, max_query_len: int) -> dict:
    """Compile-time sizes for one batch shape; few distinct values, so few compilations."""
    num_heads, head_dim = query.shape[1], query.shape[2]
    group = num_heads // kv_cache.shape[3]
    group_pad = triton.next_power_of_2(group)
    # Decode tiles hold one token (all rows are its group's heads); prefill tiles aim at 64 rows.
    block_q = 1 if max_query_len == 1 else max(1, 64 // group_pad)
    head_dim_pad = max(16, triton.next_power_of_2(head_dim))
    # Decode streams K/V: 128-key tiles measured ~15% faster than 64 on H100 (bf16, d=128);
    # keep a K or V tile within 32 KiB so three pipeline stages fit in shared memory.
    tile_n = (64 if block_q > 1
              else min(DECODE_TILE_N, 32768 // (head_dim_pad * query.element_size())))
    return dict(GROUP=group, GROUP_PAD=group_pad, BLOCK_SIZE=kv_cache.shape[2],
                HEAD_DIM=head_dim, HEAD_DIM_PAD=head_dim_pad,
                BLOCK_Q=block_q, BLOCK_M=max(16, block_q * group_pad), TILE_N=tile_n,
                DOT_PRECISION="ieee" if query.dtype == torch.float32 else "tf32",
                num_warps=4, num_stages=3)


def paged_attention_triton(query: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
                           query_start_loc: torch.Tensor, seq_lens: torch.Tensor, scale: float, *,
                           max_query_len: int, max_seq_len: int, num_kv_splits: int | None = None,
                           out: torch.Tensor | None = None, k_scale: float = 1.0,
                           v_scale: float = 1.0,
                           merge_in_split_kernel: bool = True) -> torch.Tensor:
    """Causal attention of a flattened batch against a paged cache that already holds the
    batch's own K/V. Reads ``kv_cache``; returns a new tensor; mutates nothing.

    query: [num_tokens, num_heads, head_dim] (float32/float16/bfloat16, same dtype as the cache,
    or an fp8 cache holding K / k_scale and V / v_scale: ``k_scale``/``v_scale`` are then
    applied on the fly and ignored for other caches);
    kv_cache: [2, num_blocks, block_size, num_kv_heads, head_dim]; block_tables: [num_reqs,
    max_blocks] int32; query_start_loc: [num_reqs + 1] int32; seq_lens: [num_reqs] int32, all on
    the query's device. Request i owns rows ``query_start_loc[i]:query_start_loc[i+1]`` (at least
    one), which sit at the last positions of its ``seq_lens[i]`` context tokens.
    ``max_query_len``/``max_seq_len`` are host-side bounds (no device sync is made).
    ``num_kv_splits``: None picks the path by a heuristic; 1 forces the unified kernel; > 1
    forces split-KV when every request decodes one token (at most ``MAX_KV_SPLITS``
    segments). ``merge_in_split_kernel``: split-KV merges its segments in the split launch
    itself (the last segment program of each request and kv head merges; no second launch);
    False keeps the separate merge launch (same bits; for benchmarks). Rows of ``query`` past
    ``query_start_loc[-1]`` (padding) are left unwritten in the output.
    ``out``: optional [num_tokens, num_heads, head_dim] tensor of the query's dtype to write
    into (the only mutation), else a new one. Returns the output.
    """
    num_tokens, num_heads, head_dim = query.shape
    num_reqs = seq_lens.shape[0]
    num_kv_heads = kv_cache.shape[3]
    fp8 = is_fp8(kv_cache.dtype)
    if num_heads % num_kv_heads or kv_cache.shape[4] != head_dim or not (
            fp8 or kv_cache.dtype == query.dtype):
        raise ValueError(f"query {tuple(query.shape)} {query.dtype} does not fit kv_cache "
                         f"{tuple(kv_cache.shape)} {kv_cache.dtype}")
    if out is None:
        out = torch.empty_like(query)
    if num_tokens == 0 or num_reqs == 0:
        return out
    config = _launch_config(query, kv_cache, max_query_len)
    if num_kv_splits is None:
        num_kv_splits = choose_num_kv_splits(num_reqs, num_kv_heads, max_seq_len,
                                             _sm_count(query.device), config["TILE_N"])
    qk_scale = scale * _LOG2_E * (float(k_scale) if fp8 else 1.0)
    v_scale = float(v_scale) if fp8 else 1.0
    if max_query_len == 1 and num_kv_splits > 1:
        _split_decode(out, query, kv_cache, block_tables, query_start_loc, seq_lens, qk_scale,
                      v_scale, max_seq_len, min(num_kv_splits, MAX_KV_SPLITS), config,
                      merge_in_split_kernel)
        return out
    grid = (num_tokens // config["BLOCK_Q"] + num_reqs, num_kv_heads)
    _paged_attention_kernel[grid](
        out, query, kv_cache, block_tables, query_start_loc, seq_lens, qk_scale, v_scale,
        num_reqs, *query.stride(), *out.stride(), *kv_cache.stride(), block_tables.stride(0),
        **config)
    return out


def _split_decode(out: torch.Tensor, query: torch.Tensor, kv_cache: torch.Tensor,
                  block_tables: torch.Tensor, query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
                  qk_scale: float, v_scale: float, max_seq_len: int, num_kv_splits: int,
                  config: dict, merge_in_split_kernel: bool) -> None:
    """Flash-decoding: each request's context split into up to ``num_kv_splits`` segments of
    whole key tiles (``_segment_len``), one program each, then a merge: by the last program of
    each (request, kv head) to finish (``merge_in_split_kernel``, one launch), or by a second
    launch. Both merge with the same code and floating-point contraction off, so they give
    the same bits. Writes ``out``."""
    num_reqs, num_heads, num_kv_heads = seq_lens.shape[0], query.shape[1], kv_cache.shape[3]
    tile_n, head_dim_pad = config["TILE_N"], config["HEAD_DIM_PAD"]
    segment_len = triton.cdiv(triton.cdiv(max_seq_len, num_kv_splits), tile_n) * tile_n
    num_segments = triton.cdiv(max_seq_len, segment_len)   # the longest context's segments
    partial_acc = torch.empty(num_reqs, num_heads, num_segments, head_dim_pad,
                              dtype=torch.float32, device=query.device)
    # [2, num_reqs, num_heads, num_segments]: running max, running sum
    partial_max, partial_sum = torch.empty(2, num_reqs, num_heads, num_segments,
                                           dtype=torch.float32, device=query.device)
    segments_pad = triton.next_power_of_2(num_segments)
    dim_chunk = MERGE_MAX_VALUES // (config["GROUP_PAD"] * segments_pad)
    merge_config = dict(GROUP=config["GROUP"], GROUP_PAD=config["GROUP_PAD"],
                        HEAD_DIM=config["HEAD_DIM"], HEAD_DIM_PAD=head_dim_pad,
                        SEGMENTS_PAD=segments_pad, DIM_CHUNK=max(1, min(head_dim_pad, dim_chunk)),
                        TILE_N=tile_n, num_warps=4, enable_fp_fusion=False)
    decode_config = {key: value for key, value in config.items()
                     if key not in ("BLOCK_Q", "BLOCK_M")} | merge_config
    counters = (_ticket_counters(query.device, num_reqs * num_kv_heads) if merge_in_split_kernel
                else None)
    _split_decode_kernel[(num_reqs, num_kv_heads, num_segments)](
        partial_acc, partial_max, partial_sum, query, kv_cache, block_tables,
        query_start_loc, seq_lens, qk_scale, out, counters, v_scale, *query.stride(),
        *out.stride(), *kv_cache.stride(), block_tables.stride(0), num_heads, num_segments,
        **decode_config, BLOCK_M=max(16, config["GROUP_PAD"]), MERGE=merge_in_split_kernel)
    if not merge_in_split_kernel:
        _split_decode_reduce_kernel[(num_reqs, num_kv_heads)](
            out, partial_acc, partial_max, partial_sum, query_start_loc, seq_lens, v_scale,
            num_heads, num_segments, *out.stride(), **merge_config)


_TICKET_COUNTERS: dict[tuple[torch.device, int], torch.Tensor] = {}


def _ticket_counters(device: torch.device, num_counters: int) -> torch.Tensor:
    """Zeroed int32 counters, at least ``num_counters``, one per (request, kv head) of a
    split-KV launch; every launch leaves them at 0 again. One buffer per device and
    power-of-two size, allocated and zeroed once, kept for the process's life: a captured
    CUDA graph holds its address. Launches that share a buffer must not run concurrently
    (they run in stream order, one layer after another)."""
    size = triton.next_power_of_2(max(num_counters, 256))
    counters = _TICKET_COUNTERS.get((device, size))
    if counters is None:
        counters = torch.zeros(size, dtype=torch.int32, device=device)
        _TICKET_COUNTERS[device, size] = counters
    return counters
