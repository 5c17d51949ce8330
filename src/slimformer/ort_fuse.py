"""Fused-attention ONNX graphs for onnxruntime, with each layer's own head count.

onnxruntime's transformer optimizer fuses LayerNorm and GELU in the graphs ``torch.onnx.export``
writes for transformers 5, but not attention: the exported subgraph is not a pattern its
``FusionAttention`` recognises, and one ``num_heads`` for the whole model could not describe a
pruned model whose layers keep different numbers of heads anyway. So slimformer does not look for
the pattern afterwards: before tracing, each layer's self-attention is swapped (in a copy of the
model) for :class:`FusedSelfAttention`, which computes the same thing in PyTorch and exports as
one ``com.microsoft`` ``Attention`` node with packed q/k/v weights, that layer's ``num_heads`` and
the 2-D padding mask. The optimizer then fuses the rest (skip-LayerNorm, bias-GELU, embeddings).

The fused file runs only on onnxruntime (it uses contrib operators); ``model.onnx`` stays the
portable one. Verification against PyTorch happens in :func:`slimformer.onnx_export.export_onnx`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from slimformer.onnx_runtime import OPT_FILE, OPT_INT8_FILE  # noqa: F401  (the file names live there)

logger = logging.getLogger(__name__)

CONTRIB_DOMAIN = "com.microsoft"
#: Added to the scores of padded keys by onnxruntime's Attention (its default ``mask_filter_value``).
MASK_FILTER = -10000.0
#: Operators quantized in a fused graph: projections, FFN matmuls, fused attention, embedding tables.
FUSED_INT8_OPS = ("MatMul", "Attention", "Gather")


class _PackedAttention(torch.autograd.Function):
    """``com.microsoft::Attention`` in PyTorch: packed q/k/v projection, masked softmax, context.

    ``forward`` is the reference the trace runs (and the op's documented semantics); ``symbolic``
    is what lands in the ONNX graph.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, key_mask, num_heads: int, scale: float):  # noqa: ARG004
        # unflatten/permute rather than view/transpose: with one head the tracer's peephole pass
        # fails on the view chain ("Argument passed to at() was not in the map")
        qkv = (x @ weight + bias).unflatten(-1, (3, num_heads, -1))  # (B, T, 3, H, s)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, T, s)
        scores = q @ k.transpose(-1, -2) * scale  # (B, H, T, T)
        scores = scores + (1.0 - key_mask[:, None, None, :].to(scores.dtype)) * MASK_FILTER
        context = scores.softmax(-1) @ v  # (B, H, T, s)
        return context.permute(0, 2, 1, 3).flatten(2)  # (B, T, H * s)

    @staticmethod
    def symbolic(g, x, weight, bias, key_mask, num_heads: int, scale: float):
        mask = g.op("Cast", key_mask, to_i=6)  # int32, as the op wants its mask_index
        out = g.op(
            f"{CONTRIB_DOMAIN}::Attention",
            x,
            weight,
            bias,
            mask,
            num_heads_i=num_heads,
            scale_f=scale,
            mask_filter_value_f=MASK_FILTER,
        )
        width = weight.type().sizes()[1] // 3 if weight.type().sizes() else None
        out.setType(x.type().with_sizes([None, None, width]))
        return out


