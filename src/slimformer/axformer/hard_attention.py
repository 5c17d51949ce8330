"""Selective hard attention: chosen layers attend only to the top-k keys of each query.

The attention itself lives in :mod:`slimformer.hf_remote.modeling_slimformer` (``topk_attention``,
``TopKSelfAttention``), the self-contained file saved next to every model, so a saved model
reproduces it when loaded with slimformer or with plain transformers (``trust_remote_code``).
This module is the API: switch layers on and off, read the settings back, keep the config in step.

The config records the settings as ``config.slimformer_topk = {"<origin>": k}``, keyed by each
layer's index in the original model, so removing layers later (surgery) does not shift them.

Cost, honestly: the scores are still computed for every query-key pair, and the selection adds a
top-k per query on top; the multiply-accumulates do not change (the cost model counts them as
dense) and on a CPU a top-k layer is slower than the fused dense attention it replaces. Its value
is accuracy, not speed; ``benchmarks/axformer.py`` measures what it costs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from torch import nn

from slimformer.arch import get_adapter
from slimformer.hf_remote.modeling_slimformer import (
    SLIM_KEY,
    TOPK_KEY,
    TopKSelfAttention,
    check_topk,
    set_layer_topk,
    topk_attention,
)
from slimformer.structure import Structure

logger = logging.getLogger(__name__)

TopK = int | float  # a count of keys per query (int >= 1) or a fraction of the sequence (float in (0, 1))


def hard_attention_of(model: nn.Module) -> dict[int, TopK]:
    """``{layer index: k}`` of the present layers that use hard attention (read off the modules)."""
    adapter = get_adapter(model)
    out = {}
    for i, layer in enumerate(adapter.layers(model)):
        core = layer.get_submodule(adapter.paths["core"])
        if isinstance(core, TopKSelfAttention):
            out[i] = core.topk
    return out


def set_hard_attention(model: nn.Module, topk: Mapping[int, TopK | None]) -> nn.Module:
    """Switch layers to hard attention, in place; layers not named keep their setting.

    Args:
        model: a sequence classifier of a supported family (pruned or not).
        topk: present layer index -> ``k`` (an int >= 1: keys per query; a float in (0, 1): that
            fraction of each sequence's real tokens, rounded up) or ``None`` for dense attention.
            A layer whose attention sublayer was removed has nothing to sparsify and is skipped.

    Returns:
        The model. Its config records the settings, so :func:`slimformer.export.save_model`
        writes a folder that reproduces them on load.

    Raises:
        ValueError: a layer index out of range, an invalid ``k``, or a family without hard attention.
    """
    adapter = get_adapter(model)
    layers = adapter.layers(model)
    head_size = adapter.dims(model.config).head_size
    for i, k in topk.items():
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(layers):
            raise ValueError(f"topk: layer index {i!r} out of range; the model has layers 0..{len(layers) - 1}")
        if k is not None:
            check_topk(k)
    if any(k is not None for k in topk.values()):
        adapter.require("hard_attention")
    for i, k in topk.items():
        if not set_layer_topk(layers[i], adapter.paths, k, head_size=head_size) and k is not None:
            logger.info("layer %d has no attention heads; hard attention not applied", i)
    sync_config(model)
    return model


def clear_hard_attention(model: nn.Module) -> nn.Module:
    """Every layer back to dense attention, in place."""
    return set_hard_attention(model, dict.fromkeys(hard_attention_of(model)))


def sync_config(model: nn.Module) -> None:
    """Write the modules' top-k settings into ``config.slimformer_topk`` (keyed by original layer).

    A model with hard attention must load through slimformer's classes, so its config also gets
    the per-layer shapes record (``config.slimformer``) when it has none yet.
    """
    settings = hard_attention_of(model)
    structure = Structure.from_model(model)
    if settings and not getattr(model.config, SLIM_KEY, None):
        setattr(model.config, SLIM_KEY, structure.to_config_spec())
    record = {str(structure.layers[i].origin): k for i, k in sorted(settings.items())}
    if record or getattr(model.config, TOPK_KEY, None):
        setattr(model.config, TOPK_KEY, record)


__all__ = [
    "TopK",
    "TopKSelfAttention",
    "clear_hard_attention",
    "hard_attention_of",
    "set_hard_attention",
    "sync_config",
    "topk_attention",
]
