"""Llama-family decoder (Llama 2/3, Mistral, SmolLM), also the base of Qwen2 and Qwen3.

The families differ only in flags: Qwen2 always has q/k/v biases, Qwen3 normalises each
q/k head with an RMSNorm before RoPE. Module names follow the HF checkpoints, except that
q/k/v and gate/up are fused (``qkv_proj``, ``gate_up_proj``): ``stacked_params_mapping``
tells ``pagellm.models.loader`` which checkpoint tensor is which shard. Every layer is
tensor-parallel (attention heads, MLP columns, vocabulary rows split across ranks). Under
pipeline parallelism a model holds only its stage's decoder layers (``get_pp_layer_range``),
the embedding on the first stage, the final norm and LM head on the last (and the embedding
there too when the LM head is tied to it). Built outside any process group it is the whole
model.
"""

from __future__ import annotations

import torch
from torch import nn

from pagellm.distributed.parallel_state import (get_pp_group, get_pp_layer_range, get_tp_group,
                                              tensor_model_parallel_all_reduce)
from pagellm.errors import ClientError
from pagellm.layers.attention import Attention, AttentionBackend, TorchAttentionBackend
from pagellm.layers.attention_metadata import AttentionMetadata
from pagellm.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from pagellm.layers.norm import RMSNorm
from pagellm.layers.rotary import RotaryEmbedding, rope_settings
from pagellm.layers.vocab_parallel_embedding import (LogitsProcessor, ParallelLMHead,
                                                     VocabParallelEmbedding)
from pagellm.models.utils import IntermediateTensors, PPMissingLayer, make_layers
from pagellm.ops.activation import silu_and_mul
from pagellm.platforms import use_triton_kernels


def head_dim_of(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


class LlamaAttention(nn.Module):
    def __init__(self, config, rotary: RotaryEmbedding, backend: AttentionBackend,
                 qkv_bias: bool, o_bias: bool, qk_norm: bool, dtype: torch.dtype,
                 quant_config=None, prefix: str = ""):
        super().__init__()
        self.head_dim = head_dim_of(config)
        self.qkv_proj = QKVParallelLinear(config.hidden_size, self.head_dim,
                                          config.num_attention_heads, config.num_key_value_heads,
                                          bias=qkv_bias, params_dtype=dtype,
                                          quant_config=quant_config, prefix=f"{prefix}.qkv_proj")
        self.num_heads = self.qkv_proj.num_heads
        """Query heads on this rank."""
        self.num_kv_heads = self.qkv_proj.num_kv_heads
        """KV heads on this rank (split, or one replicated head when tp > num_kv_heads)."""
        self.qkv_sizes = self.qkv_proj.output_partition_sizes
        self.o_proj = RowParallelLinear(config.num_attention_heads * self.head_dim,
                                        config.hidden_size, bias=o_bias, params_dtype=dtype,
                                        quant_config=quant_config, prefix=f"{prefix}.o_proj")
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps, dtype) if qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps, dtype) if qk_norm else None
        self.rotary_emb = rotary
        self.attn = Attention(self.num_heads, self.num_kv_heads, self.head_dim,
                              self.head_dim ** -0.5, backend)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, kv_cache: torch.Tensor | None,
                attn_metadata: AttentionMetadata) -> torch.Tensor:
        """hidden: [T, hidden_size] -> [T, hidden_size]; writes this step's K/V into kv_cache.
        The q/k norms (Qwen3) and the rotary run inside ``self.attn``, fused with the KV
        write where the backend can."""
        num_tokens = hidden.shape[0]
        q, k, v = self.qkv_proj(hidden).split(self.qkv_sizes, dim=-1)
        q = q.view(num_tokens, self.num_heads, self.head_dim)        # [T, num_heads, head_dim]
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)     # [T, num_kv_heads, head_dim]
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)
        attn_out = self.attn(q, k, v, kv_cache, attn_metadata, positions, self.rotary_emb,
                             self.q_norm, self.k_norm)               # [T, num_heads * head_dim]
        return self.o_proj(attn_out)


class LlamaMLP(nn.Module):
    def __init__(self, config, dtype: torch.dtype, quant_config=None, prefix: str = ""):
        super().__init__()
        if config.hidden_act != "silu":
            raise ClientError(f"hidden_act {config.hidden_act!r} is not supported; supported: silu",
                              param="model")
        bias = bool(getattr(config, "mlp_bias", False))
        inter = config.intermediate_size
        self.gate_up_proj = MergedColumnParallelLinear(config.hidden_size, [inter, inter], bias,
                                                       params_dtype=dtype,
                                                       quant_config=quant_config,
                                                       prefix=f"{prefix}.gate_up_proj")
        self.down_proj = RowParallelLinear(inter, config.hidden_size, bias=bias, params_dtype=dtype,
                                           quant_config=quant_config, prefix=f"{prefix}.down_proj")

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """[T, hidden_size] -> [T, hidden_size]."""
        activated = self.gate_up_proj.forward_silu_and_mul(hidden)   # one launch, if measured
        if activated is not None:                      # [num_tokens, intermediate / tp]
            return self.down_proj(activated)
        gate_up = self.gate_up_proj(hidden)            # [num_tokens, 2 * intermediate / tp]
        if use_triton_kernels(gate_up):
            from pagellm.ops.triton.activation import silu_and_mul_triton
            return self.down_proj(silu_and_mul_triton(gate_up))
        return self.down_proj(silu_and_mul(gate_up))


