"""Pipeline-parallel pieces shared by the model families (vLLM's names).

A model built on one pipeline stage holds only that stage's decoder layers; the others are
``PPMissingLayer`` placeholders so parameter names (``model.layers.{i}...``) keep matching
the checkpoint and the loader simply finds no parameter for the tensors of absent layers.
Stages pass ``IntermediateTensors`` (hidden states and the residual stream) to the next.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class PPMissingLayer(nn.Identity):
    """Stands in for a module another pipeline stage holds: no parameters, never called in
    the forward pass (the stage's forward skips it)."""


@dataclass
class IntermediateTensors:
    """What a non-last pipeline stage hands to the next one."""

    hidden_states: torch.Tensor    # [num_tokens, hidden_size]
    residual: torch.Tensor         # [num_tokens, hidden_size]


def make_layers(num_layers: int, start: int, end: int, build) -> nn.ModuleList:
    """``num_layers`` modules: ``build(i)`` for indices i in [start, end), PPMissingLayer for
    the rest (so layer i keeps its checkpoint name on every stage)."""
    return nn.ModuleList(build(i) if start <= i < end else PPMissingLayer()
                         for i in range(num_layers))
