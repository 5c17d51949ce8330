"""ModernBERT sequence classifiers: pre-norm layers with a fused ``Wqkv``, a GLU feed-forward,
rotary positions, alternating local (sliding window) and global attention, and no biases.

The fused projections are shown to methods as row blocks (:class:`~slimformer.arch.base.LinearRows`):
``Wqkv`` holds the q, k and v rows in that order, each ``heads * head_size`` wide, and the GLU's
``Wi`` holds one value row and one gate row per neuron (values first, then gates), so removing a
head takes its slice of each of q, k and v, and removing a neuron takes its pair of rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from slimformer.arch.base import (
    ArchAdapter,
    AttentionView,
    FFNView,
    LinearRows,
    ModelDims,
    bert_named_dims,
    copy_into,
    head_columns,
    take_columns,
    take_rows,
)
from slimformer.hf_remote.modeling_slimformer import HeadlessAttention, reshape_layer
from slimformer.tasks import is_token_classifier

POSITIONS = (
    "its rotary position embeddings and sliding-window attention depend on each token's position, "
    "which dropping tokens mid-network would change"
)


@dataclass(frozen=True)
class LayerInputs:
    """What every ModernBERT layer needs besides its hidden states, per attention type.

    ``masks`` and ``rotary`` are keyed by ``"full_attention"`` / ``"sliding_attention"``: the
    additive (or ``None``) attention masks and the ``(cos, sin)`` rotary tables, each ``(B, T, s)``.
    """

    masks: dict
    rotary: dict

    def dim(self) -> int:
        return 4  # like the (B, 1, T, T) mask it stands for

    def repeat(self, copies: int, *ones: int) -> LayerInputs:
        """Masks for ``copies`` stacked copies of the batch (as ``Tensor.repeat`` along the batch)."""
        masks = {k: None if m is None else m.repeat(copies, *([1] * (m.dim() - 1))) for k, m in self.masks.items()}
        return LayerInputs(masks, self.rotary)  # rotary tables are (1, T, s): they broadcast


class ModernBertAdapter(ArchAdapter):
    family = "modernbert"
    model_types = ("modernbert",)
    head_paths = ("head", "classifier")  # dense + activation + norm, then the output layer
    # exit heads start random: the head is dense + GELU + norm, not the exits' dense + tanh
    refused = {
        "skim": f"token skimming drops tokens between layers, and {POSITIONS}",
        "fused_onnx_attention": "onnxruntime's Attention op has no rotary positions or local window; "
        "the portable ONNX export (ExportConfig(optimize=False)) works",
    }

    def dims(self, config) -> ModelDims:
        biases = {config.attention_bias, config.mlp_bias, config.classifier_bias}
        if len(biases) != 1:
            raise ValueError(
                f"attention_bias={config.attention_bias}, mlp_bias={config.mlp_bias}, "
                f"classifier_bias={config.classifier_bias}: the cost model needs all three equal"
            )
        terms = {"gated_ffn": True, "biases": biases.pop(), "norm_size": 2 if config.norm_bias else 1}
        return bert_named_dims(self.family, config, **terms, pre_norm=True, position_table=False)

    def tiny_config(self, *, layers: int = 3, num_labels: int = 3):
        from transformers import ModernBertConfig

        # a window of 4 tokens (2 either side) so that local attention differs from global on
        # the tests' 7-token inputs; every third layer is global, starting with the first
        return ModernBertConfig(
            vocab_size=99,
            hidden_size=32,
            num_hidden_layers=layers,
            num_attention_heads=4,
            intermediate_size=37,
            max_position_embeddings=64,
            local_attention=4,
            global_attn_every_n_layers=3,
            num_labels=num_labels,
            pad_token_id=0,
            bos_token_id=2,
            cls_token_id=2,
            eos_token_id=3,
            sep_token_id=3,
        )

    def position_offset(self, config) -> int:
        return 0

    # --- structure -------------------------------------------------------------------------
    def attention(self, layer: nn.Module) -> AttentionView:
        core, out = layer.attn, layer.attn.Wo
        if isinstance(core, HeadlessAttention) or type(core).__name__ == HeadlessAttention.__name__:
            return AttentionView(None, None, None, out, 0, 0)
        s, width = layer.config.hidden_size // layer.config.num_attention_heads, out.in_features
        q, k, v = (LinearRows(core.Wqkv, i * width, width) for i in range(3))
        return AttentionView(q, k, v, out, width // s, s)

    def ffn(self, layer: nn.Module) -> FFNView:
        wi, wo = layer.mlp.Wi, layer.mlp.Wo
        width = wo.in_features
        return FFNView(LinearRows(wi, 0, width), wo, gate=LinearRows(wi, width, width))

    def ffn_input(self, layer: nn.Module) -> nn.Module:
        return layer.mlp_norm  # pre-norm: the FFN's residual stream goes into its norm, not into Wi

    @torch.no_grad()
    def shrink_layer(self, layer: nn.Module, heads, neurons, dims: ModelDims) -> None:
        att, ffn = self.attention(layer), self.ffn(layer)
        cols = head_columns(heads, dims.head_size)  # (width,) within one of q, k, v
        width, n_ffn = att.o.in_features, ffn.width
        idx = torch.tensor(list(neurons), dtype=torch.long)
        saved = {"o": take_columns(att.o, cols), "fc_in": take_rows(ffn.fc_in.linear, torch.cat([idx, idx + n_ffn]))}
        saved["fc_out"] = take_columns(ffn.fc_out, idx)
        if heads:
            saved["qkv"] = take_rows(att.q.linear, torch.cat([cols + i * width for i in range(3)]))
        like = att.o
        reshape_layer(layer, self.paths, heads=len(heads), ffn=len(idx), head_size=dims.head_size, hidden=dims.hidden)
        for name, (w, b) in saved.items():
            copy_into(layer.get_submodule(self.paths[name]), w, b, like)

    def keep_layers(self, model: nn.Module, keep) -> None:
        # each layer keeps its attention type: the config lists one per present layer
        types = [t for t, k in zip(model.config.layer_types, keep, strict=True) if k]
        super().keep_layers(model, keep)
        model.config.layer_types = types

    # --- forward pieces ----------------------------------------------------------------------
    def base_model(self, model):
        return model.model

    def embed(self, model, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None):
        return self.base_model(model).embeddings(input_ids=input_ids)  # (B, T, hidden), normed

    def layer_mask(self, model, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> LayerInputs:
        from transformers.masking_utils import create_bidirectional_mask, create_bidirectional_sliding_window_mask

        base = self.base_model(model)
        kwargs = {"config": base.config, "inputs_embeds": hidden, "attention_mask": attention_mask}
        masks = {
            "full_attention": create_bidirectional_mask(**kwargs),
            "sliding_attention": create_bidirectional_sliding_window_mask(**kwargs),
        }
        positions = torch.arange(hidden.shape[1], device=hidden.device)[None]  # (1, T)
        rotary = {t: base.rotary_emb(hidden, positions, t) for t in set(base.config.layer_types)}
        return LayerInputs(masks, rotary)

    def run_layer(self, layer: nn.Module, hidden: torch.Tensor, mask: LayerInputs) -> torch.Tensor:
        kind = layer.attention_type
        return layer(hidden, attention_mask=mask.masks[kind], position_embeddings=mask.rotary[kind])

    def final_states(self, model, hidden: torch.Tensor) -> torch.Tensor:
        return self.base_model(model).final_norm(hidden)  # (B, T, hidden): ModernBERT ends in a norm

    def classify_tokens(self, model, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.final_states(model, hidden)  # (B, T, hidden)
        return model.classifier(model.drop(model.head(hidden)))  # (B, T, num_labels)

    def classify(self, model, hidden: torch.Tensor) -> torch.Tensor:
        if is_token_classifier(model):
            return self.classify_tokens(model, hidden)  # (B, T, num_labels)
        pooling = model.config.classifier_pooling
        if pooling != "cls":
            raise ValueError(
                f"classifier_pooling={pooling!r}: slimformer's layer loop pools the first token only "
                "('cls'); mean pooling needs the padding mask inside the head"
            )
        hidden = self.final_states(model, hidden)  # (B, T, hidden)
        return model.classifier(model.drop(model.head(hidden[:, 0])))  # (B, num_labels)
