"""What the commands do differently per task kind (see :mod:`slimformer.tasks`).

A token classifier reads a token task (``--task wnut16`` or a CoNLL / JSONL file) and is scored by
entity-span F1; a one-logit model fed pairs is a reranker scored by MRR@10 / nDCG@10 over the
candidates of each query. The kind comes from the model folder's ``config.json`` (``architectures``)
before anything is loaded, so a command can pick the data layer for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace


def folder_kind(model: str) -> str:
    """``"token"`` when the model's folder is a token classifier (by ``architectures``), else ``"sequence"``."""
    from slimformer.models import resolve_model_path
    from slimformer.tasks import is_token_classifier

    config = Path(resolve_model_path(model)) / "config.json"
    if not config.is_file():
        return "sequence"  # a hub id: transformers reads it; sequence classifiers are the default kind
    archs = json.loads(config.read_text()).get("architectures") or []
    return "token" if is_token_classifier(SimpleNamespace(architectures=archs)) else "sequence"


def token_model_and_task(model: str, task: str, seed: int = 0):
    """``(model, tokenizer, token task)`` with the task's tags in the model's order (its ``id2label``).

    Raises:
        ValueError: the model has no trained head, or the task's tags are not the model's.
    """
    from slimformer.models import load_model, model_label_names
    from slimformer.token_data import load_token_task

    m, tok = load_model(model, require_head=True)
    names = model_label_names(m.config)
    data = load_token_task(task, label_names=names, seed=seed)
    if data.num_labels != m.config.num_labels:
        raise ValueError(f"model {model!r} has {m.config.num_labels} tags but task {task!r} has {data.num_labels}")
    return m, tok, data


def token_metrics(model, tokenizer, data, split: str, *, max_length: int = 128, batch_size: int = 64) -> dict:
    """Entity-span F1 and word accuracy on ``split`` (see :func:`slimformer.token_eval.evaluate_tokens`)."""
    from slimformer.token_eval import evaluate_tokens

    examples = data.split(split)
    metrics = evaluate_tokens(
        model, tokenizer, examples, data.label_names, max_length=max_length, batch_size=batch_size
    )
    return {"split": split, **metrics}


def reranker_metrics(model, tokenizer, data, split: str, *, max_length: int = 128, batch_size: int = 64) -> dict:
    """MRR@10 / nDCG@10 of a one-logit pair model; the task's labels must be integer relevance grades.

    Raises:
        ValueError: a label name that is not an integer (named), or examples without ``text_pair``.
    """
    from slimformer.data import Example
    from slimformer.pair_eval import evaluate_reranker

    grades = []
    for name in data.label_names:
        try:
            grades.append(int(name))
        except ValueError:
            raise ValueError(
                f"a reranker's labels are relevance grades (integers >= 0); task label {name!r} is not one"
            ) from None
    examples = [Example(e.text, grades[e.label], e.text_pair) for e in data.split(split)]
    options = {"max_length": max_length, "batch_size": batch_size, "progress": False}
    return {"split": split, **evaluate_reranker(model, tokenizer, examples, **options)}
