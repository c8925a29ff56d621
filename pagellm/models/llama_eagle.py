"""EAGLE-1 and EAGLE-3 draft heads over a Llama-family target, in their Hugging Face formats.

EAGLE-1 (as yuhuili/EAGLE-LLaMA3-Instruct-8B): a Llama config with one (or a few) decoder
layers; ``fc.weight`` [hidden, 2 * hidden] (``fc.bias`` when the checkpoint has one) maps
concat(token embedding, target hidden state) to the layer input; ``layers.{i}.*`` are Llama
decoder layers, layer 0 without its input RMSNorm; there is no final norm: the logits are the
LM head of ``hidden + residual``, which is also the hidden state fed to the next draft step.
The target hidden state is the target model's output, after its final norm (what the target's
LM head sees), as in vLLM and the EAGLE reference code.

EAGLE-3 (as yuhuili/EAGLE3-LLaMA3.1-Instruct-8B): ``fc.weight`` [hidden, 3 * target hidden]
combines three target hidden states taken before the target's layers
``eagle_aux_hidden_state_layer_ids`` (the head config's ``eagle_config``; vLLM's default
(2, num_layers // 2, num_layers - 3)); one decoder layer ``midlayer.*`` whose attention takes
concat(input_layernorm(embedding), hidden_norm(hidden)) ([T, 2 * hidden]), ``norm`` and
``lm_head`` over ``draft_vocab_size`` tokens, ``d2t`` [draft_vocab_size] mapping a draft id
d to the target id d + d2t[d] (``t2d`` is not needed). The logits come from
``norm(hidden, residual)``; the next draft step is fed the pre-norm sum.

``embed_tokens`` / ``lm_head`` absent from a checkpoint are the target's (shared, not
copied). The heads run against their own paged KV cache (one tensor per head layer) with the
target's block tables (see ``pagellm.worker.eagle_proposer``).
"""

from __future__ import annotations

import torch
from torch import nn

from pagellm.layers.attention import AttentionBackend
from pagellm.layers.attention_metadata import AttentionMetadata
from pagellm.layers.linear import QKVParallelLinear, ReplicatedLinear
from pagellm.layers.norm import RMSNorm
from pagellm.layers.rotary import RotaryEmbedding, rope_settings
from pagellm.layers.vocab_parallel_embedding import (LogitsProcessor, ParallelLMHead,
                                                     VocabParallelEmbedding)
from pagellm.models.llama import LlamaDecoderLayer, LlamaForCausalLM, head_dim_of


class Shared:
    """A module of the target model that a head uses without owning it: not registered as a
    submodule, so its weights are neither loaded again nor counted twice."""

    def __init__(self, module: nn.Module):
        self.module = module


class _EagleHeadBase(nn.Module):
    """What both heads share: the shared-or-own embedding and LM head, the greedy draft."""

    stacked_params_mapping = LlamaForCausalLM.stacked_params_mapping

    def _init_vocab(self, config, vocab_size: int, dtype: torch.dtype, target: nn.Module,
                    own_embed: bool, own_lm_head: bool) -> None:
        self.embed_tokens = (VocabParallelEmbedding(config.vocab_size, config.hidden_size, dtype)
                             if own_embed else None)
        self.shared_embed = None if own_embed else Shared(target.model.embed_tokens)
        self.lm_head = ParallelLMHead(vocab_size, config.hidden_size, dtype) if own_lm_head else None
        self.shared_lm_head = None if own_lm_head else Shared(target.lm_head)
        self.logits_processor = LogitsProcessor(vocab_size)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[T] token ids -> [T, hidden] embeddings."""
        embed = self.embed_tokens if self.embed_tokens is not None else self.shared_embed.module
        return embed(input_ids)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[n, hidden] -> float32 logits [n, head vocab]."""
        lm_head = self.lm_head if self.lm_head is not None else self.shared_lm_head.module
        return self.logits_processor(lm_head, hidden)

    def greedy_token_ids(self, hidden: torch.Tensor) -> torch.Tensor:
        """[n, hidden] -> [n] int64 target token ids of the argmax draft tokens."""
        return self.compute_logits(hidden).argmax(dim=-1)

    @property
    def kv_layout(self) -> tuple[int, int, int]:
        """(layers, KV heads per layer on this rank, head_dim) of the head's KV cache."""
        attn = self.attention_layers()[0]
        return len(self.attention_layers()), attn.num_kv_heads, attn.head_dim


