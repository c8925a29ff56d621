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
                       top_p: torch.Tensor | None) -> torch.Tensor:
    """Mask (set to -inf) tokens outside each row's top-k and then outside its nucleus.

    logits: [B, V]; top_k: [B] int64, 0 = off; top_p: [B] float32, 1.0 = off. One ascending
    sort serves both. Top-k keeps every token tied with the k-th largest logit. Top-p keeps
    the smallest set of most likely tokens whose probability (after top-k) reaches top_p, and
    always the most likely token.
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


def exponential_race(probs: torch.Tensor, generators: dict[int, torch.Generator]) -> torch.Tensor:
    """Sample one token per row from ``probs`` without a host sync.

    argmax(p_i / q_i) with q_i ~ Exp(1) picks token i with probability p_i / sum(p), so rows
    need not be normalised. A row in ``generators`` draws its q from its own generator only,
    so a seeded request gets the same token whatever else is in the batch and wherever its
    row sits; the other rows share one draw from the default generator.

    probs: [B, V] float; returns [B] int64. Each generator advances by one draw of V values.
    """
    batch_size = probs.shape[0]
    noise = torch.empty_like(probs)  # [B, V]
    if len(generators) < batch_size:
        noise.exponential_()
    for row, generator in generators.items():
        noise[row].exponential_(generator=generator)
    # Exp(1) can round to 0.0; 0/0 would be NaN and win the argmax.
    noise.clamp_min_(torch.finfo(noise.dtype).tiny)
    return probs.div(noise).argmax(dim=-1)


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
