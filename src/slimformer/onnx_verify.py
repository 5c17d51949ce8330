"""Verifying exported ONNX files against PyTorch on real, padded inputs.

Used by :func:`slimformer.onnx_export.export_onnx`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimformer.bench import max_seq_len
from slimformer.onnx_runtime import INT8_FILE, ONNX_FILE, Candidate, OnnxModel, compare_latency, load_onnx  # noqa: F401

logger = logging.getLogger(__name__)

#: Real-looking sentences of many lengths that exports are verified on when no texts are given.
DEFAULT_TEXTS: tuple[str, ...] = (
    "A gripping, beautifully acted film.",
    "Dull.",
    "The plot makes no sense and the jokes fall flat, but the lead actor is very good.",
    "I loved it!",
    "It is the kind of movie that you forget before you reach the parking lot.",
    "Not bad, not great.",
    "An ambitious story about family, loss and the stubborn hope that things can still change, told with "
    "patience, humour and a keen eye for the small moments that make a life; it runs long, and the last "
    "act drags, yet the performances are so honest that it is hard to look away.",
    "The worst film of the year.",
    "Funny, warm and smart.",
    "Too slow for its own good, and the ending is a cheat.",
    "What a waste of a great cast.",
    "See it on the biggest screen you can find.",
)


def verification_batches(
    model: nn.Module, tokenizer, texts: Sequence[str] | None = None, *, batch_size: int = 8, max_length: int = 128
) -> list[dict[str, torch.Tensor]]:
    """Tokenized real text: the first three texts alone (no padding), then padded batches of all.

    Batches are padded to their longest text, so attention masks of varying lengths are covered.
    """
    from slimformer.arch import get_adapter

    adapter = get_adapter(model)
    if adapter.modality == "image":  # seeded random pixels: one image alone, then batches
        if texts is not None:
            raise ValueError(f"{adapter.family} models are verified on images, not texts: pass texts=None")
        return [adapter.random_inputs(model.config, batch=n, seed=i) for i, n in enumerate((1, 3, batch_size))]
    texts = list(DEFAULT_TEXTS if texts is None else texts)
    if not texts:
        raise ValueError("no verification texts: pass some, or None for the built-in sentences")
    limit = max_seq_len(model)
    max_length = min(max_length, limit) if limit is not None else max_length

    from slimformer.onnx_export import input_names  # that module imports this one

    names = input_names(model)

    def encode(chunk: list[str]) -> dict[str, torch.Tensor]:
        enc = tokenizer(chunk, padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
        return {k: v for k, v in enc.items() if k in names}

    singles = [encode([t]) for t in texts[:3]]
    return singles + [encode(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]


def compare_logits(model: nn.Module, onnx_model: OnnxModel, batches: Sequence[Mapping[str, torch.Tensor]]) -> dict:
    """Max / mean |logit difference| and argmax agreement of an ONNX file vs PyTorch over batches.

    Differences are taken over all batches; agreement over the batches of several texts (each
    text once, as :func:`verification_batches` makes them), or over all when there are none.
    """
    was_training = model.training
    model.eval()
    diffs, agree, agree_multi = [], [], []
    try:
        with torch.inference_mode():
            for batch in batches:
                ref = model(**batch).logits.float()  # (B, C)
                got = onnx_model(**batch)  # (B, C)
                diffs.append((ref - got).abs().flatten())
                same = ref.argmax(-1) == got.argmax(-1)  # (B,)
                agree.append(same)
                if ref.shape[0] > 1:
                    agree_multi.append(same)
    finally:
        model.train(was_training)
    if not batches:
        raise ValueError("no verification batches")
    d, same = torch.cat(diffs), torch.cat(agree_multi or agree)
    return {
        "max_abs_diff": float(d.max()),
        "mean_abs_diff": float(d.mean()),
        "argmax_agreement": float(same.float().mean()),
        "texts": int(same.numel()),
        "batches": len(batches),
        "shapes": [list(next(iter(b.values())).shape) for b in batches],
    }


def _verify_files(
    model: nn.Module, out: Path, files: Mapping[str, str], batches: Sequence[Mapping[str, torch.Tensor]], config
) -> tuple[dict[str, Any], list[str]]:
    """Compare every file with PyTorch: fp32 files by max |logit diff|, int8 files by argmax agreement.

    Returns the per-kind results and the failure messages (empty when all bounds hold).
    """
    verification: dict[str, Any] = {}
    failures = []
    for kind, name in files.items():
        result = compare_logits(model, OnnxModel(out / name, threads=1), batches)
        result["min_agreement"] = config.int8_min_agreement
        if kind.endswith("fp32"):
            result["tolerance"] = config.atol
            result["passed"] = result["max_abs_diff"] <= config.atol
            if not result["passed"]:
                failures.append(f"{name}: max |logit diff| {result['max_abs_diff']:.3g} > atol {config.atol:g}")
        else:
            result["passed"] = result["argmax_agreement"] >= config.int8_min_agreement
            if not result["passed"]:
                failures.append(
                    f"{name}: argmax agreement {result['argmax_agreement']:.1%} < {config.int8_min_agreement:.1%}"
                )
        verification[kind] = result
        logger.info(
            "verified %s: max |diff| %.3g, agreement %.3f", name, result["max_abs_diff"], result["argmax_agreement"]
        )
    return verification, failures
