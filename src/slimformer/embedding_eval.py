"""How good a compressed embedding model is: agreement with dense, and labelled proxies on real data.

No STS, paraphrase or retrieval set ships in a package here (see ``docs/embedding.md``), so an
embedding model is measured the two ways MTEB also uses:

* **agreement with dense** on a held-out corpus: mean cosine between each text's compressed and
  dense embedding, and recall@k of dense's ``k`` nearest neighbours (cosine, the text itself
  excluded) among the compressed model's ``k`` nearest;
* **labelled proxies** on a labelled task: kNN accuracy (``k`` neighbours, cosine, majority vote,
  fitted on train and scored on test) and same-label retrieval precision@k (each test text queries
  the rest of the test split; the share of its ``k`` nearest with its label).

All functions take embeddings (``(N, d)`` tensors or arrays); :func:`evaluate_embedding_task` embeds
a task's texts first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def _unit(x) -> np.ndarray:
    a = np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (N, d), got shape {a.shape}")
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    return a / np.maximum(norms, 1e-12)


def nearest(embeddings, k: int, *, queries=None) -> np.ndarray:
    """Indices ``(Q, k)`` of each query's ``k`` nearest rows by cosine, best first.

    Without ``queries`` the rows query themselves and a row is never its own neighbour.

    Raises:
        ValueError: ``k`` is not in ``1 .. available rows``.
    """
    base = _unit(embeddings)
    own = queries is None
    q = base if own else _unit(queries)
    available = len(base) - (1 if own else 0)
    if not 1 <= k <= available:
        raise ValueError(f"k={k}: must be between 1 and {available} (the rows a query can retrieve)")
    sims = q @ base.T  # (Q, N)
    if own:
        np.fill_diagonal(sims, -np.inf)
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # (Q, k), unordered
    order = np.argsort(-np.take_along_axis(sims, top, 1), axis=1, kind="stable")
    return np.take_along_axis(top, order, 1)


def mean_cosine(candidate, reference) -> float:
    """Mean cosine between matching rows of two ``(N, d)`` embedding sets."""
    a, b = _unit(candidate), _unit(reference)
    if a.shape != b.shape:
        raise ValueError(f"embedding sets differ in shape: {a.shape} vs {b.shape}")
    return float((a * b).sum(1).mean())


def neighbour_recall(candidate, reference, k: int = 10) -> float:
    """Recall@k: the mean share of ``reference``'s ``k`` nearest neighbours that ``candidate`` also finds."""
    if len(candidate) != len(reference):
        raise ValueError(f"embedding sets differ in length: {len(candidate)} vs {len(reference)}")
    ref, cand = nearest(reference, k), nearest(candidate, k)
    hits = [len(set(r) & set(c)) for r, c in zip(ref.tolist(), cand.tolist(), strict=True)]
    return float(np.mean(hits) / k)


def agreement(candidate, reference, k: int = 10) -> dict[str, float]:
    """``{"mean_cosine", "recall_at_k", "k"}`` of a compressed model's embeddings against dense."""
    return {
        "mean_cosine": mean_cosine(candidate, reference),
        "recall_at_k": neighbour_recall(candidate, reference, k),
        "k": k,
    }


def knn_accuracy(train, train_labels: Sequence[int], test, test_labels: Sequence[int], k: int = 10) -> float:
    """Accuracy of a ``k``-nearest-neighbour classifier (cosine, majority vote) fitted on train."""
    from sklearn.neighbors import KNeighborsClassifier

    if len(train) != len(train_labels) or len(test) != len(test_labels):
        raise ValueError("each embedding set needs one label per row")
    if not 1 <= k <= len(train):
        raise ValueError(f"k={k}: must be between 1 and {len(train)} (the training rows)")
    clf = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute")
    clf.fit(_unit(train), np.asarray(train_labels))
    return float((clf.predict(_unit(test)) == np.asarray(test_labels)).mean())


def retrieval_precision(embeddings, labels: Sequence[int], k: int = 10) -> float:
    """Same-label precision@k: each row queries the others; the mean share of its ``k`` nearest with its label."""
    labels = np.asarray(labels)
    if len(labels) != len(embeddings):
        raise ValueError(f"{len(embeddings)} embeddings but {len(labels)} labels")
    idx = nearest(embeddings, k)
    return float((labels[idx] == labels[:, None]).mean())


def labelled_scores(train, train_labels, test, test_labels, k: int = 10) -> dict[str, float]:
    """``{"knn_accuracy", "retrieval_precision", "k"}`` on one task's train -> test split."""
    return {
        "knn_accuracy": knn_accuracy(train, train_labels, test, test_labels, k),
        "retrieval_precision": retrieval_precision(test, test_labels, k),
        "k": k,
    }


#: Training texts in the kNN index when none is given: a seeded sample, as in benchmarks/embedding.py.
KNN_INDEX = 1000


def evaluate_embedding_task(
    model,
    tokenizer,
    task,
    *,
    split: str = "test",
    k: int = 10,
    max_train: int | None = KNN_INDEX,
    batch_size: int = 32,
    max_length: int | None = None,
    seed: int = 0,
) -> tuple[dict[str, float], torch.Tensor]:
    """Embed a labelled task's train texts and one held-out split; score :func:`labelled_scores` on them.

    Args:
        task: a :class:`slimformer.data.TaskData`.
        split: the scored split, ``validation`` or ``test`` (the kNN index is fitted on train).
        max_train: use a seeded sample of at most this many training texts (None: all).
        max_length: truncate texts to this many tokens (None: the model's ``max_seq_length``).

    Returns:
        ``(scores, split_embeddings)``; scores also hold ``split``, ``train_examples`` and ``test_examples``.

    Raises:
        ValueError: ``split`` is train or all (the kNN index would contain the scored texts).
    """
    from slimformer.embedding import embed

    if split in ("train", "all"):
        raise ValueError(
            f"split {split!r}: kNN accuracy is fitted on the train split, so score validation or test instead"
        )
    train, test = train_sample(task, max_train, seed), task.split(split)
    train_emb = embed(model, tokenizer, [e.text for e in train], batch_size, max_length)
    test_emb = embed(model, tokenizer, [e.text for e in test], batch_size, max_length)
    scores = labelled_scores(train_emb, [e.label for e in train], test_emb, [e.label for e in test], k)
    scores.update(split=split, train_examples=len(train), test_examples=len(test))
    return scores, test_emb


def train_sample(task, size: int | None, seed: int = 0) -> list:
    """A seeded sample of at most ``size`` training examples, in their original order (all if None)."""
    train = task.split("train")
    if size is None or size >= len(train):
        return list(train)
    pick = np.random.default_rng(seed).choice(len(train), size, replace=False)
    return [train[i] for i in sorted(pick.tolist())]
