"""Score a token classifier: entity-span F1 (strict, conlleval-style) and word accuracy.

seqeval is not installable here, so spans are matched by :func:`entity_spans`: a span starts at a
``B-X`` tag, or at an ``I-X`` tag that does not continue a span of type ``X`` (conlleval's
lenient start), and runs over the ``I-X`` tags that follow. A predicted span counts only when its
type, start and end all equal a gold span's. Precision, recall and F1 are micro-averaged over all
spans of the split; per-type F1 is reported too. Tags without a ``B-`` / ``I-`` prefix other than
``O`` count as single-type spans of their own (IO tagging).

Every word is predicted from its first subword (see :mod:`slimformer.token_data`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from slimformer.token_data import TokenExample, token_batches


def entity_spans(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """``(type, start, end)`` spans (end exclusive) of one sentence's tag names."""
    spans, kind, start = set(), None, 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, name = tag.partition("-") if "-" in tag else ("I" if tag != "O" else "O", "", tag)
        continues = prefix == "I" and name == kind
        if kind is not None and not continues:
            spans.add((kind, start, i))
            kind = None
        if prefix in ("B", "I") and not continues:
            kind, start = name, i
    return spans


def span_f1(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict:
    """Micro precision / recall / F1 of entity spans over sentences, and F1 per entity type.

    Raises:
        ValueError: different numbers of sentences, or of tags within one sentence.
    """
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted")
    tp, n_gold, n_pred = Counter(), Counter(), Counter()
    for i, (g, p) in enumerate(zip(gold, pred, strict=True)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted")
        gs, ps = entity_spans(g), entity_spans(p)
        for kind, *_ in gs:
            n_gold[kind] += 1
        for kind, *_ in ps:
            n_pred[kind] += 1
        for kind, *_ in gs & ps:
            tp[kind] += 1

    def prf(t: int, ng: int, np_: int) -> tuple[float, float, float]:
        precision, recall = (t / np_ if np_ else 0.0), (t / ng if ng else 0.0)
        return precision, recall, (2 * precision * recall / (precision + recall) if precision + recall else 0.0)

    precision, recall, f1 = prf(sum(tp.values()), sum(n_gold.values()), sum(n_pred.values()))
    types = sorted(set(n_gold) | set(n_pred))
    per_type = {k: round(prf(tp[k], n_gold[k], n_pred[k])[2], 6) for k in types}
    return {
        "entity_f1": f1,
        "entity_precision": precision,
        "entity_recall": recall,
        "entities_gold": sum(n_gold.values()),
        "per_type_f1": per_type,
    }


def predict_tags(
    model, tokenizer, examples: Sequence[TokenExample], *, batch_size: int = 64, max_length: int = 128
) -> list[list[int]]:
    """Predicted tag ids per word (first subword's argmax); words cut off by truncation get tag 0."""
    import torch

    was_training = model.training
    model.eval()
    out: list[list[int]] = []
    try:
        with torch.inference_mode():
            for batch in token_batches(list(examples), tokenizer, batch_size=batch_size, max_length=max_length):
                word_ids = batch.pop("word_ids")
                batch.pop("labels")
                best = model(**batch).logits.argmax(-1)  # (B, T)
                for row, words in zip(best.tolist(), word_ids, strict=True):
                    n = 1 + max((w for w in words if w is not None), default=-1)
                    tags, previous = [0] * n, None
                    for pos, w in enumerate(words):
                        if w is not None and w != previous:
                            tags[w] = row[pos]
                        previous = w
                    out.append(tags)
    finally:
        model.train(was_training)
    return out


def evaluate_tokens(model, tokenizer, examples: Sequence[TokenExample], label_names: Sequence[str], **options) -> dict:
    """Entity-span F1 (:func:`span_f1`) and word accuracy of ``model`` on ``examples``.

    Raises:
        ValueError: no examples, or the model's tag count differs from ``label_names``.
    """
    if not examples:
        raise ValueError("cannot evaluate on an empty list of examples")
    if model.config.num_labels != len(label_names):
        raise ValueError(f"the model has {model.config.num_labels} tags but the task has {len(label_names)}")
    pred = predict_tags(model, tokenizer, examples, **options)
    gold_names = [[label_names[t] for t in e.tags] for e in examples]
    # words past truncation: predicted O (index 0 is O when the task has it), which costs recall
    pred_names = [
        [label_names[p[i]] if i < len(p) else "O" for i in range(len(e.tags))]
        for p, e in zip(pred, examples, strict=True)
    ]
    words = sum(len(e.tags) for e in examples)
    right = sum(g == q for gs, ps in zip(gold_names, pred_names, strict=True) for g, q in zip(gs, ps, strict=True))
    return {**span_f1(gold_names, pred_names), "accuracy": right / words, "n": len(examples), "words": words}
