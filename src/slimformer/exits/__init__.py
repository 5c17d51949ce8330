"""Slenderized multi-exit models: narrower, leaving early, and fast in batches.

    from slimformer.exits import (CalibrateConfig, ExitConfig, SlenderConfig, calibrate_rule, early_exit,
                                  save_exit, slenderize, training_batches)
    thin = slenderize(model, SlenderConfig(budget="macs=0.4,seq=48"), calibration_batches(...)).model
    result = early_exit(thin, ExitConfig(), training_batches(train, tokenizer), teacher=model)
    calibrate_rule(result.model, validation_batches, CalibrateConfig(rule="entropy", value=0.01))
    save_exit(result.model, tokenizer, "out/")          # slimformer.models.load_model("out/") gives it back

Importing this package is light (the CLI registers its commands without loading torch); the names
below load on first use.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "CalibrateConfig": "slimformer.exits.config",
    "ExitConfig": "slimformer.exits.config",
    "ExitRule": "slimformer.exits.config",
    "SlenderConfig": "slimformer.exits.config",
    "ExitOutput": "slimformer.exits.model",
    "MultiExitModel": "slimformer.exits.model",
    "exit_cost_table": "slimformer.exits.model",
    "expected_macs": "slimformer.exits.model",
    "ExitResult": "slimformer.exits.train",
    "early_exit": "slimformer.exits.train",
    "slender_exit": "slimformer.exits.train",
    "training_batches": "slimformer.exits.train",
    "SlenderResult": "slimformer.exits.slender",
    "slenderize": "slimformer.exits.slender",
    "CalibrationResult": "slimformer.exits.calibrate",
    "calibrate_rule": "slimformer.exits.calibrate",
    "candidates": "slimformer.exits.calibrate",
    "choose": "slimformer.exits.calibrate",
    "collect_exits": "slimformer.exits.calibrate",
    "simulate": "slimformer.exits.calibrate",
    "sweep": "slimformer.exits.calibrate",
    "load_exit": "slimformer.exits.saving",
    "save_exit": "slimformer.exits.saving",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'slimformer.exits' has no attribute {name!r}")
