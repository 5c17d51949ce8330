"""ViT / DeiT image classifiers (``ViTForImageClassification``, ``DeiTForImageClassification``).

Pixel values in, no padding mask: a Conv2d cuts the image into patches (one token each), a
[CLS] token (DeiT: and a distillation token) goes in front, a learned position table is added.
Pre-norm layers (``layernorm_before`` / ``layernorm_after``, present in every layer), a final
``layernorm``, and a Linear classifier on the [CLS] token. The projections are BERT's layout under
other names (``attention.q_proj`` ... ``mlp.fc2``, see ``FAMILY_PATHS["vit"]``), so surgery is the
base adapter's.
"""

from __future__ import annotations

import torch
from torch import nn

from slimformer.arch.base import ArchAdapter, AttentionView, ModelDims
from slimformer.hf_remote.modeling_slimformer import HeadlessAttention


class ViTAdapter(ArchAdapter):
    family = "vit"
    model_types = ("vit",)
    modality = "image"
    auto_class = "AutoModelForImageClassification"
    main_input = "pixel_values"
    head_paths = ("classifier",)  # the final layernorm is pretrained with the encoder
    #: Each refused method with the reason (see :meth:`ArchAdapter.require`).
    refused = {
        "skim": "patch dropping needs a skim predictor trained on images and a layer loop without "
        "padding masks; not built for image classifiers yet",
        "exits": "exit heads warm-start from a dense + tanh pooler head and train on token batches; "
        "not built for image classifiers yet",
        "slim": "differentiable slimming's training loop and vocabulary pruning read token batches; "
        "not built for image classifiers yet",
        "axformer": "the AxFormer search evaluates token batches; not built for image classifiers yet",
        "fused_onnx_attention": "onnxruntime's fused Attention export is written for BERT-style "
        "post-norm layers with a padding mask; the portable ONNX export (ExportConfig(optimize=False)) works",
    }
    special_tokens = 1  # [CLS]

    def dims(self, config) -> ModelDims:
        if not getattr(config, "qkv_bias", True):
            raise ValueError(f"{self.family}: qkv_bias=False is not supported (surgery rebuilds q/k/v with biases)")
        if getattr(config, "head_dim", None) not in (None, config.hidden_size // config.num_attention_heads):
            raise ValueError(f"{self.family}: head_dim={config.head_dim} != hidden_size / num_attention_heads")
        size, patch = _pair(config.image_size), _pair(config.patch_size)
        num_patches = (size[0] // patch[0]) * (size[1] // patch[1])
        return ModelDims(
            family=self.family,
            hidden=config.hidden_size,
            num_heads=config.num_attention_heads,
            head_size=config.hidden_size // config.num_attention_heads,
            ffn=config.intermediate_size,
            num_layers=config.num_hidden_layers,
            vocab_size=0,
            max_positions=num_patches + self.special_tokens,
            type_vocab_size=0,
            num_labels=config.num_labels,
            patch_inputs=config.num_channels * patch[0] * patch[1],
            num_patches=num_patches,
            special_tokens=self.special_tokens,
        )

    def tiny_config(self, *, layers: int = 3, num_labels: int = 3):
        """A tiny ViT: 16 x 16 RGB images in 4 x 4 patches (17 tokens), hidden 32, 4 heads, FFN 37."""
        from transformers import ViTConfig

        return ViTConfig(
            image_size=16,
            patch_size=4,
            num_channels=3,
            hidden_size=32,
            num_hidden_layers=layers,
            num_attention_heads=4,
            intermediate_size=37,
            num_labels=num_labels,
        )

    def input_names(self, config) -> tuple[str, ...]:
        return ("pixel_values",)

    def position_offset(self, config) -> int:
        return 0

    def seq_len(self, config) -> int:
        """Tokens per image: patches plus special tokens (fixed by the image size)."""
        return self.dims(config).max_positions

    # --- structure -------------------------------------------------------------------------
    def attention(self, layer: nn.Module) -> AttentionView:
        core = layer.attention
        if isinstance(core, HeadlessAttention) or type(core).__name__ == HeadlessAttention.__name__:
            return AttentionView(None, None, None, core.o_proj, 0, 0)
        s = core.head_dim
        return AttentionView(core.q_proj, core.k_proj, core.v_proj, core.o_proj, core.q_proj.out_features // s, s)

    def ffn_input(self, layer: nn.Module) -> nn.Module:
        return layer.layernorm_after  # pre-norm: the FFN's residual stream goes into its norm

    # --- batches ---------------------------------------------------------------------------
    def padding_mask(self, batch: dict) -> torch.Tensor | None:
        return None  # every patch is real

    def tokens(self, model: nn.Module, batch: dict) -> int:
        return self.batch_rows(batch) * self.seq_len(model.config)

    def embed_batch(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return self.embed(model, batch["pixel_values"])

    def random_inputs(self, config, *, batch: int, seed: int = 0) -> dict:
        """Seeded random ``pixel_values`` ``(B, C, H, W)``."""
        g = torch.Generator().manual_seed(seed)
        h, w = _pair(config.image_size)
        return {"pixel_values": torch.randn(batch, config.num_channels, h, w, generator=g)}

    # --- forward pieces ----------------------------------------------------------------------
    def base_model(self, model: nn.Module) -> nn.Module:
        return getattr(model, self.family)

    def embed(self, model: nn.Module, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None):
        """Patch + [CLS] + position embeddings: pixel values ``(B, C, H, W) -> (B, T, hidden)``."""
        emb = self.base_model(model).embeddings
        return emb(input_ids.to(emb.patch_embeddings.projection.weight.dtype))

    def layer_mask(self, model: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor | None):
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError(f"{self.family}: image classifiers take no padding mask (every patch is a token)")
        return None

    def final_states(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return self.base_model(model).layernorm(hidden)  # (B, T, hidden)

    def classify(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return model.classifier(self.final_states(model, hidden)[:, 0])  # (B, num_labels) from [CLS]

    def forward(self, model, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """Logits of pixel values (passed as ``input_ids``) through the adapter's layer loop."""
        return self.forward_batch(model, {"pixel_values": input_ids})


class DeiTAdapter(ViTAdapter):
    """DeiT (``DeiTForImageClassification``): ViT's layers plus a distillation token after [CLS].

    The classifier reads [CLS] only; ``DeiTForImageClassificationWithTeacher`` (two heads) is not
    supported.
    """

    family = "deit"
    model_types = ("deit",)
    special_tokens = 2  # [CLS] and the distillation token

    def tiny_config(self, *, layers: int = 3, num_labels: int = 3):
        from transformers import DeiTConfig

        fields = super().tiny_config(layers=layers, num_labels=num_labels).to_dict()
        keep = {k: fields[k] for k in ("image_size", "patch_size", "num_channels", "hidden_size")}
        return DeiTConfig(
            **keep,
            num_hidden_layers=layers,
            num_attention_heads=4,
            intermediate_size=37,
            num_labels=num_labels,
            # the Auto class maps "deit" to two classifiers; name the one with a single head
            architectures=["DeiTForImageClassification"],
        )


def _pair(x) -> tuple[int, int]:
    return (int(x[0]), int(x[1])) if isinstance(x, (list, tuple)) else (int(x), int(x))
