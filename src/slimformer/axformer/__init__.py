"""AxFormer: accuracy-driven pruning and selective hard (top-k) attention, searched on validation data.

    from slimformer.axformer import AxConfig, axformer, validation_batches
    batches = validation_batches(task.split("validation"), tokenizer)
    result = axformer(model, AxConfig(budget="macs=0.5"), batches)   # or AxConfig() for the most accurate
    save_model(result.model, tokenizer, "out")                       # top-k settings save with it

Importing this package is light (the CLI registers its command without loading torch); the names
below load on first use.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "AxConfig": "slimformer.axformer.config",
    "AxResult": "slimformer.axformer.search",
    "axformer": "slimformer.axformer.search",
    "score_batches": "slimformer.axformer.search",
    "validation_batches": "slimformer.axformer.search",
    "clear_hard_attention": "slimformer.axformer.hard_attention",
    "hard_attention_of": "slimformer.axformer.hard_attention",
    "set_hard_attention": "slimformer.axformer.hard_attention",
    "topk_attention": "slimformer.axformer.hard_attention",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'slimformer.axformer' has no attribute {name!r}")
