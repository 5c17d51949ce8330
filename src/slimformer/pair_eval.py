"""Score a reranker (a one-logit pair classifier): MRR@k and nDCG@k over query groups.

A reranker scores ``(query, document)`` pairs, fed as ``(text, text_pair)``. The candidates of one
query are the examples that share its ``text``; an example's label is its relevance (0: not
relevant, higher: more). Groups without any relevant candidate are left out of both metrics (their
ideal DCG is 0). nDCG comes from scikit-learn's ``ndcg_score``; MRR is the mean over groups of one
over the rank of the first relevant candidate within the top ``k`` (0 when none is).
A pair classifier with several classes is scored like any classifier (:mod:`slimformer.evaluate`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence


def ranking_metrics(scores: Sequence[float], relevance: Sequence[int], groups: Sequence, *, k: int = 10) -> dict:
    """``{"mrr@k", "ndcg@k", "groups", "n"}`` of scores ranked within each group.

    Raises:
        ValueError: lengths differ, ``k < 1``, a negative relevance, or no group with a relevant candidate.
    """
    import numpy as np
    from sklearn.metrics import ndcg_score

    if not len(scores) == len(relevance) == len(groups):
        raise ValueError(f"{len(scores)} scores, {len(relevance)} relevance labels and {len(groups)} groups differ")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if any(r < 0 for r in relevance):
        raise ValueError("relevance labels must be >= 0")
    members: dict = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    mrr, ndcg = [], []
    for idx in members.values():
        rel = np.asarray([relevance[i] for i in idx], dtype=float)
        if rel.max() <= 0:
            continue
        s = np.asarray([scores[i] for i in idx], dtype=float)
        order = np.argsort(-s, kind="stable")[:k]
        hits = [rank for rank, i in enumerate(order, 1) if rel[i] > 0]
        mrr.append(1.0 / hits[0] if hits else 0.0)
        ndcg.append(float(ndcg_score(rel[None], s[None], k=k)) if len(idx) > 1 else 1.0)
    if not mrr:
        raise ValueError("no query group has a relevant candidate (relevance > 0)")
    return {f"mrr@{k}": float(np.mean(mrr)), f"ndcg@{k}": float(np.mean(ndcg)), "groups": len(mrr), "n": len(scores)}


def evaluate_reranker(model, tokenizer, examples, *, k: int = 10, **options) -> dict:
    """Score ``(text, text_pair)`` examples with a one-logit model; groups are the shared ``text``.

    Raises:
        ValueError: the model has more than one logit, or an example has no ``text_pair``.
    """
    from slimformer.evaluate import predict

    if model.config.num_labels != 1:
        raise ValueError(
            f"a reranker has one logit; this model has {model.config.num_labels} (score it as a classifier)"
        )
    if any(e.text_pair is None for e in examples):
        raise ValueError("reranker examples need text_pair (the document); text is the query")
    scores = predict(model, tokenizer, examples, **options)[:, 0].tolist()
    return ranking_metrics(scores, [e.label for e in examples], [e.text for e in examples], k=k)
