"""Token skimming (Transkimmer-style), with real removal of skimmed tokens at inference.

    from slimformer.skim import SkimConfig, skim, save_skim, calibrate_shift, tokenized_batches
    result = skim(model, SkimConfig(skim_weight=0.5, max_length=128), task, tokenizer=tokenizer)
    calibrate_shift(result.model, tokenized_batches(task.split("validation"), tokenizer), keep=0.3)
    save_skim(result.model, tokenizer, "out")      # slimformer.models.load_model("out") loads it

Importing this package is light (the CLI registers its commands without loading torch); the names
below load on first use.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "SkimConfig": "slimformer.skim.config",
    "SkimResult": "slimformer.skim.train",
    "skim": "slimformer.skim.train",
    "build_skim_model": "slimformer.skim.model",
    "is_skim_model": "slimformer.skim.model",
    "SkimPredictor": "slimformer.skim.model",
    "SkimOutput": "slimformer.skim.model",
    "SKIM_CLASSES": "slimformer.skim.model",
    "calibrate_shift": "slimformer.skim.calibrate",
    "measure_skim": "slimformer.skim.measure",
    "run_skim": "slimformer.skim.measure",
    "summarize": "slimformer.skim.measure",
    "skim_macs": "slimformer.skim.measure",
    "tokenized_batches": "slimformer.skim.measure",
    "save_skim": "slimformer.skim.saving",
    "load_skim": "slimformer.skim.saving",
    "is_skim_folder": "slimformer.skim.saving",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'slimformer.skim' has no attribute {name!r}")