def _add_norm(norm: RMSNorm, hidden, residual, partial: bool):
    """``norm(hidden, residual)``; ``partial``: ``hidden`` is this rank's un-reduced partial
    sum, all-reduced inside the norm (one fused kernel where measured faster)."""
    if partial:
        return get_tp_group().all_reduce_add_rms_norm(hidden, residual, norm)
    return norm(hidden, residual)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config, rotary, backend, qkv_bias, o_bias, qk_norm, dtype,
                 quant_config=None, prefix: str = ""):
        super().__init__()
        self.self_attn = LlamaAttention(config, rotary, backend, qkv_bias, o_bias, qk_norm, dtype,
                                        quant_config, f"{prefix}.self_attn")
        self.mlp = LlamaMLP(config, dtype, quant_config, f"{prefix}.mlp")
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.reduce_in_norm = False
        """Tensor parallel: o_proj and down_proj leave their all-reduce to the RMSNorm that
        follows them, which fuses it with the residual add (``GroupCoordinator.
        all_reduce_add_rms_norm``); the layer's output hidden is then this rank's partial sum.
        Set by ``fuse_all_reduce_into_norms``."""

    def fuse_all_reduce_into_norms(self) -> None:
        """Move the row-parallel all-reduces into the norms (TP > 1, no o_proj / down_proj
        bias: a bias is added once, after the reduce). vLLM gets the same fusion from a
        compilation pass (AllReduceFusionPass); here the layer calls it directly."""
        o_proj, down_proj = self.self_attn.o_proj, self.mlp.down_proj
        if o_proj.tp_size > 1 and o_proj.bias is None and down_proj.bias is None:
            o_proj.reduce_results = down_proj.reduce_results = False
            self.reduce_in_norm = True

    def forward(self, positions, hidden, residual, kv_cache, attn_metadata,
                hidden_is_partial: bool = False):
        """hidden, residual: [T, hidden_size] (residual None in the first layer);
        ``hidden_is_partial``: ``hidden`` is the previous fused layer's un-reduced output.
        Returns (mlp output, residual stream before it) for the next layer's fused add+norm;
        the mlp output is this rank's partial sum when ``reduce_in_norm``."""
        if residual is None:
            residual, hidden = hidden, self.input_layernorm(hidden)
        else:
            hidden, residual = _add_norm(self.input_layernorm, hidden, residual,
                                         hidden_is_partial)
        hidden = self.self_attn(positions, hidden, kv_cache, attn_metadata)
        hidden, residual = _add_norm(self.post_attention_layernorm, hidden, residual,
                                     self.reduce_in_norm)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    def __init__(self, config, backend, qkv_bias, o_bias, qk_norm, dtype, quant_config=None):
        super().__init__()
        head_dim = head_dim_of(config)
        rope_theta, rope_scaling = rope_settings(config)
        rotary = RotaryEmbedding(head_dim, config.max_position_embeddings, rope_theta, rope_scaling)
        pp = get_pp_group()
        tied = bool(getattr(config, "tie_word_embeddings", False))
        self.start_layer, self.end_layer = get_pp_layer_range(config.num_hidden_layers)
        """This stage's decoder layers: [start_layer, end_layer)."""
        self.embed_tokens = (VocabParallelEmbedding(config.vocab_size, config.hidden_size, dtype)
                             if pp.is_first_rank or (tied and pp.is_last_rank)
                             else PPMissingLayer())
        self.layers = make_layers(
            config.num_hidden_layers, self.start_layer, self.end_layer,
            lambda i: LlamaDecoderLayer(config, rotary, backend, qkv_bias, o_bias, qk_norm, dtype,
                                        quant_config, f"model.layers.{i}"))
        self.norm = (RMSNorm(config.hidden_size, config.rms_norm_eps, dtype) if pp.is_last_rank
                     else PPMissingLayer())
        for i in range(self.start_layer, self.end_layer):
            self.layers[i].fuse_all_reduce_into_norms()
        self.aux_hidden_state_layers: tuple[int, ...] = ()
        """EAGLE-3 (vLLM's name): the layers whose input, the residual stream that the layer
        before left ([T, hidden_size]), ``forward`` keeps in ``aux_hidden_states``, in this
        order. Empty (the default): nothing is kept, nothing is added."""
        self.aux_hidden_states: list[torch.Tensor] = []
        """The last forward's kept hidden states (see ``aux_hidden_state_layers``)."""

    def forward(self, input_ids, positions, kv_caches, attn_metadata,
                intermediate_tensors: IntermediateTensors | None = None):
        """input_ids, positions: [T]; kv_caches[i]: the cache of this stage's i-th layer.
        The first stage embeds input_ids, later ones continue from ``intermediate_tensors``.
        Returns [T, hidden_size] final hidden states on the last stage, else the
        IntermediateTensors for the next stage."""
        if intermediate_tensors is None:
            hidden, residual = self.embed_tokens(input_ids), None      # [T, hidden_size]
        else:
            hidden, residual = intermediate_tensors.hidden_states, intermediate_tensors.residual
        aux_layers, kept, partial = self.aux_hidden_state_layers, {}, False
        for i in range(self.start_layer, self.end_layer):
            if aux_layers and i in aux_layers:
                full = tensor_model_parallel_all_reduce(hidden.clone()) if partial else hidden
                kept[i] = hidden if residual is None else full + residual
            kv_cache = kv_caches[i - self.start_layer] if kv_caches else None
            layer = self.layers[i]
            hidden, residual = layer(positions, hidden, residual, kv_cache, attn_metadata,
                                     partial)
            partial = layer.reduce_in_norm
        if aux_layers:
            self.aux_hidden_states = [kept[i] for i in aux_layers]
        if isinstance(self.norm, PPMissingLayer):
            if partial:                             # the next stage gets whole sums
                hidden = tensor_model_parallel_all_reduce(hidden)
            return IntermediateTensors(hidden, residual)
        hidden, _ = _add_norm(self.norm, hidden, residual, partial)
        return hidden


