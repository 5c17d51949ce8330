"""Sequence classifiers with uneven per-layer shapes, as left by slimformer's surgery.

This file is copied next to every model that slimformer saves, and named in the saved config's
``auto_map``, so that the folder loads with plain transformers::

    AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)

(``AutoModelForTokenClassification`` for a token classifier) without slimformer installed. It
therefore imports only torch and transformers. slimformer itself
loads saved models through the same classes, so there is one definition of the shapes.

The config carries ``config.slimformer = {"format": 1, "layers": [{"heads": h, "ffn": f}, ...]}``:
one entry per layer that is still present (removed layers are gone from ``num_hidden_layers``),
with the number of attention heads and FFN neurons it keeps. The head size stays
``hidden_size / num_attention_heads`` of the original config.

Hard (top-k) attention, when some layers use it, is recorded in ``config.slimformer_topk =
{"<origin>": k}``, keyed by the layer's index in the original model (``slimformer["origin"]``), so
that removing layers later does not shift it: ``k`` is a count of keys per query (an int >= 1) or
a fraction of each sequence's length (a float in (0, 1)). See :class:`TopKSelfAttention`.
"""

from __future__ import annotations

import warnings

import torch
import transformers
from torch import nn
from transformers import (  # image classifiers (the ViT block at the end of this file)
    BertForSequenceClassification,
    BertModel,
    CamembertForSequenceClassification,
    CamembertModel,
    DebertaV2ForSequenceClassification,
    DebertaV2Model,
    DeiTForImageClassification,
    DeiTModel,
    DistilBertForSequenceClassification,
    DistilBertModel,
    ElectraForSequenceClassification,
    ElectraModel,
    ModernBertForSequenceClassification,
    ModernBertModel,
    RobertaForSequenceClassification,
    RobertaModel,
    ViTForImageClassification,
    ViTModel,
    XLMRobertaForSequenceClassification,
    XLMRobertaModel,
)

SLIM_KEY = "slimformer"
TOPK_KEY = "slimformer_topk"
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
# BERT's layers under another base model
for _family, _base in (
    ("roberta", "roberta"),
    ("xlm-roberta", "roberta"),
    ("camembert", "roberta"),
    ("electra", "electra"),
):
    FAMILY_PATHS[_family] = {**FAMILY_PATHS["bert"], "layers": f"{_base}.encoder.layer"}
# A fused layout: one ``qkv`` Linear holds the q, k and v rows (in that order, each heads * head
# size wide), and ``fc_in`` is a GLU input projection with two rows per neuron (values, then gates).
FAMILY_PATHS["modernbert"] = {
    "layers": "model.layers",
    "qkv": "attn.Wqkv",
    "o": "attn.Wo",
    "core": "attn",
    "fc_in": "mlp.Wi",
    "fc_out": "mlp.Wo",
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "hidden": "hidden_size",
    "ffn": "intermediate_size",
}

# --- DeBERTa-v2 / v3 ---------------------------------------------------------------------------
# BERT's layout with disentangled attention: the position path projects the shared relative-position
# table with q/k themselves (share_att_key, v3) or with its own ``pos_q``/``pos_k`` Linears, sliced
# by head like q/k. The core records its head count, which its reshapes and repeats read.
FAMILY_PATHS["deberta-v2"] = {
    **FAMILY_PATHS["bert"],
    "layers": "deberta.encoder.layer",
    "q": "attention.self.query_proj",
    "k": "attention.self.key_proj",
    "v": "attention.self.value_proj",
    "pos_q": "attention.self.pos_query_proj",
    "pos_k": "attention.self.pos_key_proj",
    "core_heads": "num_attention_heads",
}
# --- end DeBERTa-v2 / v3 -----------------------------------------------------------------------


class HeadlessAttention(nn.Module):
    """Self-attention with every head removed.

    It returns an empty ``(B, T, 0)`` tensor; the output projection, then ``Linear(0, hidden)``,
    turns it into its bias alone, which is exactly what the masked model computes. When the family
    keeps the output projection inside the attention module (DistilBERT), it lives here under the
    same attribute name, so checkpoints keep their keys.
    """

    def __init__(self, out_name: str | None = None, hidden: int = 0, *, bias: bool = True):
        super().__init__()
        self.out_name = out_name
        if out_name is not None:
            setattr(self, out_name, _linear(0, hidden, bias=bias))

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        empty = hidden_states.new_zeros(*hidden_states.shape[:-1], 0)  # (B, T, 0)
        if self.out_name is not None:
            empty = getattr(self, self.out_name)(empty)  # (B, T, hidden): the bias
        return empty, None


