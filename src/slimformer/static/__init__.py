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
    register,
    score,
)

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
