"""Magnitude importance: the size of the weights a unit owns (a data-free baseline).

A head owns its rows of the query, key and value projections and its columns of the output
projection; its score is the L2 norm of all of them together. A neuron owns one row of ``fc_in``
and one column of ``fc_out``; its score is the product of their L2 norms (how much a unit input
can move the output through it). Biases are left out. Scores of heads and neurons are not on one
scale (``comparable=False``).
"""

from __future__ import annotations

import torch

from slimformer.arch import get_adapter
from slimformer.static.importance import Batches, Importance


@torch.no_grad()
def score_magnitude(model, batches: Batches, *, seed: int = 0, progress: bool = True) -> Importance:
    """Weight-norm scores of every head and neuron.

    Args:
        model: a sequence classifier of a supported family (left unchanged).
        batches: unused (data-free); accepted so every method has one signature.
        seed, progress: unused; accepted for the same reason.

    Returns:
        :class:`Importance` with ``comparable=False``.
    """
    adapter = get_adapter(model)
    heads, ffn = [], []
    for layer in adapter.layers(model):
        att = adapter.attention(layer)
        h, s = att.num_heads, att.head_size
        if h:
            sq = sum(lin.weight.float().reshape(h, s, -1).pow(2).sum((1, 2)) for lin in (att.q, att.k, att.v))  # (H,)
            sq = sq + att.o.weight.float().reshape(-1, h, s).pow(2).sum((0, 2))  # columns of o: (d, H, s) -> (H,)
            heads.append(sq.sqrt().cpu())
        else:
            heads.append(torch.zeros(0))
        view = adapter.ffn(layer)
        rows = view.fc_in.weight.float().norm(dim=1)  # (F,) from (F, d)
        cols = view.fc_out.weight.float().norm(dim=0)  # (F,) from (d, F)
        ffn.append((rows * cols).cpu())
    return Importance(tuple(heads), tuple(ffn), comparable=False, info={"method": "magnitude"})