def _linear(n_in: int, n_out: int, *, bias: bool = True) -> nn.Linear:
    with warnings.catch_warnings():  # a removed sublayer has a zero-size weight; its init is a no-op
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        return nn.Linear(n_in, n_out, bias=bias)


def check_topk(k) -> int | float:
    """``k`` itself when it is a valid top-k setting, else ``ValueError`` saying what is allowed."""
    if isinstance(k, bool) or not isinstance(k, (int, float)):
        raise ValueError(f"topk={k!r}: must be an int >= 1 (keys per query) or a float in (0, 1) (fraction)")
    if isinstance(k, int) and k < 1:
        raise ValueError(f"topk={k!r}: a count of keys per query must be >= 1")
    if isinstance(k, float) and not 0.0 < k < 1.0:
        raise ValueError(f"topk={k!r}: a fraction of the sequence must be in (0, 1); use an int for a count")
    return k


def topk_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    topk: int | float,
    scaling: float,
    dropout: float = 0.0,
    training: bool = False,
) -> torch.Tensor:
    """Softmax attention over only the ``topk`` highest-scoring keys of each query.

    ``topk`` is a count (int, capped at the number of real keys) or a fraction of the real
    (non-padding) keys of each sequence (float, rounded up, at least one). Keys tied with the
    k-th score are kept too. Padding never counts, so a sequence gets the same result alone or in
    a padded batch. The scores are computed densely: this saves no multiply-accumulates, it only
    changes which keys each query mixes.

    Args:
        query, key, value: ``(B, H, T, s)``.
        mask: ``None`` (no padding), a bool mask (True = may attend) or an additive float mask
            (0 = may attend, very negative = padding), broadcastable to ``(B, 1, T, T)``.

    Returns:
        ``(B, H, T, s)``.
    """
    b, h, t, _ = query.shape
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling  # (B, H, T, T)
    low = torch.finfo(scores.dtype).min
    if mask is None:
        n_keys = scores.new_full((1, 1, 1, 1), t)
    else:
        allowed = mask if mask.dtype == torch.bool else mask > low / 2  # (B, 1, T|1, T)
        scores = scores.masked_fill(~allowed, low)
        n_keys = allowed.sum(-1, keepdim=True).to(scores.dtype)  # (B, 1, T|1, 1) real keys per query
    if isinstance(topk, float):
        keep = torch.ceil(n_keys * topk).clamp(min=1)
    else:
        keep = n_keys.clamp(max=topk)
    # a query that may attend to nothing (a padding query outside every local window) keeps one
    keep = keep.clamp(min=1).long().expand(b, h, t, 1)  # (B, H, T, 1) keys each query keeps
    k_max = int(keep.max())
    if k_max < t:
        if bool((keep == k_max).all()):  # one k for every query (no padding): unsorted top-k is cheaper
            kth = scores.topk(k_max, dim=-1, sorted=False).values.amin(-1, keepdim=True)  # (B, H, T, 1)
        else:
            top = scores.topk(k_max, dim=-1).values  # (B, H, T, k_max), descending
            kth = top.gather(-1, keep - 1)  # (B, H, T, 1): the k-th largest score of each query
        scores = scores.masked_fill(scores < kth, low)
    probs = torch.softmax(scores, dim=-1)  # (B, H, T, T), zero outside the kept keys
    probs = nn.functional.dropout(probs, p=dropout, training=training)
    return torch.matmul(probs, value)  # (B, H, T, s)


class TopKSelfAttention(nn.Module):
    """A layer's self-attention computed with hard (top-k) attention.

    It takes over the projections of the attention module it replaces under the same names, so
    checkpoints keep their keys and surgery still finds ``q``/``k``/``v`` (and, for DistilBERT,
    the output projection) where the family keeps them. :func:`set_layer_topk` with ``None``
    hands them back to the original module.
    """

    def __init__(self, core: nn.Module, names: dict[str, str | None], *, topk: int | float, head_size: int):
        super().__init__()
        for name, child in core.named_children():
            self.add_module(name, child)
        self.names = dict(names)  # q/k/v/o -> attribute name here (o is None when it lives outside)
        self.attention_head_size = head_size
        self.scaling = head_size**-0.5
        self.topk = check_topk(topk)
        object.__setattr__(self, "_dense_core", core)  # not a submodule: its children are ours now
        self.train(core.training)

    def dense_core(self) -> nn.Module:
        """The original attention module, given back its (possibly reshaped) projections."""
        core = self._dense_core
        for name, child in self.named_children():
            setattr(core, name, child)
        return core.train(self.training)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args, **kwargs):
        b, t, _ = hidden_states.shape
        shape = (b, t, -1, self.attention_head_size)

        def heads(name: str) -> torch.Tensor:  # (B, T, H * s) -> (B, H, T, s)
            return getattr(self, self.names[name])(hidden_states).view(shape).transpose(1, 2)

        dropout = getattr(getattr(self, "dropout", None), "p", 0.0)
        out = topk_attention(
            heads("q"),
            heads("k"),
            heads("v"),
            attention_mask,
            topk=self.topk,
            scaling=self.scaling,
            dropout=dropout,
            training=self.training,
        )  # (B, H, T, s)
        out = out.transpose(1, 2).reshape(b, t, -1)  # (B, T, H * s)
        if self.names.get("o"):
            out = getattr(self, self.names["o"])(out)
        return out, None

    def extra_repr(self) -> str:
        return f"topk={self.topk}"