class EagleLlamaHead(_EagleHeadBase):
    """EAGLE-1 head (see the module docstring)."""

    def __init__(self, config, target: nn.Module, dtype: torch.dtype,
                 attn_backend: AttentionBackend, fc_bias: bool = False, own_embed: bool = False,
                 own_lm_head: bool = False):
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        rope_theta, rope_scaling = rope_settings(config)
        rotary = RotaryEmbedding(head_dim_of(config), config.max_position_embeddings, rope_theta,
                                 rope_scaling)
        self.fc = ReplicatedLinear(2 * hidden, hidden, bias=fc_bias, params_dtype=dtype)
        attention_bias = bool(getattr(config, "attention_bias", False))
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, rotary, attn_backend, attention_bias, attention_bias, False,
                              dtype, prefix=f"layers.{i}")
            for i in range(config.num_hidden_layers))
        self.layers[0].input_layernorm = nn.Identity()   # EAGLE-1 has none in layer 0
        self._init_vocab(config, config.vocab_size, dtype, target, own_embed, own_lm_head)

    def attention_layers(self) -> list[nn.Module]:
        return [layer.self_attn.attn for layer in self.layers]

    def combine_hidden_states(self, target_hidden: torch.Tensor,
                              aux_hidden: list[torch.Tensor]) -> torch.Tensor:
        """The head's input hidden state: the target's output itself ([T, hidden])."""
        return target_hidden

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, hidden: torch.Tensor,
                kv_caches: list[torch.Tensor], attn_metadata: AttentionMetadata
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids, positions: [T] (the token AFTER each position's hidden state);
        hidden: [T, hidden]. Writes the step's K/V into kv_caches. Returns (hidden for the
        logits, hidden for the next draft step), both [T, hidden] (the same tensor here)."""
        hidden = self.fc(torch.cat([self.embed(input_ids), hidden], dim=-1))   # [T, hidden]
        residual = None
        for layer, kv_cache in zip(self.layers, kv_caches):
            hidden, residual = layer(positions, hidden, residual, kv_cache, attn_metadata)
        hidden = hidden + residual
        return hidden, hidden


class Eagle3DecoderLayer(LlamaDecoderLayer):
    """EAGLE-3's ``midlayer``: attention over concat(normed embedding, normed hidden)."""

    def __init__(self, config, rotary, backend, dtype):
        attention_bias = bool(getattr(config, "attention_bias", False))
        super().__init__(config, rotary, backend, attention_bias, attention_bias, False, dtype,
                         prefix="midlayer")
        attn = self.self_attn
        attn.qkv_proj = QKVParallelLinear(2 * config.hidden_size, attn.head_dim,
                                          config.num_attention_heads, config.num_key_value_heads,
                                          bias=attention_bias, params_dtype=dtype,
                                          prefix="midlayer.self_attn.qkv_proj")
        self.hidden_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)

    def forward(self, positions, embeds, hidden, kv_cache, attn_metadata):
        """embeds, hidden: [T, hidden]. Returns (mlp output, residual), both [T, hidden]."""
        residual = hidden
        hidden = torch.cat([self.input_layernorm(embeds), self.hidden_norm(hidden)], dim=-1)
        hidden = self.self_attn(positions, hidden, kv_cache, attn_metadata)   # [T, hidden]
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class Eagle3LlamaHead(_EagleHeadBase):
    """EAGLE-3 head (see the module docstring)."""

    def __init__(self, config, target: nn.Module, dtype: torch.dtype,
                 attn_backend: AttentionBackend, num_aux_layers: int = 3,
                 own_embed: bool = False, own_lm_head: bool = True):
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        target_hidden = getattr(config, "target_hidden_size", None) or hidden
        self.draft_vocab_size = getattr(config, "draft_vocab_size", None) or config.vocab_size
        rope_theta, rope_scaling = rope_settings(config)
        rotary = RotaryEmbedding(head_dim_of(config), config.max_position_embeddings, rope_theta,
                                 rope_scaling)
        self.fc = ReplicatedLinear(num_aux_layers * target_hidden, hidden, bias=False,
                                   params_dtype=dtype)
        self.midlayer = Eagle3DecoderLayer(config, rotary, attn_backend, dtype)
        self.norm = RMSNorm(hidden, config.rms_norm_eps, dtype)
        self._init_vocab(config, self.draft_vocab_size, dtype, target, own_embed, own_lm_head)
        self.register_buffer("d2t", torch.zeros(self.draft_vocab_size, dtype=torch.int64))
        """Draft id d is target id d + d2t[d] (zeros: the same vocabulary)."""

    def attention_layers(self) -> list[nn.Module]:
        return [self.midlayer.self_attn.attn]

    def combine_hidden_states(self, target_hidden: torch.Tensor,
                              aux_hidden: list[torch.Tensor]) -> torch.Tensor:
        """fc(concat of the target's auxiliary hidden states): [T, hidden]."""
        return self.fc(torch.cat(aux_hidden, dim=-1))            # [T, 3 * target_hidden] -> [T, hidden]

    def forward(self, input_ids, positions, hidden, kv_caches, attn_metadata):
        """As ``EagleLlamaHead.forward``; returns (norm(out), the pre-norm sum)."""
        out, residual = self.midlayer(positions, self.embed(input_ids), hidden, kv_caches[0],
                                      attn_metadata)
        return self.norm(out, residual)

    def greedy_token_ids(self, hidden: torch.Tensor) -> torch.Tensor:
        """[n, hidden] -> [n] int64 target ids: argmax over the draft vocabulary, then d2t."""
        draft_ids = self.compute_logits(hidden).argmax(dim=-1)
        return draft_ids + self.d2t[draft_ids]
