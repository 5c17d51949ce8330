"""The one view of an encoder classifier that every method works through.

Methods never reach into ``BertSelfAttention`` and friends: they ask an :class:`ArchAdapter` for
the layers, each layer's attention projections and FFN projections, and for the pieces of the
forward pass (embed, run one layer, classify), so dynamic methods can run their own layer loop.
Adding a family means one subclass (a file in this package) plus the shared tests passing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from slimformer.hf_remote.modeling_slimformer import FAMILY_PATHS, HeadlessAttention


@dataclass(frozen=True)
class ModelDims:
    """Sizes that surgery does not change (read from the config)."""

    family: str
    hidden: int
    num_heads: int  # heads per layer in the original architecture
    head_size: int
    ffn: int  # original FFN width
    num_layers: int  # layers in the original architecture
    vocab_size: int
    max_positions: int
    type_vocab_size: int  # 0 when the family has no token-type embeddings
    num_labels: int
    embedding_size: int = 0  # width of the embeddings when a Linear lifts them to ``hidden``; 0: none


@dataclass(frozen=True)
class AttentionView:
    """One layer's attention. ``q``/``k``/``v`` are ``None`` when every head was removed."""

    q: nn.Linear | None
    k: nn.Linear | None
    v: nn.Linear | None
    o: nn.Linear
    num_heads: int
    head_size: int


@dataclass(frozen=True)
class FFNView:
    """One layer's feed-forward block: ``fc_in`` (hidden -> width) and ``fc_out`` (width -> hidden)."""

    fc_in: nn.Linear
    fc_out: nn.Linear

    @property
    def width(self) -> int:
        return self.fc_in.out_features


def bert_style_tiny(*, layers: int, num_labels: int) -> dict:
    """Config fields of a tiny BERT-named model: hidden 32, 4 heads of 8, FFN 37, vocabulary 99."""
    return {
        "vocab_size": 99,
        "hidden_size": 32,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "intermediate_size": 37,
        "max_position_embeddings": 64,
        "num_labels": num_labels,
    }


class ArchAdapter:
    """Base adapter; a family subclass sets ``family`` and implements the forward pieces.

    A subclass must implement :meth:`dims`, :meth:`tiny_config`, :meth:`base_model`, :meth:`embed`
    and :meth:`classify` (and :meth:`run_layer` when a layer's call differs). Everything about where
    the projections live comes from ``FAMILY_PATHS[family]``, shared with the saved models' loading
    code, whose ``SLIM_CLASSES[family]`` must name the family's classifier class.

    Family details that code outside ``arch/`` needs are attributes here: ``head_paths`` (the
    modules a base checkpoint lacks), ``exit_head_paths`` (the head's dense and output layers,
    to warm-start exit heads) and :meth:`position_offset` / :meth:`input_names`.
    """

    family: str = ""
    model_types: tuple[str, ...] = ()
    #: Modules of the classification head, relative to the classifier: a base checkpoint
    #: (no fine-tuning) lacks them, so they would start random.
    head_paths: tuple[str, ...] = ("classifier",)
    #: ``(dense, output)`` Linear layers of a dense + activation + linear head, or ``None``.
    exit_head_paths: tuple[str, str] | None = None

    # --- family facts --------------------------------------------------------------------------
    def tiny_config(self, *, layers: int = 3, num_labels: int = 3):
        """A tiny random-model config of the family (hidden 32, 4 heads, FFN 37, vocabulary 99).

        The shared tests build one model of every registered family from it.
        """
        raise NotImplementedError

    def position_offset(self, config) -> int:
        """Rows of the position table before the first usable one (RoBERTa counts from padding + 1)."""
        return 0

    def input_names(self, config) -> tuple[str, ...]:
        """Tensor inputs the classifier takes: ``token_type_ids`` only where it has segment embeddings."""
        if self.dims(config).type_vocab_size:
            return ("input_ids", "attention_mask", "token_type_ids")
        return ("input_ids", "attention_mask")

    def is_head_key(self, key: str) -> bool:
        """Whether a state-dict key belongs to the classification head (see ``head_paths``)."""
        return any(key == p or key.startswith(p + ".") for p in self.head_paths)

    @property
    def paths(self) -> dict[str, str]:
        return FAMILY_PATHS[self.family]

    # --- structure -------------------------------------------------------------------------
    def dims(self, config) -> ModelDims:
        raise NotImplementedError

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.paths["layers"])

    def attention(self, layer: nn.Module) -> AttentionView:
        p = self.paths
        core = layer.get_submodule(p["core"])
        out = layer.get_submodule(p["o"])
        # By name too: a folder loaded with trust_remote_code has its own copy of the class.
        if isinstance(core, HeadlessAttention) or type(core).__name__ == HeadlessAttention.__name__:
            return AttentionView(None, None, None, out, 0, 0)
        head_size = core.attention_head_size  # BERT, RoBERTa and DistilBERT cores all record it
        q, k, v = (layer.get_submodule(p[n]) for n in ("q", "k", "v"))
        return AttentionView(q, k, v, out, q.out_features // head_size, head_size)

    def ffn(self, layer: nn.Module) -> FFNView:
        return FFNView(layer.get_submodule(self.paths["fc_in"]), layer.get_submodule(self.paths["fc_out"]))

    # --- forward pieces ----------------------------------------------------------------------
    def base_model(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def embed(self, model: nn.Module, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None):
        """Token + position (+ type) embeddings, normalised: ``(B, T) -> (B, T, hidden)``."""
        raise NotImplementedError

    def layer_mask(self, model: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor | None):
        """Turn a ``(B, T)`` 0/1 padding mask into what :meth:`run_layer` expects (may be ``None``)."""
        from transformers.masking_utils import create_bidirectional_mask

        return create_bidirectional_mask(config=model.config, inputs_embeds=hidden, attention_mask=attention_mask)

    def run_layer(self, layer: nn.Module, hidden: torch.Tensor, mask) -> torch.Tensor:
        """One encoder layer: ``(B, T, hidden) -> (B, T, hidden)``."""
        return layer(hidden, mask)

    def classify(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Classification head on the final hidden states: ``(B, T, hidden) -> (B, num_labels)``."""
        raise NotImplementedError

    def forward(
        self,
        model: nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits through the adapter's own layer loop (equal to ``model(...).logits``)."""
        hidden = self.embed(model, input_ids, token_type_ids)
        mask = self.layer_mask(model, hidden, attention_mask)
        for layer in self.layers(model):
            hidden = self.run_layer(layer, hidden, mask)
        return self.classify(model, hidden)
