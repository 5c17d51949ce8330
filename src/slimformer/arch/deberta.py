"""DeBERTa-v2 / v3 sequence classifiers (model_type ``deberta-v2``): BERT's post-norm layers with
disentangled attention.

Each layer adds to its content scores the scores of each query against the rows of one shared
relative-position table (c2p) and of each key against it (p2c), as ``pos_att_type`` lists. With
``share_att_key`` (v3) the table is projected by the layer's own q and k, so removing a head's q / k
rows removes it from the position path too; otherwise the layer has its own ``pos_query_proj`` /
``pos_key_proj``, sliced by head the same way. The scale ``1 / sqrt(head_size * (1 + terms))``
depends on the head size and the number of terms, not on the head count, so it survives surgery.

Relative positions are token indices: dropping tokens between layers (skimming) would change them,
and the hard (top-k) attention of ``hf_remote`` computes content scores only; both are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from slimformer.arch.base import ArchAdapter, ModelDims, bert_named_dims, copy_into, head_columns, take_rows
from slimformer.hf_remote.modeling_slimformer import HeadlessAttention
from slimformer.tasks import is_token_classifier

RELATIVE = "its relative positions are the tokens' indices in the sequence"
#: Config settings the adapter does not handle, with what it would need.
UNSUPPORTED = (
    ("conv_kernel_size", 0, "the convolution after the first layer (DeBERTa-v2 xlarge/xxlarge) mixes neighbours"),
)


@dataclass(frozen=True)
class LayerInputs:
    """What every DeBERTa layer needs besides its hidden states.

    ``mask``: ``(B, 1, T, T)`` 0/1, a query and a key both real; ``relative_pos``: ``(1, T, T)``
    (bucketed) query - key offsets, or ``None`` without relative attention; ``rel_embeddings``:
    the normed ``(rows, hidden)`` table, or ``None``.
    """

    mask: torch.Tensor
    relative_pos: torch.Tensor | None
    rel_embeddings: torch.Tensor | None

    def dim(self) -> int:
        return self.mask.dim()

    def repeat(self, copies: int, *ones: int) -> LayerInputs:
        """Inputs for ``copies`` stacked copies of the batch (as ``Tensor.repeat`` along the batch)."""
        return LayerInputs(self.mask.repeat(copies, 1, 1, 1), self.relative_pos, self.rel_embeddings)


class DebertaV2Adapter(ArchAdapter):
    family = "deberta-v2"
    model_types = ("deberta-v2",)
    head_paths = ("pooler", "classifier")  # ContextPooler (dense + GELU on the first token), output layer
    # exit heads start random: the pooler is dense + GELU, not the exits' dense + tanh
    refused = {
        "skim": f"token skimming drops tokens between layers, and {RELATIVE}, which dropping would change",
        "hard_attention": "top-k attention over content scores alone would drop the c2p / p2c position scores",
        "fused_onnx_attention": "onnxruntime's Attention op has no disentangled (c2p / p2c) relative-position "
        "scores; the portable ONNX export (ExportConfig(optimize=False)) works",
    }

    def dims(self, config) -> ModelDims:
        check_supported(config)
        types = relative_types(config)
        terms: dict = {"position_table": bool(getattr(config, "position_biased_input", True))}
        if config.relative_attention:
            shared = bool(getattr(config, "share_att_key", False))
            terms.update(
                rel_rows=2 * relative_span(config),
                rel_terms=len(types),
                rel_projections=2 if shared else len(types),  # shared: both q and k project the table
                rel_own_projections=not shared,
                rel_norm="layer_norm" in norm_rel_ebd(config),
            )
        return bert_named_dims(self.family, config, **terms)

    def tiny_config(self, *, layers: int = 3, num_labels: int = 3):
        from transformers import DebertaV2Config

        # DeBERTa-v3's settings; 8 position buckets, so the 7- to 40-token test inputs reach the
        # logarithmic buckets (|offset| >= 4)
        return DebertaV2Config(
            vocab_size=99,
            hidden_size=32,
            num_hidden_layers=layers,
            num_attention_heads=4,
            intermediate_size=37,
            max_position_embeddings=64,
            relative_attention=True,
            position_buckets=8,
            pos_att_type=["p2c", "c2p"],
            share_att_key=True,
            norm_rel_ebd="layer_norm",
            position_biased_input=False,
            type_vocab_size=0,
            hidden_act="gelu",
            pad_token_id=0,
            num_labels=num_labels,
        )

    # --- surgery ----------------------------------------------------------------------------
    @torch.no_grad()
    def shrink_layer(self, layer: nn.Module, heads, neurons, dims: ModelDims) -> None:
        """BERT's surgery, plus the same head rows of the layer's own position projections (if any)."""
        core = layer.get_submodule(self.paths["core"])
        own = {}
        if heads and not isinstance(core, HeadlessAttention):
            cols = head_columns(heads, dims.head_size)  # (width,)
            own = {n: take_rows(getattr(core, n), cols) for n in ("pos_query_proj", "pos_key_proj") if hasattr(core, n)}
        like = layer.get_submodule(self.paths["o"])
        super().shrink_layer(layer, heads, neurons, dims)
        core = layer.get_submodule(self.paths["core"])
        for name, (w, b) in own.items():
            copy_into(getattr(core, name), w, b, like)

    def keep_layers(self, model: nn.Module, keep) -> None:
        if not any(keep):
            raise ValueError(
                "a deberta-v2 model needs at least one layer: transformers' encoder returns its last layer's output"
            )
        super().keep_layers(model, keep)

    # --- forward pieces ----------------------------------------------------------------------
    def base_model(self, model):
        return model.deberta

    def embed(self, model, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None):
        # the model also zeroes the padding rows here; they are never attended to, so only those
        # rows differ, and the conv layer that would read them is refused (see UNSUPPORTED)
        return self.base_model(model).embeddings(input_ids=input_ids, token_type_ids=token_type_ids)

    def layer_mask(self, model, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> LayerInputs:
        encoder = self.base_model(model).encoder
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        mask = encoder.get_attention_mask(attention_mask)  # (B, 1, T, T)
        return LayerInputs(mask, encoder.get_rel_pos(hidden), encoder.get_rel_embedding())

    def run_layer(self, layer: nn.Module, hidden: torch.Tensor, mask: LayerInputs) -> torch.Tensor:
        out, _ = layer(hidden, mask.mask, relative_pos=mask.relative_pos, rel_embeddings=mask.rel_embeddings)
        return out  # (B, T, hidden)

    def forward_without_layers(self, model: nn.Module, inputs: dict) -> torch.Tensor:
        return self.forward(model, **inputs)  # the model's own forward needs a layer (see keep_layers)

    def classify(self, model, hidden: torch.Tensor) -> torch.Tensor:
        if is_token_classifier(model):
            return self.classify_tokens(model, hidden)  # (B, T, num_labels)
        pooled = model.pooler(hidden)  # (B, hidden): GELU(W h_0)
        return model.classifier(model.dropout(pooled))


def relative_types(config) -> list[str]:
    """The disentangled score terms a config turns on: ``c2p`` and / or ``p2c`` (the model ignores others)."""
    raw = config.pos_att_type or []
    types = {t.strip().lower() for t in (raw.split("|") if isinstance(raw, str) else raw)}
    return sorted(types & {"c2p", "p2c"})


def relative_span(config) -> int:
    """Relative distances the table covers each way (``position_buckets``, else ``max_relative_positions``)."""
    buckets = getattr(config, "position_buckets", -1)
    if buckets > 0:
        return buckets
    span = getattr(config, "max_relative_positions", -1)
    return span if span >= 1 else config.max_position_embeddings


def norm_rel_ebd(config) -> list[str]:
    return [x.strip() for x in getattr(config, "norm_rel_ebd", "none").lower().split("|")]


def check_supported(config) -> None:
    """``ValueError`` naming the setting when a DeBERTa-v2 config has a part the adapter does not handle."""
    for name, allowed, why in UNSUPPORTED:
        value = getattr(config, name, allowed) or allowed
        if value != allowed:
            raise ValueError(f"{name}={value!r} is not supported for deberta-v2 models ({why}); only {allowed!r}")
    hidden, heads = config.hidden_size, config.num_attention_heads
    sizes = {
        "embedding_size": (getattr(config, "embedding_size", hidden), hidden),
        "pooler_hidden_size": (getattr(config, "pooler_hidden_size", hidden), hidden),
        "attention_head_size": (getattr(config, "attention_head_size", hidden // heads), hidden // heads),
    }
    for name, (value, needed) in sizes.items():
        if value != needed:
            raise ValueError(f"{name}={value} is not supported for deberta-v2 models: it must be {needed}")
