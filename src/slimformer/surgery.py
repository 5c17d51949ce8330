"""Physical removal of heads, FFN neurons, whole sublayers and whole layers.

Static methods end here: importance and masks are intermediate, the user gets a plain model whose
weights are gone. The result keeps its class (e.g. ``BertForSequenceClassification``) and records
its per-layer shapes in ``config.slimformer`` so that :mod:`slimformer.export` saves a folder that
loads back, with slimformer or with plain transformers (``trust_remote_code=True``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from slimformer.arch import get_adapter
from slimformer.hf_remote.modeling_slimformer import SLIM_KEY
from slimformer.structure import Structure

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeepPlan:
    """Which units each present layer keeps; indices refer to the model as it is now.

    Attributes:
        heads: per layer, the sorted head indices to keep (empty = remove the attention sublayer).
        ffn: per layer, the sorted neuron indices to keep (empty = remove the FFN sublayer).
        layers: per layer, whether the layer stays at all (a removed layer becomes the identity).
    """

    heads: tuple[tuple[int, ...], ...]
    ffn: tuple[tuple[int, ...], ...]
    layers: tuple[bool, ...]

    @classmethod
    def full(cls, model) -> KeepPlan:
        """Keep everything (surgery with this plan changes nothing)."""
        st = Structure.from_model(model)
        return cls(
            heads=tuple(tuple(range(s.heads)) for s in st.layers),
            ffn=tuple(tuple(range(s.ffn)) for s in st.layers),
            layers=(True,) * st.num_layers,
        )

    @classmethod
    def from_masks(
        cls,
        head_masks: Sequence[torch.Tensor],
        ffn_masks: Sequence[torch.Tensor],
        layer_mask: Sequence[bool] | None = None,
    ) -> KeepPlan:
        """From 0/1 (or bool) masks, one tensor per layer; nonzero = keep."""
        heads = tuple(tuple(int(i) for i in torch.nonzero(m).flatten()) for m in head_masks)
        ffn = tuple(tuple(int(i) for i in torch.nonzero(m).flatten()) for m in ffn_masks)
        layers = tuple(bool(x) for x in layer_mask) if layer_mask is not None else (True,) * len(heads)
        return cls(heads, ffn, layers)

    @classmethod
    def removing(
        cls,
        model,
        *,
        heads: Mapping[int, Sequence[int]] | None = None,
        neurons: Mapping[int, Sequence[int]] | None = None,
        layers: Sequence[int] = (),
        attention: Sequence[int] = (),
        ffn: Sequence[int] = (),
    ) -> KeepPlan:
        """A plan that removes the named units and keeps the rest.

        Args:
            heads: layer index -> head indices to remove.
            neurons: layer index -> FFN neuron indices to remove.
            layers: whole layers to remove.
            attention: layers whose attention sublayer (every head) goes.
            ffn: layers whose FFN sublayer (every neuron) goes.

        Raises:
            ValueError: a layer, head or neuron index out of range (naming it and the range).
        """
        full = cls.full(model)
        n = len(full.layers)
        keep_h = [set(h) for h in full.heads]
        keep_f = [set(f) for f in full.ffn]
        keep_l = [True] * n

        def check_layer(i: int, what: str) -> None:
            if not 0 <= i < n:
                raise ValueError(f"{what}: layer index {i} out of range; the model has layers 0..{n - 1}")

        for i, hs in (heads or {}).items():
            check_layer(i, "heads")
            for h in hs:
                if h not in keep_h[i] and not 0 <= h < len(full.heads[i]):
                    raise ValueError(f"heads: layer {i} has heads 0..{len(full.heads[i]) - 1}, got {h}")
                keep_h[i].discard(h)
        for i, ns in (neurons or {}).items():
            check_layer(i, "neurons")
            for j in ns:
                if not 0 <= j < len(full.ffn[i]):
                    raise ValueError(f"neurons: layer {i} has neurons 0..{len(full.ffn[i]) - 1}, got {j}")
                keep_f[i].discard(j)
        for i in attention:
            check_layer(i, "attention")
            keep_h[i].clear()
        for i in ffn:
            check_layer(i, "ffn")
            keep_f[i].clear()
        for i in layers:
            check_layer(i, "layers")
            keep_l[i] = False
        return cls(tuple(tuple(sorted(h)) for h in keep_h), tuple(tuple(sorted(f)) for f in keep_f), tuple(keep_l))


@torch.no_grad()
def apply_plan(model: nn.Module, plan: KeepPlan) -> nn.Module:
    """Remove every unit the plan does not keep, in place, and return the model.

    Heads and neurons are sliced out of the weight matrices; a layer with no heads keeps only its
    output projection's bias (exactly what the masked layer computes), likewise a layer with no
    neurons; a removed layer is dropped from the layer list.

    Raises:
        ValueError: the plan does not match the model (layer count, index out of range).
    """
    adapter = get_adapter(model)
    before = Structure.from_model(model)
    n = before.num_layers
    if not (len(plan.heads) == len(plan.ffn) == len(plan.layers) == n):
        raise ValueError(
            f"plan covers {len(plan.heads)}/{len(plan.ffn)}/{len(plan.layers)} layers (heads/ffn/layers), "
            f"the model has {n}"
        )
    dims = before.dims
    layers = adapter.layers(model)
    for i, layer in enumerate(layers):
        shape = before.layers[i]
        keep_h, keep_f = list(plan.heads[i]), list(plan.ffn[i])
        bad = [h for h in keep_h if not 0 <= h < shape.heads] + [f for f in keep_f if not 0 <= f < shape.ffn]
        if bad or len(set(keep_h)) != len(keep_h) or len(set(keep_f)) != len(keep_f):
            raise ValueError(
                f"layer {i}: kept indices must be distinct and within 0..{shape.heads - 1} (heads) / "
                f"0..{shape.ffn - 1} (ffn); got heads {keep_h}, out of range {bad}"
            )
        if len(keep_h) == shape.heads and len(keep_f) == shape.ffn and keep_h == sorted(keep_h):
            if keep_f == sorted(keep_f):
                continue  # nothing removed, nothing reordered
        adapter.shrink_layer(layer, keep_h, keep_f, dims)
    if not all(plan.layers):
        adapter.keep_layers(model, plan.layers)
    after = Structure.from_model(model)
    origins = [s.origin for s, keep in zip(before.layers, plan.layers, strict=True) if keep]
    spec = after.to_config_spec()
    spec["origin"] = origins
    setattr(model.config, SLIM_KEY, spec)
    logger.info(
        "surgery: heads %d -> %d, ffn %d -> %d, layers %d -> %d",
        before.total_heads,
        after.total_heads,
        before.total_ffn,
        after.total_ffn,
        n,
        after.num_layers,
    )
    return model


@contextmanager
def masked(model: nn.Module, head_masks=None, ffn_masks=None, layer_mask=None):
    """Run the model with units masked (zeroed at their contribution), without removing them.

    Masks are per-layer tensors (1 = keep, 0 = mask; fractional values scale), either ``(H,)`` /
    ``(F,)`` for the whole batch or ``(B, 1, H)`` / ``(B, 1, F)`` per example. A masked head's
    output is zeroed before the output projection, a masked neuron's activation before the second
    FFN projection, and a masked layer returns its input unchanged. Removing the masked units with
    :func:`apply_plan` gives the same outputs.
    """
    adapter = get_adapter(model)
    layers = adapter.layers(model)
    handles = []

    def head_hook(mask: torch.Tensor, head_size: int):
        def hook(module, args):
            x = args[0]  # (B, T, H * s)
            # (H,) -> (H * s,), or per example (B, 1, H) -> (B, 1, H * s)
            scale = mask.to(x.dtype).repeat_interleave(head_size, dim=-1)
            return (x * scale, *args[1:])

        return hook

    def ffn_hook(mask: torch.Tensor):
        def hook(module, args):
            return (args[0] * mask.to(args[0].dtype), *args[1:])  # (B, T, F) * (F,)

        return hook

    def skip_hook(module, args, output):
        if isinstance(output, tuple):  # a layer that returns (hidden, attention) (DeBERTa) keeps its shape
            return (args[0], *output[1:])
        return args[0]  # the layer's input hidden states

    try:
        for i, layer in enumerate(layers):
            att = adapter.attention(layer)
            if head_masks is not None and att.num_heads:
                handles.append(att.o.register_forward_pre_hook(head_hook(head_masks[i], att.head_size)))
            if ffn_masks is not None:
                handles.append(adapter.ffn(layer).fc_out.register_forward_pre_hook(ffn_hook(ffn_masks[i])))
            if layer_mask is not None and not layer_mask[i]:
                handles.append(layer.register_forward_hook(skip_hook))
        yield model
    finally:
        for h in handles:
            h.remove()
