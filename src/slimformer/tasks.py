"""Task kinds: what a model's outputs mean, read from the model itself and never guessed.

* ``sequence``: a sequence classifier, one row of logits per input (``(B, C)``).
* ``pair``: the same classifier fed ``(text, text_pair)``; a *reranker* is a pair classifier with
  one logit (``num_labels == 1``), read as a relevance score. A model does not record whether it
  was trained on pairs, so ``pair`` is the data's word: :func:`task_kind` says ``pair`` when the
  examples carry ``text_pair``.
* ``token``: a token classifier (``XxxForTokenClassification``), one row of logits per token
  (``(B, T, C)``); the data is words with tags (:mod:`slimformer.token_data`).
* ``embedding``: a bi-encoder (see :mod:`slimformer.embedding`), marked by a config key.

The kind of a model instance comes from its class (a ``...ForTokenClassification`` class, the
remote-code copy of one included); the kind of a saved folder from its config's ``architectures``.
"""

from __future__ import annotations

from collections.abc import Iterable

KINDS = ("sequence", "token", "pair", "embedding")
#: Why each method that cannot run on token classifiers refuses (see :func:`require_kind`).
TOKEN_REFUSED: dict[str, str] = {
    "skim": "token skimming drops tokens mid-network, and a token classifier needs an output for every token",
    "exits": "early exit decides per input, but a token classifier's per-token outputs all leave at the last layer",
    "slim": "differentiable slimming trains with a sequence-level loss on sequence batches",
    "axformer": "AxFormer's search scores sequence-level validation accuracy",
    "recover": "recover distils sequence-level logits on sequence batches",
    "int8": "the int8 folder format rebuilds sequence classifiers only",
    "fit": "fit searches with sequence-level validation accuracy",
}
#: Why each method that cannot run on embedding models refuses (see :func:`require_kind`).
EMBEDDING_REFUSED: dict[str, str] = {
    "fisher": "Fisher importance needs a task loss with labels; score an embedding model with optin (no labels)",
    "skim": "token skimming trains its predictors with a classification loss on labelled batches",
    "exits": "early exit trains and calibrates classifier heads, and an embedding model has none",
    "slim": "differentiable slimming trains its gates with a labelled classification loss",
    "axformer": "AxFormer's search scores validation accuracy of a classifier head",
}
_TOKEN_SUFFIX = "ForTokenClassification"


def is_token_classifier(model_or_config) -> bool:
    """Whether a model instance (by class) or a config (by ``architectures``) is a token classifier."""
    if hasattr(model_or_config, "config") and hasattr(model_or_config, "forward"):
        return type(model_or_config).__name__.endswith(_TOKEN_SUFFIX)
    archs = getattr(model_or_config, "architectures", None) or []
    return any(str(a).endswith(_TOKEN_SUFFIX) for a in archs)


def model_kind(model_or_config) -> str:
    """``"token"``, ``"embedding"`` or ``"sequence"`` (a sequence model fed pairs is still ``sequence``)."""
    from slimformer.embedding import EMBEDDING_KEY

    config = getattr(model_or_config, "config", model_or_config)
    if getattr(config, EMBEDDING_KEY, None):
        return "embedding"
    return "token" if is_token_classifier(model_or_config) else "sequence"


def task_kind(model, examples: Iterable = ()) -> str:
    """The kind of running ``model`` on ``examples``: :func:`model_kind`, or ``pair`` for pair inputs."""
    kind = model_kind(model)
    if kind == "sequence" and any(getattr(e, "text_pair", None) is not None for e in examples):
        return "pair"
    return kind


def is_single_logit(model_or_config) -> bool:
    """A one-logit head (regression, reranker score): scored by squared error, not a softmax."""
    config = getattr(model_or_config, "config", model_or_config)
    return int(getattr(config, "num_labels", 2)) == 1


def describe(model) -> str:
    """One line for ``slimformer info``: the kind and how its outputs are read."""
    kind, labels = model_kind(model), int(model.config.num_labels)
    if kind == "token":
        return f"token classification ({labels} tags per token)"
    if kind == "embedding":
        return "sentence embedding (pooled hidden states)"
    if labels == 1:
        return "sequence classification, one logit (a regression or reranker score; pairs as (text, text_pair))"
    return f"sequence classification ({labels} classes; pairs as (text, text_pair))"


def require_kind(model, method: str) -> None:
    """Raise ``ValueError`` saying why, when ``method`` cannot run on ``model``'s kind."""
    if model_kind(model) == "token" and method in TOKEN_REFUSED:
        raise ValueError(f"{method} is not available for token classifiers: {TOKEN_REFUSED[method]}")
    if model_kind(model) == "embedding" and method in EMBEDDING_REFUSED:
        raise ValueError(f"{method} is not available for embedding models: {EMBEDDING_REFUSED[method]}")


def check_kinds(kind: str) -> str:
    """``kind`` if it is one of :data:`KINDS`, else ``ValueError`` naming the allowed ones."""
    if kind not in KINDS:
        raise ValueError(f"task kind {kind!r} is not known; allowed: {', '.join(KINDS)}")
    return kind