class FusedSelfAttention(nn.Module):
    """A layer's self-attention as one fused op: ``(B, T, hidden) -> (B, T, H * s)``.

    Drop-in for a family's attention core (same call, same ``(output, None)`` return). When the
    family keeps its output projection inside the core (DistilBERT), pass it as ``out``.
    ``key_mask`` (the ``(B, T)`` 0/1 padding mask) must be set before each call: the exported
    op takes the raw mask, not the 4-D additive one the model builds.
    """

    def __init__(self, q: nn.Linear, k: nn.Linear, v: nn.Linear, *, num_heads: int, scale: float, out=None):
        super().__init__()
        if num_heads < 1 or q.out_features % num_heads:
            raise ValueError(f"num_heads={num_heads}: must be >= 1 and divide the projection width {q.out_features}")
        with torch.no_grad():
            weight = torch.cat([q.weight, k.weight, v.weight], 0).t().contiguous()  # (hidden, 3 * H * s)
            bias = torch.cat([q.bias, k.bias, v.bias])  # (3 * H * s,)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.num_heads, self.scale, self.out = num_heads, float(scale), out
        self.key_mask: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        if self.key_mask is None:
            raise RuntimeError("FusedSelfAttention.key_mask is unset: call it through FusedClassifier")
        context = _PackedAttention.apply(
            hidden_states, self.weight, self.bias, self.key_mask, self.num_heads, self.scale
        )
        if self.out is not None:
            context = self.out(context)  # (B, T, hidden)
        return context, None

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, width={self.weight.shape[1] // 3}, scale={self.scale:.4g}"


class FusedClassifier(nn.Module):
    """Positional inputs -> logits of a copy of ``model`` whose attention cores are fused.

    The input model is left untouched. Layers without heads keep their placeholder (no attention
    node at all). Every family of :mod:`slimformer.arch` whose adapter does not refuse
    ``fused_onnx_attention`` (ModernBERT does: rotary positions) is supported through its adapter.
    """

    def __init__(self, model: nn.Module, names: Sequence[str]):
        from slimformer.arch import get_adapter

        super().__init__()
        if "attention_mask" not in names:
            raise ValueError(f"the graph inputs {list(names)} lack attention_mask, which the fused op needs")
        adapter = get_adapter(model)
        adapter.require("fused_onnx_attention")
        self.model = copy.deepcopy(model).eval()
        self.names = list(names)
        self.fused: list[FusedSelfAttention] = []
        paths = adapter.paths
        inner_out = paths["o"].startswith(paths["core"] + ".")  # DistilBERT: out_lin lives in the core
        for layer in adapter.layers(self.model):
            view = adapter.attention(layer)
            if view.q is None:
                continue
            core = layer.get_submodule(paths["core"])
            scale = getattr(core, "scaling", view.head_size**-0.5)
            fused = FusedSelfAttention(
                view.q, view.k, view.v, num_heads=view.num_heads, scale=scale, out=view.o if inner_out else None
            )
            layer.set_submodule(paths["core"], fused)
            self.fused.append(fused)

    @property
    def heads(self) -> list[int]:
        """Heads of each fused attention node, in layer order."""
        return [f.num_heads for f in self.fused]

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        inputs = dict(zip(self.names, tensors, strict=True))
        for fused in self.fused:
            fused.key_mask = inputs["attention_mask"]
        try:
            return self.model(**inputs).logits  # (B, C)
        finally:
            for fused in self.fused:
                fused.key_mask = None


def optimize_fused(src: str | Path, dst: str | Path) -> dict[str, int]:
    """onnxruntime's transformer optimizer on a fused graph; returns the fused-operator counts.

    Attention is already fused (and the optimizer's attention search would only look for one
    ``num_heads``), so that fusion is off; skip-LayerNorm, bias-GELU and the embedding
    LayerNorm are fused by pattern.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_attention = False
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # the optimizer logs each fusion pass to the root logger
    try:
        optimized = optimize_model(str(src), model_type="bert", optimization_options=options, opt_level=0)
    finally:
        logging.disable(previous)
    optimized.save_model_to_file(str(dst))
    counts = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
    logger.info("optimized %s: %s", Path(dst).name, counts)
    return counts


def operator_counts(path: str | Path, ops: Sequence[str] = ("Attention", "QAttention")) -> dict[str, int]:
    """How many nodes of each of ``ops`` a graph has (to check that fusion happened)."""
    import onnx

    nodes = onnx.load(str(path), load_external_data=False).graph.node
    return {op: sum(n.op_type == op for n in nodes) for op in ops}
