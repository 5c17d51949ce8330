"""What skimming costs and keeps: tokens per layer, MACs with the predictors counted, accuracy.

MACs follow :mod:`slimformer.cost` (linear layers, attention matmuls, classifier head; per
sequence, real tokens only): layer ``l`` of a sample costs ``layer_macs`` at the number of tokens
that sample ran through it, and the predictor before layer ``l`` costs its MACs per token times the
tokens it scored (those that entered layer ``l - 1``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import torch

from slimformer.cost import embedding_macs, head_macs, layer_macs
from slimformer.structure import Structure

logger = logging.getLogger(__name__)


def tokenized_batches(examples: Sequence, tokenizer, *, batch_size: int = 32, max_length: int = 128) -> list[dict]:
    """Examples -> a list of padded batches (``input_ids``, ``attention_mask``, ... , ``labels``), in order."""
    from slimformer.batching import batches

    return batches(examples, tokenizer, batch_size=batch_size, max_length=max_length, grouped=False)


def skim_macs(model, tokens: torch.Tensor) -> torch.Tensor:
    """MACs per sample of a skimming pass, predictors included: ``(N, L)`` tokens per layer -> ``(N,)``."""
    structure = Structure.from_model(model)
    dims, per_token = structure.dims, model.skim_predictors[0].macs_per_token()
    tokens = tokens.long().cpu()
    total = torch.full((tokens.shape[0],), head_macs(dims), dtype=torch.float64)
    total += embedding_macs(dims, 1) * tokens[:, 0].double()  # every real token is embedded
    for i, shape in enumerate(structure.layers):
        total += torch.tensor([layer_macs(dims, shape, int(n))["total"] for n in tokens[:, i]], dtype=torch.float64)
        if i > 0:
            total += per_token * tokens[:, i - 1].double()
    return total


def dense_macs(model, n_real: torch.Tensor) -> torch.Tensor:
    """MACs per sample of the same model without skimming (every real token through every layer)."""
    from slimformer.cost import cost_of

    structure = Structure.from_model(model)
    return torch.tensor([float(cost_of(structure, int(n)).macs) for n in n_real.cpu()], dtype=torch.float64)


def run_skim(model, batches: Iterable[dict], *, progress: bool = False) -> dict:
    """Skimming inference over ``batches``: ``{"logits" (N, C), "tokens" (N, L), "labels" (N,) or None}``."""
    from tqdm.auto import tqdm

    param = next(model.parameters())
    logits, tokens, labels = [], [], []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in tqdm(batches, desc="skim", unit="batch", disable=not progress, leave=False):
                inputs = {k: v.to(param.device) for k, v in batch.items() if k != "labels"}
                out = model.skim_forward(**inputs)
                logits.append(out.logits.float().cpu())
                tokens.append(out.tokens.cpu())
                if "labels" in batch:
                    labels.append(batch["labels"].cpu())
    finally:
        model.train(was_training)
    if not logits:
        raise ValueError("no batches to run")
    return {
        "logits": torch.cat(logits),
        "tokens": torch.cat(tokens),
        "labels": torch.cat(labels) if len(labels) == len(logits) else None,
    }


def summarize(model, tokens: torch.Tensor, logits: torch.Tensor | None = None, labels=None) -> dict:
    """Report of a skimming run: kept fractions per layer, MACs with predictors, accuracy.

    ``kept_fraction[l]`` is the share of all real tokens that layer ``l`` ran on (layer 0: 1.0);
    ``mean_kept`` averages it over the skimmed layers (1..L-1), as the skim loss does.
    """
    n_real = tokens[:, 0].double()
    kept = (tokens.double().sum(0) / n_real.sum()).tolist()
    skim, dense = skim_macs(model, tokens), dense_macs(model, tokens[:, 0])
    pred = (
        model.skim_predictors[0].macs_per_token() * tokens[:, :-1].double().sum(1)
        if tokens.shape[1] > 1
        else torch.zeros_like(n_real)
    )
    report = {
        "n": int(tokens.shape[0]),
        "shift": model.skim_shift,
        "mean_real_tokens": float(n_real.mean()),
        "kept_fraction": [round(k, 4) for k in kept],
        "mean_kept": float(sum(kept[1:]) / max(1, len(kept) - 1)),
        "tokens_per_layer": [round(float(x), 2) for x in tokens.double().mean(0)],
        "macs": float(skim.mean()),
        "predictor_macs": float(pred.mean()),
        "dense_macs": float(dense.mean()),
        "relative_macs": float(skim.sum() / dense.sum()),
    }
    if logits is not None and labels is not None:
        from slimformer.evaluate import metrics_from_logits

        report.update(metrics_from_logits(logits, labels, logits.shape[1]))
    return report


def measure_skim(model, batches: Iterable[dict], *, progress: bool = False) -> dict:
    """:func:`run_skim` then :func:`summarize` (accuracy when the batches carry labels)."""
    run = run_skim(model, batches, progress=progress)
    return summarize(model, run["tokens"], run["logits"], run["labels"])
