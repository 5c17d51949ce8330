"""What every importance method returns, and how calibration data is passed around.

An importance method scores each attention head and each FFN neuron of a model; higher means more
important (removing it hurts more). Methods whose scores estimate the same loss for heads and
neurons (OPTIN, Fisher) set ``comparable=True``, so selection may trade heads against neurons
directly; otherwise (magnitude, random) selection keeps the same fraction of cost in each kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

#: Tokenized calibration batches: dicts with ``input_ids`` and ``attention_mask`` (B, T), optional
#: ``token_type_ids`` (B, T) and ``labels`` (B,). Built with :func:`slimformer.data.make_loader`.
Batches = list[dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Importance:
    """Per-layer scores: ``heads[l]`` has shape ``(H_l,)``, ``ffn[l]`` has shape ``(F_l,)``."""

    heads: tuple[torch.Tensor, ...]
    ffn: tuple[torch.Tensor, ...]
    comparable: bool = True
    info: dict = field(default_factory=dict)  # timings, sample sizes, anything worth reporting

    def __post_init__(self) -> None:
        if len(self.heads) != len(self.ffn):
            raise ValueError(f"Importance has {len(self.heads)} head layers but {len(self.ffn)} FFN layers")
