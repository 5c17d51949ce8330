"""The one view of an encoder classifier that every method works through.

Methods never reach into ``BertSelfAttention`` and friends: they ask an :class:`ArchAdapter` for
the layers, each layer's attention projections and FFN projections, and for the pieces of the
forward pass (embed, run one layer, classify), so dynamic methods can run their own layer loop.
Adding a family means one subclass (a file in this package) plus the shared tests passing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from slimformer.hf_remote.modeling_slimformer import FAMILY_PATHS, HeadlessAttention, reshape_layer


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
    # Layout terms the cost model reads (the BERT defaults; ModernBERT differs in all of them):
    gated_ffn: bool = False  # a GLU: ``fc_in`` has two rows per neuron (value and gate)
    biases: bool = True  # encoder and head Linear layers carry biases (the classifier always does)
    norm_size: int = 2  # parameters per hidden unit of one LayerNorm (1 without its bias)
    pre_norm: bool = False  # norms before the sublayers (none in the first layer), a final norm, a
    # normed head, and rotary positions instead of a position table
    position_table: bool = True  # absolute positions come from a table (not: rotary, DeBERTa-v3)
    # DeBERTa's disentangled attention (0: none): every layer scores each query against all
    # ``rel_rows`` rows of one shared relative-position table, ``rel_terms`` times (c2p, p2c), after
    # projecting the table ``rel_projections`` times; by q and k themselves (share_att_key), or by
    # its own Linear per term (``rel_own_projections``). The table may have a LayerNorm (``rel_norm``).
    rel_rows: int = 0
    rel_terms: int = 0
    rel_projections: int = 0
    rel_own_projections: bool = False
    rel_norm: bool = False
    # Image families (ViT / DeiT): a patch embedding (a Conv2d with stride = kernel) in place of
    # the token table; ``max_positions`` then counts every token (patches + special tokens).
    patch_inputs: int = 0  # inputs of one patch (channels * patch * patch); 0: a text family
    num_patches: int = 0
    special_tokens: int = 0  # [CLS] (+ DeiT's distillation token) in front of the patches

    token_head: bool = False  # a token classifier: the head runs on every token (no pooler)

    @property
    def is_image(self) -> bool:
        return self.patch_inputs > 0


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
    """One layer's feed-forward block: ``fc_in`` (hidden -> width) and ``fc_out`` (width -> hidden).

    In a gated (GLU) block ``gate`` holds the gate rows, paired one to one with ``fc_in``'s rows;
    both are then row views of one fused Linear (see :class:`LinearRows`).
    """

    fc_in: nn.Linear
    fc_out: nn.Linear
    gate: nn.Linear | None = None

    @property
    def width(self) -> int:
        return self.fc_out.in_features


class LinearRows:
    """A block of rows of a fused Linear, read like a Linear of its own (``weight``, ``bias``, sizes).

    ``weight`` is a live view of the fused parameter (gradients reach it); the block is not a
    module, so it cannot take hooks: hook the fused Linear instead.
    """

    def __init__(self, linear: nn.Linear, start: int, rows: int):
        self.linear, self.start, self.rows = linear, start, rows

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight[self.start : self.start + self.rows]  # (rows, in)

    @property
    def bias(self) -> torch.Tensor | None:
        b = self.linear.bias
        return None if b is None else b[self.start : self.start + self.rows]

    @property
    def in_features(self) -> int:
        return self.linear.in_features

    @property
    def out_features(self) -> int:
        return self.rows


def head_columns(heads: Sequence[int], head_size: int) -> torch.Tensor:
    """Indices of the features of ``heads`` in a ``(H * head_size)`` projection: ``(len(heads) * head_size,)``."""
    return torch.tensor([h * head_size + j for h in heads for j in range(head_size)], dtype=torch.long)


def take_rows(linear, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Output rows ``idx`` of a Linear (weight is (out, in)) and of its bias, if any."""
    bias = None if linear.bias is None else linear.bias.data[idx].clone()
    return linear.weight.data[idx].clone(), bias


