"""The embedding case end to end: compress a sentence-embedding model with no labels, measure it against dense.

:func:`compress_embedding` takes an embedding model (e.g. the built-in all-MiniLM-L6-v2 as it
ships, no fine-tuning) and a corpus (a task: its train texts calibrate, its test texts measure):

1. OPTIN scores heads and FFN neurons by ``1 - cos`` of the pooled embedding (plus its trajectory
   term) on ``calibration`` unlabelled train texts and prunes to the budget (least-squares repair);
2. optionally a short distillation from dense on further unlabelled train texts
   (:func:`slimformer.embedding_recover.recover_embedding`);
3. measures agreement with dense on the test texts (mean cosine, recall@k of dense's neighbours),
   the labelled proxies on the test split (kNN accuracy train -> test, same-label precision@k;
   labels are read only here, never used to compress), and wall-clock speed of both models at
   batch 32 and 1, timed interleaved (encoder + pooling).
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import torch

from slimformer.budget import Budget
from slimformer.config import ConfigBase, boolean, budget_or_text, integer, non_negative, option, positive

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class EmbedCompressConfig(ConfigBase):
    """Settings of :func:`compress_embedding`."""

    budget: Budget = option(help="what the compressed model must fit, e.g. macs=0.5", check=budget_or_text())
    calibration: int = option(256, "unlabelled train texts OPTIN scores on (>= 8)", integer(8))
    trajectory_weight: float = option(1.0, "OPTIN: weight of the later-layer feature term (>= 0)", non_negative())
    recover: bool = option(False, "distil the pruned model from dense on unlabelled train texts", boolean())
    recover_texts: int = option(4096, "recover: unlabelled train texts per epoch (>= 32)", integer(32))
    # 2 epochs at 3e-4 on the embeddings alone: recall@10 0.49 vs 0.44 for 1 epoch at 1e-4 with the
    # hidden term (validation, 50% MACs; docs/results/embedding.md)
    recover_epochs: int = option(2, "recover: passes over those texts (>= 1)", integer(1))
    recover_lr: float = option(3e-4, "recover: peak learning rate (AdamW)", positive())
    recover_hidden_weight: float = option(
        0.0, "recover: weight of the per-layer hidden-state term next to 1 - cos (0: embeddings only)", non_negative()
    )
    max_steps: int | None = option(None, "recover: stop after this many steps (smoke runs)", integer(1, optional=True))
    k: int = option(10, "neighbours for recall@k, kNN accuracy and precision@k (>= 1)", integer(1))
    max_train: int | None = option(
        1000, "train texts in the kNN index, a seeded sample (None = all)", integer(10, optional=True)
    )
    max_eval: int | None = option(None, "test texts measured, a seeded sample (None = all)", integer(12, optional=True))
    max_length: int = option(128, "tokens per text when scoring, training and measuring (>= 8)", integer(8))
    bench: bool = option(True, "time dense and compressed interleaved at batch 32 and 1", boolean())
    seq_len: int = option(128, "timing: tokens per sequence", integer(2))
    repeats: int = option(10, "timing: timed calls per model and batch size", integer(1))
    seed: int = option(0, "seed of the text samples, the scorer and the distillation", integer(0))


@dataclass
class EmbedCompressResult:
    """The compressed embedding model and the JSON-ready report of :func:`compress_embedding`."""

    model: torch.nn.Module
    report: dict[str, Any]


def sample_texts(examples, size: int | None, seed: int | str) -> list[str]:
    """A seeded sample of at most ``size`` texts of ``examples``, in their original order (all if None)."""
    texts = [e.text for e in examples]
    if size is None or size >= len(texts):
        return texts
    pick = sorted(random.Random(seed).sample(range(len(texts)), size))
    return [texts[i] for i in pick]


def unlabelled_batches(texts: list[str], tokenizer, *, max_length: int, batch_size: int = 32) -> list[dict]:
    """Tokenized batches of ``texts`` without labels or positions (what OPTIN and recover read)."""
    from slimformer.embedding import text_batches

    batches = text_batches(texts, tokenizer, batch_size=batch_size, max_length=max_length)
    return [{k: v for k, v in b.items() if k != "index"} for b in batches]


def compress_embedding(model, tokenizer, task, config: EmbedCompressConfig, *, progress: bool = True):
    """Prune (and optionally distil) an embedding model with no labels; measure it against ``model``.

    Args:
        model: an embedding model (:func:`slimformer.embedding.load_embedding_model`); not changed.
        tokenizer: its tokenizer.
        task: a :class:`slimformer.data.TaskData` whose train texts calibrate and whose test split measures.
        config: budget, sample sizes, recovery and timing settings.

    Returns:
        :class:`EmbedCompressResult`; the report holds ``prune``, ``recover`` (or None), ``dense``
        and ``compressed`` scores, ``agreement``, ``latency`` and the settings.

    Raises:
        ValueError: not an embedding model, an impossible budget, or too few texts for ``k``.
    """
    from slimformer.bench import max_seq_len
    from slimformer.embedding import embedding_pooling
    from slimformer.static import OptinConfig, prune

    if embedding_pooling(model) is None:
        raise ValueError(f"{type(model).__name__} is not an embedding model; load it with load_embedding_model")
    limit = max_seq_len(model)
    if config.bench and limit is not None and config.seq_len > limit:
        raise ValueError(f"seq_len={config.seq_len} is longer than the model allows ({limit} positions)")
    t0 = time.perf_counter()
    train = task.split("train")
    calib = unlabelled_batches(
        sample_texts(train, config.calibration, f"calibration-{config.seed}"), tokenizer, max_length=config.max_length
    )
    optin = OptinConfig(budget=config.budget, trajectory_weight=config.trajectory_weight, seed=config.seed)
    pruned = prune(model, optin, calib, progress=progress)
    small, recover_report = pruned.model, None
    if config.recover:
        small, recover_report = _recover(small, model, tokenizer, train, config, progress)
    report: dict[str, Any] = {
        "config": config.to_dict(),
        "pooling": embedding_pooling(model).to_dict(),
        "prune": {k: pruned.report[k] for k in ("relative", "layers", "seconds") if k in pruned.report},
        "recover": recover_report,
    }
    report.update(measure_against_dense(small, model, tokenizer, task, config))
    if config.bench:
        report["latency"] = _time_pair(model, small, config, progress)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return EmbedCompressResult(model=small, report=report)


def _recover(small, dense, tokenizer, train, config: EmbedCompressConfig, progress: bool):
    from slimformer.embedding_recover import recover_embedding
    from slimformer.recover import RecoverConfig

    texts = sample_texts(train, config.recover_texts, f"recover-{config.seed}")
    batches = unlabelled_batches(texts, tokenizer, max_length=config.max_length)
    rc = RecoverConfig(
        epochs=config.recover_epochs, lr=config.recover_lr, hidden_weight=config.recover_hidden_weight,
        max_steps=config.max_steps, seed=config.seed,
    )  # fmt: skip
    result = recover_embedding(small, dense, batches, rc, progress=progress)
    keep = ("recover_config", "steps", "examples_per_epoch", "seconds")
    return result.model, {k: result.report[k] for k in keep}


def measure_against_dense(model, dense, tokenizer, task, config: EmbedCompressConfig) -> dict[str, Any]:
    """``{"dense", "compressed", "agreement"}``: labelled proxies of both on the test split, agreement of test texts."""
    from slimformer.embedding import embed
    from slimformer.embedding_eval import agreement, labelled_scores

    seed = config.seed
    train = _sample_examples(task.split("train"), config.max_train, f"knn-{seed}")
    test = _sample_examples(task.split("test"), config.max_eval, f"eval-{seed}")
    out: dict[str, Any] = {"examples": {"knn_index": len(train), "test": len(test)}}
    test_emb = {}
    for name, net in (("dense", dense), ("compressed", model)):
        a = embed(net, tokenizer, [e.text for e in train], max_length=config.max_length)
        b = embed(net, tokenizer, [e.text for e in test], max_length=config.max_length)
        out[name] = labelled_scores(a, [e.label for e in train], b, [e.label for e in test], config.k)
        test_emb[name] = b
    out["agreement"] = agreement(test_emb["compressed"], test_emb["dense"], config.k)
    return out


def _sample_examples(examples, size: int | None, seed: str) -> list:
    if size is None or size >= len(examples):
        return list(examples)
    return [examples[i] for i in sorted(random.Random(seed).sample(range(len(examples)), size))]


def _time_pair(dense, small, config: EmbedCompressConfig, progress: bool) -> dict[str, Any]:
    from slimformer.bench import BenchConfig, bench_models
    from slimformer.embedding import EmbeddingForward

    bench = BenchConfig(batch_sizes=(32, 1), seq_len=config.seq_len, warmup=2, repeats=config.repeats)
    timing = bench_models({"dense": EmbeddingForward(dense), "compressed": EmbeddingForward(small)}, bench,
                          progress=progress)  # fmt: skip
    ms = {n: {str(r["batch_size"]): r["median_ms"] for r in res["results"]} for n, res in timing.items()}
    speedup = {b: ms["dense"][b] / ms["compressed"][b] for b in ms["dense"]}
    return {
        "median_ms": ms,
        "speedup": speedup,
        "seq_len": config.seq_len,
        "environment": timing["dense"]["environment"],
    }
