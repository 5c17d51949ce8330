"""Static compression methods: importance -> mask under a budget -> surgery (weights removed)."""

from slimformer.static.prune import (
    METHODS,
    FisherConfig,
    MagnitudeConfig,
    OptinConfig,
    PruneConfig,
    PruneResult,
    RandomConfig,
    calibration_batches,
    prune,
    score,
)
from slimformer.static.prune import register as _register_scorer


def register(config_cls: type[PruneConfig], scorer: str) -> None:
    """Register a one-shot pruning method: its config class and its scorer ``"module:function"``.

    It becomes a method of :mod:`slimformer.methods` too (a recipe step, a pareto method).
    """
    from slimformer.method_runners import register_pruner

    _register_scorer(config_cls, scorer)
    register_pruner(config_cls)


__all__ = [
    "METHODS",
    "FisherConfig",
    "MagnitudeConfig",
    "OptinConfig",
    "PruneConfig",
    "PruneResult",
    "RandomConfig",
    "calibration_batches",
    "prune",
    "register",
    "score",
]