def take_columns(linear: nn.Linear, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Input columns ``idx`` of a Linear; the bias (per output) stays whole."""
    return linear.weight.data[:, idx].clone(), None if linear.bias is None else linear.bias.data.clone()


def copy_into(linear: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None, like: nn.Linear) -> None:
    """Load ``weight`` (and ``bias``) into a freshly built Linear, on ``like``'s device and dtype."""
    linear.to(device=like.weight.device, dtype=like.weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)


def bert_named_dims(family: str, config, **terms) -> ModelDims:
    """:class:`ModelDims` of a config that uses BERT's field names (``hidden_size``, ...), plus layout ``terms``."""
    return ModelDims(
        family=family,
        hidden=config.hidden_size,
        num_heads=config.num_attention_heads,
        head_size=config.hidden_size // config.num_attention_heads,
        ffn=config.intermediate_size,
        num_layers=config.num_hidden_layers,
        vocab_size=config.vocab_size,
        max_positions=config.max_position_embeddings,
        type_vocab_size=getattr(config, "type_vocab_size", 0),
        num_labels=config.num_labels,
        **terms,
    )


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
    #: What the classifier reads: ``"text"`` (token ids, padded) or ``"image"`` (pixel values).
    #: The data layer builds batches for it; a task of the other kind is refused.
    modality: str = "text"
    #: The transformers Auto class that loads the family's classifiers (named in saved ``auto_map``).
    auto_class: str = "AutoModelForSequenceClassification"
    #: The input every batch holds, one row per example.
    main_input: str = "input_ids"
    #: Methods the family cannot run, each with the reason (see :meth:`require`).
    refused: dict[str, str] = {}
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

    # --- batches (what methods read instead of naming input tensors) -------------------------
    def batch_rows(self, batch: dict) -> int:
        """Examples in a batch."""
        return len(batch[self.main_input])

    def padding_mask(self, batch: dict) -> torch.Tensor | None:
        """``(B, T)`` 1 = real token, 0 = padding, or ``None`` when nothing is padded."""
        return batch.get("attention_mask")

    def token_mask(self, batch: dict, hidden: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` 0/1 mask of the tokens of the embedded ``hidden`` ``(B, T, d)`` that are real."""
        mask = self.padding_mask(batch)
        return torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device) if mask is None else mask

    def tokens(self, model: nn.Module, batch: dict) -> int:
        """Real (non-padding) tokens in a batch."""
        mask = self.padding_mask(batch)
        return int(mask.sum()) if mask is not None else int(batch[self.main_input].numel())

    def embed_batch(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """The embedded batch ``(B, T, hidden)`` (:meth:`embed` on the batch's own inputs)."""
        return self.embed(model, batch["input_ids"], batch.get("token_type_ids"))

    def forward_batch(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """Logits ``(B, num_labels)`` of a batch through the adapter's own layer loop."""
        hidden = self.embed_batch(model, batch)
        mask = self.layer_mask(model, hidden, self.padding_mask(batch))
        for layer in self.layers(model):
            hidden = self.run_layer(layer, hidden, mask)
        return self.classify(model, hidden)

    def random_inputs(self, config, *, batch: int, seed: int = 0) -> dict:
        """Seeded random inputs of an image family (text families: ``slimformer.bench.make_bench_inputs``)."""
        raise NotImplementedError(f"{self.family}: random token inputs come from slimformer.bench.make_bench_inputs")

    def require(self, method: str) -> None:
        """Raise ``ValueError`` saying why, when ``method`` (e.g. ``"skim"``) cannot run on this family."""
        if method in self.refused:
            raise ValueError(f"{method} is not available for {self.family} models: {self.refused[method]}")

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

    def ffn_input(self, layer: nn.Module) -> nn.Module:
        """The module whose input is the residual stream the FFN adds to (post-norm: ``fc_in`` itself)."""
        return layer.get_submodule(self.paths["fc_in"])

    # --- surgery ----------------------------------------------------------------------------
    @torch.no_grad()
    def shrink_layer(self, layer: nn.Module, heads: Sequence[int], neurons: Sequence[int], dims: ModelDims) -> None:
        """Keep only attention ``heads`` and FFN ``neurons`` of one layer (in the order given), in place."""
        att, ffn = self.attention(layer), self.ffn(layer)
        cols = head_columns(heads, dims.head_size)  # (width,)
        idx = torch.tensor(list(neurons), dtype=torch.long)
        saved = {name: take_rows(getattr(att, name), cols) for name in ("q", "k", "v") if heads}
        saved["o"], saved["fc_out"] = take_columns(att.o, cols), take_columns(ffn.fc_out, idx)
        saved["fc_in"] = take_rows(ffn.fc_in, idx)
        like = att.o
        reshape_layer(layer, self.paths, heads=len(heads), ffn=len(idx), head_size=dims.head_size, hidden=dims.hidden)
        new_att, new_ffn = self.attention(layer), self.ffn(layer)
        for name, (w, b) in saved.items():
            target = {"fc_in": new_ffn.fc_in, "fc_out": new_ffn.fc_out}.get(name) or getattr(new_att, name)
            copy_into(target, w, b, like)

    def keep_layers(self, model: nn.Module, keep: Sequence[bool]) -> None:
        """Drop the layers whose ``keep`` is False, and record the new count in the config."""
        layers = self.layers(model)
        kept = nn.ModuleList([layer for layer, k in zip(layers, keep, strict=True) if k])
        model.set_submodule(self.paths["layers"], kept)
        setattr(model.config, self.paths["n_layers"], len(kept))

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

    def final_states(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """The last layer's output as the base model returns it (a family with a final norm applies it)."""
        return hidden  # (B, T, hidden)

    def classify(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Classification head on the final hidden states: ``(B, T, hidden) -> (B, num_labels)``.

        A token classifier (:func:`slimformer.tasks.is_token_classifier`) gives per-token logits
        ``(B, T, num_labels)`` instead (see :meth:`classify_tokens`).
        """
        raise NotImplementedError

    def classify_tokens(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """A token classifier's head: ``(B, T, hidden) -> (B, T, num_labels)``."""
        return model.classifier(model.dropout(self.final_states(model, hidden)))

    def forward_without_layers(self, model: nn.Module, inputs: dict) -> torch.Tensor:
        """Logits of ``model`` with every layer removed: the cost that no layer count avoids."""
        return model(**inputs).logits

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
