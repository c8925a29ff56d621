"""Vocabulary-parallel embedding and LM head (vLLM's names), and the logits processor.

The vocabulary is padded to a multiple of tensor_parallel_size and split in contiguous row
ranges: rank r holds rows [r * n, (r + 1) * n) of the padded table (padding rows are zero and
never looked up). The embedding looks up the ids in its range, zeroes the rest and all-reduces
(on GPUs with the custom all-reduce, in one kernel: ``SymmMemAllReduce.embedding_all_reduce``);
the LM head multiplies by its rows and the logits processor all-gathers the parts (float32, the
one-shot kernel where it takes the size) and drops the padding, so every rank has the same full logits (every rank samples the same tokens and
keeps its batch in step; only rank 0 reports them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagellm.distributed.parallel_state import (get_tensor_model_parallel_rank,
                                                get_tensor_model_parallel_world_size,
                                                get_tp_group, tensor_model_parallel_all_reduce)
from pagellm.layers.linear import UnquantizedLinearMethod
from pagellm.layers.weight_utils import check_shape, copy_into


class VocabParallelEmbedding(nn.Module):
    """Token embedding whose rows are split across the tensor-parallel ranks."""

    def __init__(self, num_embeddings: int, embedding_dim: int,
                 params_dtype: torch.dtype | None = None):
        super().__init__()
        self.tp_rank = get_tensor_model_parallel_rank()
        self.tp_size = get_tensor_model_parallel_world_size()
        self.num_embeddings = num_embeddings
        """Real vocabulary size (logits beyond it are padding)."""
        self.embedding_dim = embedding_dim
        self.num_embeddings_per_partition = -(-num_embeddings // self.tp_size)
        self.num_embeddings_padded = self.num_embeddings_per_partition * self.tp_size
        self.vocab_start_index = self.tp_rank * self.num_embeddings_per_partition
        """First vocabulary row this rank holds."""
        self.quant_method = UnquantizedLinearMethod()
        """Creates the weight and, for the LM head, multiplies by it."""
        self.quant_method.create_weights(
            self, embedding_dim, [self.num_embeddings_per_partition], embedding_dim,
            self.num_embeddings_padded, params_dtype or torch.get_default_dtype(),
            weight_loader=self.weight_loader,
            loaded_shapes=[(None, (num_embeddings, embedding_dim))])

    def weight_loader(self, param: nn.Parameter, loaded_weight, shard_id=None) -> None:
        """Rows [start, start + n) of the [vocab_size, dim] table; padding rows zeroed."""
        check_shape(loaded_weight, (self.num_embeddings, self.embedding_dim))
        num_real = max(0, min(self.num_embeddings_per_partition,
                              self.num_embeddings - self.vocab_start_index))
        copy_into(param.data[:num_real], loaded_weight.narrow(0, self.vocab_start_index, num_real))
        param.data[num_real:].zero_()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [T] -> [T, embedding_dim] (the same on every rank)."""
        lookup = getattr(self.quant_method, "embedding", None)   # a quantized table (GGUF)
        if lookup is not None:
            return lookup(self, input_ids)
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        custom = get_tp_group().custom_all_reduce
        if custom is not None and custom.can_embed(input_ids, self.weight):
            return custom.embedding_all_reduce(input_ids, self.weight, self.vocab_start_index)
        local_ids = input_ids - self.vocab_start_index
        in_range = (local_ids >= 0) & (local_ids < self.num_embeddings_per_partition)   # [T]
        out = F.embedding(torch.where(in_range, local_ids, 0), self.weight)   # [T, dim]
        out.masked_fill_(~in_range.unsqueeze(-1), 0)
        return tensor_model_parallel_all_reduce(out)


class ParallelLMHead(VocabParallelEmbedding):
    """The output projection: the same row split as the embedding (logits come out split by
    vocabulary range; ``LogitsProcessor`` gathers them)."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("ParallelLMHead computes logits through LogitsProcessor")


class LogitsProcessor(nn.Module):
    """hidden states -> full float32 logits on every rank."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, lm_head: VocabParallelEmbedding, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [n, hidden_size] -> logits [n, vocab_size] float32 (padding dropped)."""
        logits = lm_head.quant_method.apply(lm_head, hidden)       # [n, vocab_per_partition]
        if lm_head.tp_size > 1:
            logits = get_tp_group().all_gather(logits, -1, torch.float32)  # [n, vocab_padded]
            logits = logits[:, :self.vocab_size]
        return logits.float()
