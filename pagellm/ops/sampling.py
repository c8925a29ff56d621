"""Sampling kernels in pure torch: the same code runs on CPU and CUDA.

Every function works on a batch of rows, one row per request that samples this step, and
launches a fixed number of kernels; Python loops run only over the sparse per-request lists
(logit bias, min-tokens masks, seeded generators). Nothing here copies device data to the
host: lists coming from the host travel through pinned memory with ``non_blocking=True``.

Functions whose name ends in ``_`` modify their first argument in place and return it.
"""

from __future__ import annotations

import torch

# Temperatures below this are greedy (matches SamplingParams' greedy normalisation).
SAMPLING_EPS = 1e-5


def host_to_device(data: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A host list as a device tensor without blocking the host: pinned + non_blocking on CUDA.

    The caching host allocator keeps the pinned buffer alive until the copy has run."""
    tensor = torch.tensor(data, dtype=dtype)
    if device.type == "cpu":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def pad_rows(rows: list[list[int]], pad_id: int, device: torch.device) -> torch.Tensor:
    """Ragged token-id lists as one ``[len(rows), max_len]`` int64 tensor padded with pad_id."""
    max_len = max((len(row) for row in rows), default=0)
    padded = [row + [pad_id] * (max_len - len(row)) for row in rows]
    if not padded:
        return torch.empty((0, 0), dtype=torch.int64, device=device)
    return host_to_device(padded, torch.int64, device)  # [num_rows, max_len]


def apply_logit_bias_(logits: torch.Tensor, logit_bias: list[dict[int, float] | None]) -> torch.Tensor:
    """Add each row's bias to its tokens' logits.

    logits: [B, V]. logit_bias: one entry per row, None = no bias. Token ids must be in
    [0, V): the input processor checks them against the vocabulary.
    """
    rows: list[int] = []
    token_ids: list[int] = []
    biases: list[float] = []
    for row, bias in enumerate(logit_bias):
        if not bias:
            continue
        rows.extend([row] * len(bias))
        token_ids.extend(bias.keys())
        biases.extend(bias.values())
    if not rows:
        return logits
    vocab_size = logits.shape[-1]
    assert all(0 <= token_id < vocab_size for token_id in token_ids), \
        f"logit_bias token id outside [0, {vocab_size}); the input processor must reject it"
    device = logits.device
    index = (host_to_device(rows, torch.int64, device), host_to_device(token_ids, torch.int64, device))
    return logits.index_put_(index, host_to_device(biases, logits.dtype, device), accumulate=True)


def apply_min_tokens_mask_(logits: torch.Tensor, min_tokens_mask: list[tuple[int, list[int]]]) -> torch.Tensor:
    """Forbid (set to -inf) the listed tokens of the listed rows: EOS and stop ids of requests
    that have not yet produced ``min_tokens`` tokens.

    logits: [B, V]. Ids >= V are skipped: such a token can never be sampled anyway.
    A row whose every other token is already -inf (a structured-outputs grammar that can only
    end here, or a logit_bias) keeps its stop tokens: min_tokens cannot be honoured there, and
    an all -inf row would sample an arbitrary token that breaks the grammar (vLLM does that);
    the request ends with "stop" with the grammar's valid output instead.
    """
    vocab_size = logits.shape[-1]
    rows: list[int] = []
    token_ids: list[int] = []
    for row, forbidden in min_tokens_mask:
        kept = [token_id for token_id in forbidden if 0 <= token_id < vocab_size]
        rows.extend([row] * len(kept))
        token_ids.extend(kept)
    if not rows:
        return logits
    device = logits.device
    index = (host_to_device(rows, torch.int64, device), host_to_device(token_ids, torch.int64, device))
    saved = logits[index]
    # new_full fills on the device; torch.tensor(value, device=cuda) would block the host.
    logits.index_put_(index, logits.new_full((len(rows),), float("-inf")))
    dead = torch.isneginf(logits.amax(dim=-1))                   # [B]: no token left
    return logits.index_put_(index, torch.where(dead[index[0]], saved, logits[index]))


def token_counts(token_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """How often each token occurs in each row.

    token_ids: [B, L] int64, padded with vocab_size. Returns [B, V] int64.
    """
    batch_size = token_ids.shape[0]
    counts = torch.zeros((batch_size, vocab_size + 1), dtype=torch.int64, device=token_ids.device)
    counts.scatter_add_(1, token_ids, torch.ones_like(token_ids))  # [B, V + 1]; last column = padding
    return counts[:, :vocab_size]


def apply_penalties_(
    logits: torch.Tensor,
    prompt_token_ids: torch.Tensor | None,
    output_token_ids: list[list[int]],
    presence_penalties: torch.Tensor | None,
    frequency_penalties: torch.Tensor | None,
    repetition_penalties: torch.Tensor | None,
) -> torch.Tensor:
    """vLLM's three penalties, in place.

    logits: [B, V]; prompt_token_ids: [B, P] int64 padded with V (None = no prompt tokens);
    output_token_ids: B lists of tokens generated so far; penalties: [B] float32 or None.
    repetition: a token seen in prompt or output has its logit divided by the penalty when
    positive, multiplied when negative. frequency: minus penalty × its count in the output.
    presence: minus penalty once if it occurs in the output.
    """
    if presence_penalties is None and frequency_penalties is None and repetition_penalties is None:
        return logits
    batch_size, vocab_size = logits.shape
    output_counts = token_counts(pad_rows(output_token_ids, vocab_size, logits.device), vocab_size)  # [B, V]
    output_mask = output_counts > 0  # [B, V]
    if repetition_penalties is not None:
        seen = output_mask
        if prompt_token_ids is not None:
            seen = seen | (token_counts(prompt_token_ids, vocab_size) > 0)  # [B, V]
        penalties = torch.where(seen, repetition_penalties.unsqueeze(1), 1.0)  # [B, V]
        scaled = torch.where(logits > 0, logits / penalties, logits * penalties)  # [B, V]
        logits.copy_(scaled)
    if frequency_penalties is not None:
        logits.sub_(frequency_penalties.unsqueeze(1) * output_counts)
    if presence_penalties is not None:
        logits.sub_(presence_penalties.unsqueeze(1) * output_mask)
    return logits


def apply_temperature_(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Divide each row by its temperature; greedy rows (temperature 0) are left alone.

    logits: [B, V]; temperature: [B] float32.
    """
    safe_temperature = torch.where(temperature < SAMPLING_EPS, 1.0, temperature)  # [B]
    return logits.div_(safe_temperature.unsqueeze(1).to(logits.dtype))


def apply_top_k_top_p_(logits: torch.Tensor, top_k: torch.Tensor | None,
                       top_p: torch.Tensor | None, max_top_k: int | None = None) -> torch.Tensor:
    """Mask (set to -inf) tokens outside each row's top-k and then outside its nucleus,
    without sorting the vocabulary.

    logits: [B, V] float32; top_k: [B] int64, 0 = off; top_p: [B] float32, 1.0 = off;
    max_top_k: the largest top_k of the batch, known on the host (None = read it from top_k,
    a host sync on CUDA). Top-k takes ``torch.topk`` of max_top_k columns and keeps every
    token at least as large as the row's k-th largest logit (ties with it are all kept). Top-p
    keeps the tokens whose probability (after top-k) is at least a per-row threshold found by
    :func:`top_p_threshold`: the same set as the sorted reference
    :func:`apply_top_k_top_p_sorted_`, except that a tie straddling the nucleus boundary is
    kept whole (the sorted version keeps an arbitrary part of it). Fixed kernel count, no
    host sync when max_top_k is given.
    """
    if top_k is not None:
        apply_top_k_(logits, top_k, max_top_k)
    if top_p is not None:
        probs = logits.softmax(dim=-1)  # [B, V]
        threshold = top_p_threshold(probs, top_p)  # [B, 1]
        logits.masked_fill_(probs < threshold, float("-inf"))
    return logits


def apply_top_k_(logits: torch.Tensor, top_k: torch.Tensor, max_top_k: int | None) -> torch.Tensor:
    """Keep each row's tokens at least as large as its k-th largest logit (ties kept).

    logits: [B, V]; top_k: [B] int64, 0 or >= V = off; max_top_k: max of top_k on the host."""
    vocab_size = logits.shape[-1]
    if max_top_k is None:
        max_top_k = int(top_k.max())
    if max_top_k <= 0:
        return logits
    k = torch.where(top_k <= 0, vocab_size, top_k.clamp(max=vocab_size))  # [B]
    if max_top_k >= vocab_size:
        # Some row keeps the whole vocabulary: topk would be a full sort; mask only the others.
        kth_largest = _kth_largest_by_sort(logits, k) if bool((k < vocab_size).any()) else None
    else:
        top_values = logits.topk(max_top_k, dim=-1, sorted=True).values  # [B, max_top_k]
        kth_largest = top_values.gather(1, (k.clamp(max=max_top_k) - 1).unsqueeze(1))  # [B, 1]
        kth_largest = torch.where((k >= vocab_size).unsqueeze(1), float("-inf"), kth_largest)
    if kth_largest is not None:
        logits.masked_fill_(logits < kth_largest, float("-inf"))
    return logits


def _kth_largest_by_sort(logits: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """[B, 1]: the k-th largest logit of each row via a sort (rare: mixed off/very large k)."""
    vocab_size = logits.shape[-1]
    sorted_logits = logits.sort(dim=-1).values  # [B, V] ascending
    return sorted_logits.gather(1, (vocab_size - k).unsqueeze(1))  # [B, 1]


# Radix passes over a non-negative float32's bit pattern (31 bits: sign is 0): high bits first.
_RADIX_PASSES = ((20, 11), (9, 11), (0, 9))  # (shift, width)


def top_p_threshold(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Per row, the smallest probability the nucleus keeps: keep token i iff probs[i] >= it.

    probs: [B, V] float32 >= 0 (need not be normalised); top_p: [B] float32 in (0, 1],
    1.0 = keep all. Returns [B, 1] float32.

    Token i is kept iff the mass of tokens strictly more likely than it is below top_p × the
    row's total (that is the sorted reference's rule with ties kept whole). That mass only
    falls as probs[i] grows, so the kept set is {probs >= t} and t is found exactly by a radix
    select on the bits of the non-negative float32 values (their integer order is their float
    order): three passes of 11, 11 and 9 bits, each one histogram of mass per bucket
    (scatter_add) over the candidates of the previous pass. Fixed kernel count, no sort, no
    host sync.
    """
    batch_size = probs.shape[0]
    bits = probs.contiguous().view(torch.int32)  # [B, V]
    target = top_p * probs.sum(dim=-1)  # [B]
    target = torch.where(top_p >= 1.0, float("inf"), target).unsqueeze(1)  # [B, 1]
    mass_above = probs.new_zeros((batch_size, 1))  # [B, 1]: mass of tokens above the prefix
    prefix = torch.zeros((batch_size, 1), dtype=torch.int32, device=probs.device)  # [B, 1]
    for shift, width in _RADIX_PASSES:
        num_buckets = 1 << width
        bucket = (bits >> shift) & (num_buckets - 1)  # [B, V]
        in_prefix = (bits >> (shift + width)) == prefix  # [B, V]
        bucket = torch.where(in_prefix, bucket, num_buckets).to(torch.int64)  # out of prefix: spare
        mass = probs.new_zeros((batch_size, num_buckets + 1)).scatter_add_(1, bucket, probs)
        # Mass strictly above each bucket: a suffix sum, shifted by one bucket.
        above = mass[:, :num_buckets].flip(-1).cumsum(-1).flip(-1)  # [B, nb], inclusive
        above = torch.cat([above[:, 1:], above.new_zeros((batch_size, 1))], dim=-1) + mass_above
        # Buckets whose tokens all have too much mass above them are dropped; they are the
        # lowest ones, so their count is the boundary bucket.
        boundary = (above >= target).sum(dim=-1, keepdim=True)  # [B, 1]
        mass_above = above.gather(1, boundary.clamp(max=num_buckets - 1))
        prefix = (prefix << width) | boundary.to(torch.int32)
    return prefix.view(torch.float32)  # [B, 1]


def apply_top_k_top_p_sorted_(logits: torch.Tensor, top_k: torch.Tensor | None,
                              top_p: torch.Tensor | None) -> torch.Tensor:
    """Reference for :func:`apply_top_k_top_p_` (the test oracle; one full-vocabulary sort).

    logits: [B, V]; top_k: [B] int64, 0 = off; top_p: [B] float32, 1.0 = off. Top-k keeps
    every token tied with the k-th largest logit. Top-p keeps the smallest set of most likely
    tokens whose probability (after top-k) reaches top_p, and always the most likely token.
    """
    if top_k is None and top_p is None:
        return logits
    vocab_size = logits.shape[-1]
    sorted_logits, sorted_index = logits.sort(dim=-1, descending=False)  # [B, V] each
    if top_k is not None:
        k = torch.where(top_k <= 0, vocab_size, top_k.clamp(max=vocab_size))  # [B]
        kth_largest = sorted_logits.gather(1, (vocab_size - k).unsqueeze(1))  # [B, 1]
        sorted_logits.masked_fill_(sorted_logits < kth_largest, float("-inf"))
    if top_p is not None:
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)  # [B, V], ascending probs
        # Drop the longest low-probability tail whose mass stays within 1 - top_p.
        tail = cumulative <= (1.0 - top_p).unsqueeze(1)  # [B, V]
        tail[:, -1] = False
        sorted_logits.masked_fill_(tail, float("-inf"))
    return logits.scatter_(1, sorted_index, sorted_logits)


def apply_min_p_(probs: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Zero the probability of tokens below min_p × the row's top probability.

    probs: [B, V] (need not be normalised); min_p: [B] float32, 0.0 = off.
    """
    threshold = probs.amax(dim=-1, keepdim=True) * min_p.unsqueeze(1)  # [B, 1]
    return probs.masked_fill_(probs < threshold, 0.0)


SOFTMAX_ROWS_MIN = 16
"""On CUDA, batches with fewer rows take ``sampling_probs``' multi-block path: torch's softmax
runs one thread block per row, and one row of a 128k vocabulary took 33.6 µs of an H200
(W1 decode profile, benchmarks/RESULTS.md, session 10)."""


def sampling_probs(logits: torch.Tensor) -> torch.Tensor:
    """Probabilities for ``inverse_cdf_sample`` and ``apply_min_p_``, which need them only up
    to a positive factor per row: softmax, or on CUDA below SOFTMAX_ROWS_MIN rows
    exp(logits - row max), whose max and exponential spread over many thread blocks.

    logits: [B, V] float32 (-inf for masked tokens; every row has a finite entry). Returns
    [B, V] float32, non-negative, the row's largest entry 1 on the second path."""
    if logits.is_cuda and logits.shape[0] < SOFTMAX_ROWS_MIN:
        return shifted_exp(logits)
    return logits.softmax(dim=-1)


def shifted_exp(logits: torch.Tensor) -> torch.Tensor:
    """exp(logits - row max): [B, V] float32 -> [B, V], the softmax times its row's sum."""
    return (logits - logits.amax(dim=-1, keepdim=True)).exp_()


def inverse_cdf_sample(probs: torch.Tensor, generators: dict[int, torch.Generator]) -> torch.Tensor:
    """Sample one token per row from ``probs`` with one uniform draw per row, without a host sync.

    The row's cumulative sum (float64, so a token's interval keeps its width to ~1e-16 of the
    total) is searched for u × total with u ~ U[0, 1): token i is picked with probability
    probs[i] / sum(probs), so rows need not be normalised, and zero-probability tokens are
    never picked. A row in ``generators`` draws its u from its own generator only, so a seeded
    request gets the same token whatever else is in the batch and wherever its row sits; the
    other rows share one draw of B values from the default generator. This replaces the
    exponential race (one Exp(1) draw per vocabulary entry: 60 ms for 64 × 49152 on a 2-core
    CPU, against 3 ms here).

    probs: [B, V] float, non-negative, each row with positive sum; returns [B] int64 (never a
    zero-probability token). Each generator advances by one float64 draw.
    """
    batch_size, vocab_size = probs.shape
    cumulative = probs.to(torch.float64).cumsum(dim=-1)  # [B, V]
    uniform = torch.rand((batch_size, 1), dtype=torch.float64, device=probs.device)  # [B, 1]
    for row, generator in generators.items():
        uniform[row] = torch.rand((1,), dtype=torch.float64, device=probs.device, generator=generator)
    total = cumulative[:, -1:]  # [B, 1]
    # u × total can round up to the total (u within 2^-53 of 1); kept strictly below it, the
    # first cumulative sum above the point is a strict increase, i.e. a token of positive
    # probability, and it exists (the total). No argmax fallback: at batch 1 over a 128k
    # vocabulary that single-row reduction cost 27 µs a step on an H200 (RESULTS.md, session 8).
    point = torch.minimum(uniform * total, torch.nextafter(total, torch.zeros_like(total)))
    token_ids = torch.searchsorted(cumulative, point, right=True)  # [B, 1]
    return token_ids.squeeze(1)


def compute_logprobs_topk(logprobs: torch.Tensor, token_ids: torch.Tensor,
                          num_logprobs: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The chosen token's log-prob and rank plus the top ``num_logprobs`` alternatives.

    logprobs: [N, V] float32 log-probabilities; token_ids: [N] chosen (sampled or prompt)
    tokens; num_logprobs <= V. Returns ids [N, k + 1] int64 and vals [N, k + 1] float32 with
    column 0 = the chosen token and columns 1.. = the top k by descending log-prob, and
    ranks [N] int64: the number of tokens at least as likely as the chosen one (1 = top).
    """
    top_vals, top_ids = logprobs.topk(num_logprobs, dim=-1)  # [N, k] each
    chosen_ids = token_ids.to(torch.int64).unsqueeze(-1)  # [N, 1]
    chosen_vals = logprobs.gather(-1, chosen_ids)  # [N, 1]
    ranks = (logprobs >= chosen_vals).sum(dim=-1)  # [N]
    ids = torch.cat([chosen_ids, top_ids], dim=-1)  # [N, k + 1]
    vals = torch.cat([chosen_vals, top_vals], dim=-1).to(torch.float32)  # [N, k + 1]
    return ids, vals, ranks
