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
from slimformer.methods import MethodData

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
    report.update(measure_against_dense(small, model, tokenizer, task, **measure_settings(config)))
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


def measure_settings(config: EmbedCompressConfig) -> dict[str, Any]:
    """The keyword arguments of :func:`measure_against_dense` that ``config`` sets."""
    return {k: getattr(config, k) for k in ("k", "max_train", "max_eval", "max_length", "seed")}


def measure_against_dense(
    model, dense, tokenizer, task, *, k: int = 10, max_train: int | None = 1000, max_eval: int | None = None,
    max_length: int = 128, seed: int = 0, split: str = "test",
) -> dict[str, Any]:  # fmt: skip
    """``{"dense", "compressed", "agreement"}``: labelled proxies of both on ``split`` (kNN index: a
    seeded sample of ``max_train`` train texts), agreement of ``split``'s texts (of ``max_eval`` of them).

    Raises:
        ValueError: ``split`` is not validation or test (train is the kNN index).
    """
    from slimformer.embedding import embed
    from slimformer.embedding_eval import agreement, labelled_scores

    if split not in ("validation", "test"):
        raise ValueError(f"split {split!r}: embedding scores are measured on validation or test (train is the index)")
    train = _sample_examples(task.split("train"), max_train, f"knn-{seed}")
    test = _sample_examples(task.split(split), max_eval, f"eval-{seed}")
    out: dict[str, Any] = {"split": split, "examples": {"knn_index": len(train), split: len(test)}}
    test_emb = {}
    for name, net in (("dense", dense), ("compressed", model)):
        a = embed(net, tokenizer, [e.text for e in train], max_length=max_length)
        b = embed(net, tokenizer, [e.text for e in test], max_length=max_length)
        out[name] = labelled_scores(a, [e.label for e in train], b, [e.label for e in test], k)
        test_emb[name] = b
    out["agreement"] = agreement(test_emb["compressed"], test_emb["dense"], k)
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


@dataclass
class EmbeddingData(MethodData):
    """What recipe steps read for an embedding model: unlabelled train texts, never labels.

    Calibration is a seeded sample of ``calibration`` train texts (the sample ``embed-compress``
    scores on for the same size and seed); training (recover) is every train text. There is no
    validation search: the steps that need one are refused (:data:`slimformer.tasks.EMBEDDING_REFUSED`).
    """

    def calibration_batches(self) -> list[dict]:
        return self._texts("calibration", self.calibration)

    def training_batches(self) -> list[dict]:
        return self._texts("training", None)

    def validation_batches(self) -> list[dict]:
        raise ValueError("an embedding model has no labelled validation search; use optin, magnitude or random")

    def _texts(self, key: str, size: int | None) -> list[dict]:
        if key not in self.cache:
            texts = sample_texts(self.task.split("train"), size, f"{key}-{self.seed}")
            self.cache[key] = unlabelled_batches(texts, self.tokenizer, max_length=self.max_length)
        return self.cache[key]


def compress_embedding_recipe(model, tokenizer, task, steps: list, data: EmbeddingData, *, split: str = "test",
                              max_train: int | None = 1000):  # fmt: skip
    """Run recipe ``steps`` (:mod:`slimformer.compose`) on an embedding model; measure the result against it.

    Steps that cannot run on an embedding model are refused before any work, naming the reason;
    ``recover`` distils the pooled embeddings from ``model`` on unlabelled train texts.

    Returns:
        ``(compressed model, report)``: the recipe's ``steps`` plus :func:`measure_against_dense`'s
        ``dense``, ``compressed`` and ``agreement`` on ``split``.

    Raises:
        ValueError: not an embedding model, a refused step, or a ``split`` that is not validation or test.
    """
    from slimformer.compose import check_kind, compress
    from slimformer.embedding import embedding_pooling

    if embedding_pooling(model) is None:
        raise ValueError(f"{type(model).__name__} is not an embedding model; load it with load_embedding_model")
    check_kind(model, steps)
    if split not in ("validation", "test"):  # before any work
        raise ValueError(f"split {split!r}: embedding scores are measured on validation or test (train is the index)")
    small, report = compress(model, steps, data)
    report["pooling"] = embedding_pooling(model).to_dict()
    settings = {"max_train": max_train, "max_length": data.max_length, "seed": data.seed, "split": split}
    report.update(measure_against_dense(small, model, tokenizer, task, **settings))
    return small, report


class EmbeddingScorer:
    """Scores compressed versions of one dense embedding model on ``split`` (dense embedded once).

    Calling it on a model gives kNN accuracy and same-label precision@k (kNN index: a seeded sample of
    ``max_train`` train texts) and agreement with dense on the split's texts (mean cosine, recall@k);
    ``accuracy`` is the kNN accuracy, the y-axis of :mod:`slimformer.pareto`'s frontiers.
    """

    def __init__(self, dense, tokenizer, task, *, k: int = 10, max_train: int | None = 1000, max_length: int = 128,
                 seed: int = 0, split: str = "test"):  # fmt: skip
        from slimformer.embedding import embed

        if split not in ("validation", "test"):
            raise ValueError(f"split {split!r}: embedding scores are measured on validation or test")
        self.tokenizer, self.k, self.max_length = tokenizer, k, max_length
        self.train = _sample_examples(task.split("train"), max_train, f"knn-{seed}")
        self.test = task.split(split)
        self.dense = embed(dense, tokenizer, [e.text for e in self.test], max_length=max_length)

    def __call__(self, model) -> dict[str, float]:
        from slimformer.embedding import embed
        from slimformer.embedding_eval import agreement, labelled_scores

        a = embed(model, self.tokenizer, [e.text for e in self.train], max_length=self.max_length)
        b = embed(model, self.tokenizer, [e.text for e in self.test], max_length=self.max_length)
        scores = labelled_scores(a, [e.label for e in self.train], b, [e.label for e in self.test], self.k)
        agree = agreement(b, self.dense, self.k)
        return {"accuracy": scores["knn_accuracy"], **scores, **{k: agree[k] for k in ("mean_cosine", "recall_at_k")}}
