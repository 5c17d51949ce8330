"""slimformer: make fine-tuned transformer encoders smaller and faster, within a budget.

Importing this package is light: torch, transformers and data load only when a name below is used.

    from slimformer import load_model, Structure, cost_of, KeepPlan, apply_plan, save_model
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name -> module that defines it (imported on first use)
_LAZY = {
    "load_model": "slimformer.models",
    "load_task": "slimformer.data",
    "Structure": "slimformer.structure",
    "cost_of": "slimformer.cost",
    "marginal_costs": "slimformer.cost",
    "KeepPlan": "slimformer.surgery",
    "apply_plan": "slimformer.surgery",
    "masked": "slimformer.surgery",
    "save_model": "slimformer.export",
    "load_slim": "slimformer.export",
    "FinetuneConfig": "slimformer.train",
    "finetune": "slimformer.train",
    "BenchConfig": "slimformer.bench",
    "bench_model": "slimformer.bench",
    "bench_models": "slimformer.bench",
    "get_adapter": "slimformer.arch",
    "Budget": "slimformer.budget",
    "prune": "slimformer.static",
    "OptinConfig": "slimformer.static",
    "axformer": "slimformer.axformer",
    "AxConfig": "slimformer.axformer",
    "quantize_dynamic_int8": "slimformer.quantize",
    "to_bf16": "slimformer.quantize",
    "compress": "slimformer.compose",
    "parse_recipe": "slimformer.compose",
    "MethodData": "slimformer.methods",
    "batches": "slimformer.batching",
    "export_onnx": "slimformer.onnx_export",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'slimformer' has no attribute {name!r}")
