"""Sequence classifiers with uneven per-layer shapes, as left by slimformer's surgery.

This file is copied next to every model that slimformer saves, and named in the saved config's
``auto_map``, so that the folder loads with plain transformers::

    AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)

without slimformer installed. It therefore imports only torch and transformers. slimformer itself
loads saved models through the same classes, so there is one definition of the shapes.

The config carries ``config.slimformer = {"format": 1, "layers": [{"heads": h, "ffn": f}, ...]}``:
one entry per layer that is still present (removed layers are gone from ``num_hidden_layers``),
with the number of attention heads and FFN neurons it keeps. The head size stays
``hidden_size / num_attention_heads`` of the original config.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from transformers import (
    BertForSequenceClassification,
    DistilBertForSequenceClassification,
    RobertaForSequenceClassification,
)

SLIM_KEY = "slimformer"
FORMAT_VERSION = 1

#: Where each family keeps its parts, relative to the classifier (``layers``) or to one layer.
#: ``core`` is the module computing the heads; for DistilBERT it also holds the output projection.
FAMILY_PATHS: dict[str, dict[str, str]] = {
    "bert": {
        "layers": "bert.encoder.layer",
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "o": "attention.output.dense",
        "core": "attention.self",
        "fc_in": "intermediate.dense",
        "fc_out": "output.dense",
        "n_layers": "num_hidden_layers",
        "n_heads": "num_attention_heads",
        "hidden": "hidden_size",
        "ffn": "intermediate_size",
    },
    "distilbert": {
        "layers": "distilbert.transformer.layer",
        "q": "attention.q_lin",
        "k": "attention.k_lin",
        "v": "attention.v_lin",
        "o": "attention.out_lin",
        "core": "attention",
        "fc_in": "ffn.lin1",
        "fc_out": "ffn.lin2",
        "n_layers": "n_layers",
        "n_heads": "n_heads",
        "hidden": "dim",
        "ffn": "hidden_dim",
    },
}
FAMILY_PATHS["roberta"] = {**FAMILY_PATHS["bert"], "layers": "roberta.encoder.layer"}


class HeadlessAttention(nn.Module):
    """Self-attention with every head removed.

    It returns an empty ``(B, T, 0)`` tensor; the output projection, then ``Linear(0, hidden)``,
    turns it into its bias alone, which is exactly what the masked model computes. When the family
    keeps the output projection inside the attention module (DistilBERT), it lives here under the
    same attribute name, so checkpoints keep their keys.
    """

    def __init__(self, out_name: str | None = None, hidden: int = 0):
        super().__init__()
        self.out_name = out_name
        if out_name is not None:
            setattr(self, out_name, _linear(0, hidden))

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        empty = hidden_states.new_zeros(*hidden_states.shape[:-1], 0)  # (B, T, 0)
        if self.out_name is not None:
            empty = getattr(self, self.out_name)(empty)  # (B, T, hidden): the bias
        return empty, None


def _linear(n_in: int, n_out: int) -> nn.Linear:
    with warnings.catch_warnings():  # a removed sublayer has a zero-size weight; its init is a no-op
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        return nn.Linear(n_in, n_out)


def reshape_layer(layer: nn.Module, paths: dict[str, str], *, heads: int, ffn: int, head_size: int, hidden: int):
    """Give one layer fresh projections for ``heads`` heads and ``ffn`` neurons (weights to be loaded)."""
    if heads == 0:
        core, out = paths["core"], paths["o"]
        if out.startswith(core + "."):
            layer.set_submodule(core, HeadlessAttention(out[len(core) + 1 :], hidden))
        else:
            layer.set_submodule(core, HeadlessAttention())
            layer.set_submodule(out, _linear(0, hidden))
    else:
        width = heads * head_size
        for name in ("q", "k", "v"):
            layer.set_submodule(paths[name], _linear(hidden, width))
        layer.set_submodule(paths["o"], _linear(width, hidden))
    layer.set_submodule(paths["fc_in"], _linear(hidden, ffn))
    layer.set_submodule(paths["fc_out"], _linear(ffn, hidden))


def apply_structure(model: nn.Module, family: str) -> None:
    """Reshape a freshly built model to the per-layer shapes recorded in its config (if any)."""
    spec = getattr(model.config, SLIM_KEY, None)
    if not spec:
        return
    if int(spec.get("format", 0)) != FORMAT_VERSION:
        raise ValueError(f"unsupported slimformer format {spec.get('format')!r}; this file reads {FORMAT_VERSION}")
    paths = FAMILY_PATHS[family]
    layers = model.get_submodule(paths["layers"])
    shapes = spec["layers"]
    if len(shapes) != len(layers):
        raise ValueError(f"config lists {len(shapes)} layer shapes but the model has {len(layers)} layers")
    hidden = getattr(model.config, paths["hidden"])
    head_size = hidden // getattr(model.config, paths["n_heads"])
    for layer, shape in zip(layers, shapes, strict=True):
        reshape_layer(
            layer, paths, heads=int(shape["heads"]), ffn=int(shape["ffn"]), head_size=head_size, hidden=hidden
        )


class SlimBertForSequenceClassification(BertForSequenceClassification):
    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        apply_structure(self, "bert")


class SlimRobertaForSequenceClassification(RobertaForSequenceClassification):
    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        apply_structure(self, "roberta")


class SlimDistilBertForSequenceClassification(DistilBertForSequenceClassification):
    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        apply_structure(self, "distilbert")


SLIM_CLASSES = {
    "bert": SlimBertForSequenceClassification,
    "roberta": SlimRobertaForSequenceClassification,
    "distilbert": SlimDistilBertForSequenceClassification,
}