class LlamaForCausalLM(nn.Module):
    """A causal LM over one flattened batch of tokens against a paged KV cache."""

    packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"],
                              "gate_up_proj": ["gate_proj", "up_proj"]}
    """Fused module -> the checkpoint modules stacked into it (quantization and LoRA use it)."""
    stacked_params_mapping = [(".qkv_proj.", ".q_proj.", "q"), (".qkv_proj.", ".k_proj.", "k"),
                              (".qkv_proj.", ".v_proj.", "v"), (".gate_up_proj.", ".gate_proj.", 0),
                              (".gate_up_proj.", ".up_proj.", 1)]
    """(parameter name fragment, checkpoint name fragment, shard id) for the loader."""
    qkv_bias: bool | None = None
    """Force q/k/v biases on (Qwen2); None = follow config.attention_bias."""
    qk_norm: bool = False
    """Per-head RMSNorm of q and k before RoPE (Qwen3)."""

    def __init__(self, config, dtype: torch.dtype = torch.float32,
                 attn_backend: AttentionBackend | None = None, quant_config=None):
        """``quant_config``: a ``pagellm.layers.quantization.QuantizationConfig`` that picks
        each linear layer's method by its checkpoint name (None: dense weights)."""
        super().__init__()
        attention_bias = bool(getattr(config, "attention_bias", False))
        qkv_bias = attention_bias if self.qkv_bias is None else self.qkv_bias
        o_bias = attention_bias and self.qkv_bias is None
        self.config = config
        self.dtype = dtype
        """Weight and activation dtype; KV caches must use it too."""
        self.head_dim = head_dim_of(config)
        self.vocab_size = config.vocab_size
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        """lm_head shares embed_tokens' weight."""
        self.model = LlamaModel(config, attn_backend or TorchAttentionBackend(),
                                qkv_bias, o_bias, self.qk_norm, dtype, quant_config)
        self.num_layers = self.model.end_layer - self.model.start_layer
        """Decoder layers on this rank (all of them without pipeline parallelism): the KV
        cache's layer count."""
        self.num_kv_heads = self.model.layers[self.model.start_layer].self_attn.num_kv_heads
        """KV heads per layer on this rank: the KV cache's head count."""
        if not get_pp_group().is_last_rank:
            self.lm_head = PPMissingLayer()
        elif self.tie_word_embeddings:
            self.lm_head = self.model.embed_tokens
        else:
            self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, dtype)
        self.logits_processor = LogitsProcessor(config.vocab_size)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[torch.Tensor],
                attn_metadata: AttentionMetadata,
                intermediate_tensors: IntermediateTensors | None = None):
        """input_ids, positions: [num_tokens]; kv_caches[i]: this stage's i-th layer's
        [2, num_blocks, block_size, num_kv_heads, head_dim] cache, mutated (new K/V written);
        ``intermediate_tensors``: the previous stage's output (None on the first stage).
        Returns hidden states [num_tokens, hidden_size] on the last pipeline stage,
        IntermediateTensors for the next stage on the others."""
        return self.model(input_ids, positions, kv_caches, attn_metadata, intermediate_tensors)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[n, hidden_size] -> float32 logits [n, vocab_size], the same on every rank."""
        return self.logits_processor(self.lm_head, hidden)


class MistralForCausalLM(LlamaForCausalLM):
    """Mistral checkpoints are Llama-shaped (sliding window is not applied)."""
