"""Random importance: seeded uniform scores, the baseline every method has to beat."""

from __future__ import annotations

import torch

from slimformer.arch import get_adapter
from slimformer.static.importance import Batches, Importance


def score_random(model, batches: Batches, *, seed: int = 0, progress: bool = True) -> Importance:
    """Uniform random scores in [0, 1) for every head and neuron, the same for the same seed.

    Args:
        model: a sequence classifier of a supported family (left unchanged).
        batches, progress: unused; accepted so every method has one signature.
        seed: seed of the scores.

    Returns:
        :class:`Importance` with ``comparable=False``.
    """
    adapter = get_adapter(model)
    layers = adapter.layers(model)
    gen = torch.Generator().manual_seed(seed)
    # All heads first, then all neurons (the draw order is part of what a seed means).
    heads = tuple(torch.rand(adapter.attention(layer).num_heads, generator=gen) for layer in layers)
    ffn = tuple(torch.rand(adapter.ffn(layer).width, generator=gen) for layer in layers)
    return Importance(heads, ffn, comparable=False, info={"method": "random", "seed": seed})