class TopKRotaryAttention(TopKSelfAttention):
    """Hard (top-k) attention for the fused layout (ModernBERT): one ``qkv`` projection, rotary q and k.

    The rotary tables come from the layer (``position_embeddings``), and a local layer's
    sliding-window mask arrives as its attention mask, so top-k picks among the keys the dense
    layer may attend to.
    """

    def forward(self, hidden_states: torch.Tensor, position_embeddings=None, attention_mask=None, **kwargs):
        from transformers.models.modernbert.modeling_modernbert import apply_rotary_pos_emb

        b, t, _ = hidden_states.shape
        qkv = getattr(self, self.names["qkv"])(hidden_states).view(b, t, 3, -1, self.attention_head_size)
        q, k, v = (x.transpose(1, 2) for x in qkv.unbind(dim=2))  # 3 x (B, H, T, s)
        cos, sin = position_embeddings  # (B, T, s) each
        q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)
        dropout = getattr(self._dense_core, "attention_dropout", 0.0)
        out = topk_attention(
            q, k, v, attention_mask, topk=self.topk, scaling=self.scaling, dropout=dropout, training=self.training
        )  # (B, H, T, s)
        out = out.transpose(1, 2).reshape(b, t, -1)  # (B, T, H * s)
        return getattr(self, self.names["o"])(out), None


def set_layer_topk(layer: nn.Module, paths: dict[str, str], topk: int | float | None, *, head_size: int) -> bool:
    """Switch one layer to hard attention with ``topk`` (``None``: back to dense attention).

    Returns:
        Whether the layer's attention is now top-k (a layer without heads stays as it is).
    """
    core_path = paths["core"]
    core = layer.get_submodule(core_path)
    if isinstance(core, HeadlessAttention):
        return False
    if isinstance(core, TopKSelfAttention):
        if topk is not None:
            core.topk = check_topk(topk)
            return True
        layer.set_submodule(core_path, core.dense_core())
        return False
    if topk is None:
        return False
    prefix = core_path + "."
    if "qkv" in paths:
        names = {n: paths[n][len(prefix) :] for n in ("qkv", "o")}
        layer.set_submodule(core_path, TopKRotaryAttention(core, names, topk=topk, head_size=head_size))
        return True
    names = {n: paths[n][len(prefix) :] if paths[n].startswith(prefix) else None for n in ("q", "k", "v", "o")}
    if not all(names[n] for n in ("q", "k", "v")):
        raise ValueError(f"the q/k/v projections are not inside {core_path!r}; cannot switch to top-k attention")
    layer.set_submodule(core_path, TopKSelfAttention(core, names, topk=topk, head_size=head_size))
    return True


def _reshape_fused_layer(layer: nn.Module, paths: dict[str, str], *, heads: int, ffn: int, head_size: int, hidden: int):
    """:func:`reshape_layer` for the fused layout (``qkv`` and a GLU ``fc_in``); biases where the layer has them."""
    att_bias = layer.get_submodule(paths["o"]).bias is not None
    ffn_bias = layer.get_submodule(paths["fc_out"]).bias is not None
    if heads == 0:
        core, out = paths["core"], paths["o"]
        layer.set_submodule(core, HeadlessAttention(out[len(core) + 1 :], hidden, bias=att_bias))
    else:
        width = heads * head_size
        layer.set_submodule(paths["qkv"], _linear(hidden, 3 * width, bias=att_bias))
        layer.set_submodule(paths["o"], _linear(width, hidden, bias=att_bias))
    layer.set_submodule(paths["fc_in"], _linear(hidden, 2 * ffn, bias=ffn_bias))
    layer.set_submodule(paths["fc_out"], _linear(ffn, hidden, bias=ffn_bias))


