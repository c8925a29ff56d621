"""Greedy references from HF transformers on the same weights (fp32)."""

from __future__ import annotations

import torch


@torch.inference_mode()
def hf_greedy(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Plain greedy decoding with HF's KV cache; EOS does not stop it (like ignore_eos)."""
    input_ids = torch.tensor([prompt_ids])
    out = model(input_ids, use_cache=True)
    past, generated = out.past_key_values, []
    for _ in range(max_new_tokens):
        token = int(out.logits[0, -1].argmax())
        generated.append(token)
        out = model(torch.tensor([[token]]), past_key_values=past, use_cache=True)
        past = out.past_key_values
    return generated


@torch.inference_mode()
def hf_prompt_logprobs(model, token_ids: list[int]) -> torch.Tensor:
    """log p(token[i+1] | tokens[:i+1]) for every i: [len - 1] float32."""
    logits = model(torch.tensor([token_ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return logprobs[:-1].gather(1, torch.tensor(token_ids[1:])[:, None])[:, 0]
