"""Fisher importance (Kwon et al., NeurIPS 2022, "A Fast Post-Training Pruning Framework for Transformers").

Every head and FFN neuron gets a mask variable ``m`` (ones). The importance of a unit is the
diagonal of the empirical Fisher information of its mask: the sum over calibration examples of the
squared gradient of that example's cross-entropy loss (true labels) with respect to ``m_i``. Mask
variables are per example (:func:`~slimformer.static.optin.example_masks`), so one backward pass
per batch gives every example's own gradient, squared before summing (squaring a batch's summed
gradient instead would add cross terms between examples).
"""

from __future__ import annotations

import logging
import time

import torch
from torch.nn import functional as F

from slimformer.arch import get_adapter
from slimformer.static.importance import Batches, Importance
from slimformer.static.optin import example_masks, pack_examples

logger = logging.getLogger(__name__)


def score_fisher(model, batches: Batches, *, seed: int = 0, progress: bool = True) -> Importance:
    """Empirical Fisher diagonal of head and neuron masks, per-example gradients of the task loss.

    Args:
        model: a sequence classifier of a supported family, in eval mode (left unchanged).
        batches: calibration batches; each needs ``labels``.
        seed: unused (the method is deterministic); accepted so every method has one signature.
        progress: show a tqdm progress bar.

    Returns:
        :class:`Importance` with ``comparable=True`` (heads and neurons score the same loss).

    Raises:
        ValueError: no batches, or a batch has no ``labels``.
    """
    from tqdm.auto import tqdm

    if not batches:
        raise ValueError("Fisher importance needs at least one calibration batch")
    from slimformer.embedding import embedding_pooling

    if embedding_pooling(model) is not None:
        raise ValueError("Fisher importance needs a task loss with labels; score an embedding model with optin")
    if any("labels" not in b for b in batches):
        raise ValueError("Fisher importance needs labelled calibration batches (a 'labels' entry in every batch)")
    adapter = get_adapter(model)
    layers = adapter.layers(model)
    n = len(layers)
    pad_id = getattr(model.config, "pad_token_id", None) or 0  # image configs have none
    size = max(adapter.batch_rows(b) for b in batches)
    packed = pack_examples(batches, batch_size=size, pad_id=pad_id)  # less padding, same gradients
    sizes = [adapter.attention(layer).num_heads for layer in layers] + [adapter.ffn(layer).width for layer in layers]
    acc = [torch.zeros(k, dtype=torch.float64) for k in sizes]  # heads then FFN, per layer
    live = [i for i, k in enumerate(sizes) if k]
    start = time.perf_counter()
    for batch in tqdm(packed if live else [], desc="fisher", disable=not progress, leave=False):
        with torch.enable_grad(), example_masks(model, adapter.batch_rows(batch)) as (head_m, ffn_m):
            logits = adapter.forward_batch(model, batch)  # (B, C), or (B, T, C) for a token classifier
            labels = batch["labels"]  # (B,), or (B, T) with -100 where a token has no tag
            if logits.shape[-1] == 1:  # a regression head: squared error plays the cross-entropy's part
                loss = 0.5 * (logits.squeeze(-1) - labels.to(logits.dtype)).pow(2).sum()
            else:  # sum: each row keeps its own loss (a token classifier's: its tagged tokens')
                loss = F.cross_entropy(logits.flatten(0, -2), labels.flatten(), ignore_index=-100, reduction="sum")
            grads = torch.autograd.grad(loss, [(head_m + ffn_m)[i] for i in live])
        for i, g in zip(live, grads, strict=True):
            acc[i] += g.double().pow(2).sum(0).cpu()  # (B, k) -> (k,)
    seconds = time.perf_counter() - start
    total = sum(adapter.batch_rows(b) for b in batches)
    logger.info("fisher: %d examples in %.1fs", total, seconds)
    info = {"method": "fisher", "examples": total, "seconds": round(seconds, 3)}
    return Importance(tuple(a.float() for a in acc[:n]), tuple(a.float() for a in acc[n:]), comparable=True, info=info)