def reshape_layer(layer: nn.Module, paths: dict[str, str], *, heads: int, ffn: int, head_size: int, hidden: int):
    """Give one layer fresh projections for ``heads`` heads and ``ffn`` neurons (weights to be loaded)."""
    if "qkv" in paths:
        _reshape_fused_layer(layer, paths, heads=heads, ffn=ffn, head_size=head_size, hidden=hidden)
        return
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
        _reshape_position_path(layer, paths, heads=heads, width=width, hidden=hidden)
    layer.set_submodule(paths["fc_in"], _linear(hidden, ffn))
    layer.set_submodule(paths["fc_out"], _linear(ffn, hidden))


def _reshape_position_path(layer: nn.Module, paths: dict[str, str], *, heads: int, width: int, hidden: int):
    """DeBERTa: the core's head count, and its own position projections (without share_att_key)."""
    if "core_heads" not in paths:
        return
    core = layer.get_submodule(paths["core"])
    setattr(core, paths["core_heads"], heads)
    core.all_head_size = width
    for name in (paths["pos_q"], paths["pos_k"]):
        attr = name.rsplit(".", 1)[1]
        if hasattr(core, attr):
            setattr(core, attr, _linear(hidden, width))


def apply_structure(model: nn.Module, family: str, *, base: bool = False) -> None:
    """Reshape a freshly built model to the per-layer shapes recorded in its config (if any).

    ``base``: the model is the family's base model (no head), whose layers sit one level up.
    """
    spec = getattr(model.config, SLIM_KEY, None)
    if not spec:
        return
    if int(spec.get("format", 0)) != FORMAT_VERSION:
        raise ValueError(f"unsupported slimformer format {spec.get('format')!r}; this file reads {FORMAT_VERSION}")
    paths = FAMILY_PATHS[family]
    layers = model.get_submodule(paths["layers"].split(".", 1)[1] if base else paths["layers"])
    shapes = spec["layers"]
    if len(shapes) != len(layers):
        raise ValueError(f"config lists {len(shapes)} layer shapes but the model has {len(layers)} layers")
    hidden = getattr(model.config, paths["hidden"])
    head_size = hidden // getattr(model.config, paths["n_heads"])
    for layer, shape in zip(layers, shapes, strict=True):
        reshape_layer(
            layer, paths, heads=int(shape["heads"]), ffn=int(shape["ffn"]), head_size=head_size, hidden=hidden
        )
    topk = getattr(model.config, TOPK_KEY, None) or {}
    origins = spec.get("origin") or list(range(len(layers)))
    if family == "modernbert":
        _restore_attention_norms(model.config, layers, origins)
    for layer, origin in zip(layers, origins, strict=True):
        k = topk.get(str(origin))
        if k is not None:
            set_layer_topk(layer, paths, k, head_size=head_size)


def _restore_attention_norms(config, layers: nn.ModuleList, origins: list[int]) -> None:
    """ModernBERT builds its first layer without an attention norm; only the original first layer lacks it.

    After the original first layer was removed, the layer now first had a norm when it was saved.
    """
    for layer, origin in zip(layers, origins, strict=True):
        if origin != 0 and isinstance(layer.attn_norm, nn.Identity):
            layer.attn_norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.norm_bias)


class _SlimShapes:
    """Mixin: build the family's classifier, then give it the per-layer shapes its config records."""

    _slim_family = ""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        apply_structure(self, self._slim_family)


class SlimBertForSequenceClassification(_SlimShapes, BertForSequenceClassification):
    _slim_family = "bert"


class SlimRobertaForSequenceClassification(_SlimShapes, RobertaForSequenceClassification):
    _slim_family = "roberta"


class SlimDistilBertForSequenceClassification(_SlimShapes, DistilBertForSequenceClassification):
    _slim_family = "distilbert"


class SlimXLMRobertaForSequenceClassification(_SlimShapes, XLMRobertaForSequenceClassification):
    _slim_family = "xlm-roberta"


class SlimCamembertForSequenceClassification(_SlimShapes, CamembertForSequenceClassification):
    _slim_family = "camembert"


class SlimElectraForSequenceClassification(_SlimShapes, ElectraForSequenceClassification):
    _slim_family = "electra"


class SlimModernBertForSequenceClassification(_SlimShapes, ModernBertForSequenceClassification):
    _slim_family = "modernbert"


class SlimDebertaV2ForSequenceClassification(_SlimShapes, DebertaV2ForSequenceClassification):
    _slim_family = "deberta-v2"


