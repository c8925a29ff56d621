"""Sampler: one step's logits → one token per row, on the device, without a host sync.

Order (vLLM V1): raw log-probs are taken first (of the model's own distribution); then logit
bias, the min-tokens mask and the penalties shape the logits; greedy rows take the argmax;
random rows are divided by their temperature, cut by top-k, top-p and min-p (no vocabulary
sort: ``torch.topk`` and a radix select), and sampled by one uniform draw per row against
the row's cumulative probabilities.

Seeded requests: the model runner owns ``SamplingMetadata.generators``. It creates
``torch.Generator(device).manual_seed(seed)`` once when a seeded request joins the batch and
keeps that object until the request finishes, passing it under the request's current row
index every step the request samples. The sampler advances each passed generator by one draw
per step and touches nothing else, so a seeded request's tokens depend only on its seed and
its own logits, never on the rest of the batch or on row order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pagellm.ops.sampling import (
    SAMPLING_EPS,
    apply_logit_bias_,
    apply_min_p_,
    apply_min_tokens_mask_,
    apply_penalties_,
    apply_temperature_,
    apply_top_k_top_p_,
    compute_logprobs_topk,
    inverse_cdf_sample,
    sampling_probs,
)


@dataclass(slots=True)
class SamplingMetadata:
    """One row per request that samples this step. Tensors live on the logits' device."""

    temperature: torch.Tensor    # [B] float32; 0.0 = greedy row
    all_greedy: bool             # every row greedy (skip the random path)
    all_random: bool             # no row greedy (skip the argmax)
    top_k: torch.Tensor | None   # [B] int64; 0 = off (None when no row uses it)
    top_p: torch.Tensor | None   # [B] float32; 1.0 = off
    min_p: torch.Tensor | None   # [B] float32; 0.0 = off
    generators: dict[int, torch.Generator]   # row -> per-request generator (seeded rows only)
    presence_penalties: torch.Tensor | None  # [B] float32 (None when no row uses penalties)
    frequency_penalties: torch.Tensor | None  # [B]
    repetition_penalties: torch.Tensor | None  # [B]
    prompt_token_ids: torch.Tensor | None    # [B, max_prompt_len] int64, padded with vocab_size
    output_token_ids: list[list[int]]        # per row, tokens generated so far (for penalties)
    logit_bias: list[dict[int, float] | None]  # per row
    min_tokens_mask: list[tuple[int, list[int]]]  # (row, EOS + stop ids) while output < min_tokens
    max_num_logprobs: int | None             # largest `logprobs` among rows; None = not needed
    max_top_k: int | None = None             # largest top_k among rows, from the host (None: read
                                             # it from top_k, a host sync on CUDA)


@dataclass(slots=True)
class SamplerOutput:
    """Everything stays on the device; the runner copies it to the host once per step."""

    sampled_token_ids: torch.Tensor           # [B] int64
    logprob_token_ids: torch.Tensor | None    # [B, max_num_logprobs + 1] int64: col 0 = sampled
    logprobs: torch.Tensor | None             # [B, max_num_logprobs + 1] float32, matching ids
    sampled_token_ranks: torch.Tensor | None  # [B] int64: rank of the sampled token (1 = top)


class Sampler(nn.Module):
    """Stateless; ``forward`` may modify ``logits`` in place and advances the generators."""

    def forward(self, logits: torch.Tensor, metadata: SamplingMetadata) -> SamplerOutput:
        # logits: [B, V]
        raw_logprobs = None
        if metadata.max_num_logprobs is not None:
            raw_logprobs = logits.log_softmax(dim=-1, dtype=torch.float32)  # [B, V]
        logits = logits.to(torch.float32)
        apply_logit_bias_(logits, metadata.logit_bias)
        apply_min_tokens_mask_(logits, metadata.min_tokens_mask)
        apply_penalties_(logits, metadata.prompt_token_ids, metadata.output_token_ids,
                         metadata.presence_penalties, metadata.frequency_penalties,
                         metadata.repetition_penalties)
        sampled = self.sample(logits, metadata)  # [B]
        if raw_logprobs is None:
            return SamplerOutput(sampled, None, None, None)
        ids, vals, ranks = compute_logprobs_topk(raw_logprobs, sampled, metadata.max_num_logprobs)
        return SamplerOutput(sampled, ids, vals, ranks)

    @staticmethod
    def sample(logits: torch.Tensor, metadata: SamplingMetadata) -> torch.Tensor:
        """Greedy rows: argmax. Random rows: temperature, top-k, top-p, min-p, then a draw.

        logits: [B, V] float32, modified in place. Returns [B] int64.
        """
        greedy = None if metadata.all_random else logits.argmax(dim=-1)  # [B]
        if metadata.all_greedy:
            return greedy
        apply_temperature_(logits, metadata.temperature)
        apply_top_k_top_p_(logits, metadata.top_k, metadata.top_p, metadata.max_top_k)
        probs = sampling_probs(logits)  # [B, V], up to a factor per row
        if metadata.min_p is not None:
            apply_min_p_(probs, metadata.min_p)
        sampled = inverse_cdf_sample(probs, metadata.generators)  # [B]
        if greedy is None:
            return sampled
        return torch.where(metadata.temperature < SAMPLING_EPS, greedy, sampled)