SLIM_CLASSES = {
    "bert": SlimBertForSequenceClassification,
    "roberta": SlimRobertaForSequenceClassification,
    "distilbert": SlimDistilBertForSequenceClassification,
    "xlm-roberta": SlimXLMRobertaForSequenceClassification,
    "camembert": SlimCamembertForSequenceClassification,
    "electra": SlimElectraForSequenceClassification,
    "modernbert": SlimModernBertForSequenceClassification,
    "deberta-v2": SlimDebertaV2ForSequenceClassification,
}

#: family -> token classifier with the recorded shapes (``SlimBertForTokenClassification``, ...).
SLIM_TOKEN_CLASSES = {}
for _family, _name in (
    ("bert", "Bert"),
    ("roberta", "Roberta"),
    ("distilbert", "DistilBert"),
    ("xlm-roberta", "XLMRoberta"),
    ("camembert", "Camembert"),
    ("electra", "Electra"),
    ("modernbert", "ModernBert"),
    ("deberta-v2", "DebertaV2"),
):
    _base = getattr(transformers, f"{_name}ForTokenClassification")
    _cls = type(f"Slim{_base.__name__}", (_SlimShapes, _base), {"_slim_family": _family, "__module__": __name__})
    globals()[_cls.__name__] = _cls  # auto_map names the class; transformers looks it up here
    SLIM_TOKEN_CLASSES[_family] = _cls


class _SlimBaseShapes:
    """Mixin: the family's base model (no head, ``AutoModel``) with the recorded per-layer shapes."""

    _slim_family = ""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        apply_structure(self, self._slim_family, base=True)


class SlimBertModel(_SlimBaseShapes, BertModel):
    _slim_family = "bert"


class SlimRobertaModel(_SlimBaseShapes, RobertaModel):
    _slim_family = "roberta"


class SlimDistilBertModel(_SlimBaseShapes, DistilBertModel):
    _slim_family = "distilbert"


class SlimXLMRobertaModel(_SlimBaseShapes, XLMRobertaModel):
    _slim_family = "xlm-roberta"


class SlimCamembertModel(_SlimBaseShapes, CamembertModel):
    _slim_family = "camembert"


class SlimElectraModel(_SlimBaseShapes, ElectraModel):
    _slim_family = "electra"


class SlimModernBertModel(_SlimBaseShapes, ModernBertModel):
    _slim_family = "modernbert"


class SlimDebertaV2Model(_SlimBaseShapes, DebertaV2Model):
    _slim_family = "deberta-v2"


#: family -> base-model class, named in an embedding folder's ``auto_map`` as ``AutoModel``.
SLIM_BASE_CLASSES = {
    "bert": SlimBertModel,
    "roberta": SlimRobertaModel,
    "distilbert": SlimDistilBertModel,
    "xlm-roberta": SlimXLMRobertaModel,
    "camembert": SlimCamembertModel,
    "electra": SlimElectraModel,
    "modernbert": SlimModernBertModel,
    "deberta-v2": SlimDebertaV2Model,
}


# ================================================================================================
# Image classifiers (ViT, DeiT). One block, kept apart from the text families above.
#
# Same layout as BERT's layers: per-head q/k/v projections and an output projection, all four
# inside the attention module (as DistilBERT keeps its output projection), so a layer without
# heads keeps ``attention.o_proj`` (its bias) inside :class:`HeadlessAttention`. Folders load with
# ``AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)``.
# ================================================================================================

for _family in ("vit", "deit"):
    FAMILY_PATHS[_family] = {
        "layers": f"{_family}.layers",
        "q": "attention.q_proj",
        "k": "attention.k_proj",
        "v": "attention.v_proj",
        "o": "attention.o_proj",
        "core": "attention",
        "fc_in": "mlp.fc1",
        "fc_out": "mlp.fc2",
        "n_layers": "num_hidden_layers",
        "n_heads": "num_attention_heads",
        "hidden": "hidden_size",
        "ffn": "intermediate_size",
    }


class SlimViTForImageClassification(_SlimShapes, ViTForImageClassification):
    _slim_family = "vit"


class SlimDeiTForImageClassification(_SlimShapes, DeiTForImageClassification):
    _slim_family = "deit"


class SlimViTModel(_SlimBaseShapes, ViTModel):
    _slim_family = "vit"


class SlimDeiTModel(_SlimBaseShapes, DeiTModel):
    _slim_family = "deit"


SLIM_CLASSES.update({"vit": SlimViTForImageClassification, "deit": SlimDeiTForImageClassification})
SLIM_BASE_CLASSES.update({"vit": SlimViTModel, "deit": SlimDeiTModel})
