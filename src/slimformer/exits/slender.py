"""Slenderize: reduce width (attention heads, FFN neurons) under a budget, keeping every layer.

The one-shot machinery of :mod:`slimformer.static` does the work: OPTIN or Fisher importance on
calibration batches, budgeted selection, physical surgery, least-squares repair. Every layer
stays (an exit sits after each one), so selection only thins layers. The result is a plain
classifier with uneven per-layer shapes that saves and loads like any pruned model, and that
:func:`slimformer.exits.early_exit` then trains jointly with its exits.

A multi-exit model can be slenderized too: its backbone is thinned and its exit heads are kept
(they read the hidden states, whose size does not change).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

from slimformer.exits.config import SlenderConfig

logger = logging.getLogger(__name__)


@dataclass
class SlenderResult:
    """The slender model and a JSON-ready report (the pruning report plus the config)."""

    model: Any
    report: dict


def slenderize(model, config: SlenderConfig, data, *, progress: bool = True) -> SlenderResult:
    """A narrower copy of ``model`` that fits ``config.budget``; ``model`` is left unchanged.

    Args:
        model: a fine-tuned sequence classifier, or a :class:`~slimformer.exits.model.MultiExitModel`.
        config: budget and importance method.
        data: tokenized calibration batches with labels
            (:func:`slimformer.static.calibration_batches`).
        progress: show progress bars.

    Returns:
        :class:`SlenderResult`; ``result.model`` has the same class as ``model``.

    Raises:
        slimformer.budget.InfeasibleBudget: the budget is below the smallest model with every layer.
        ValueError: a bad config or empty calibration data.
    """
    from slimformer.exits.model import MultiExitModel
    from slimformer.static import FisherConfig, OptinConfig, prune

    if not isinstance(config, SlenderConfig):
        raise ValueError(f"config={config!r}: must be a SlenderConfig")
    if not data:
        raise ValueError("slenderize needs calibration batches (slimformer.static.calibration_batches)")
    cls = {"optin": OptinConfig, "fisher": FisherConfig}[config.method]
    prune_config = cls(budget=config.budget, repair=config.repair, seed=config.seed)
    if isinstance(model, MultiExitModel):
        result = prune(model.backbone, prune_config, data, progress=progress)
        slender = copy.deepcopy(model)
        slender.backbone = result.model
        slender.config = result.model.config
        slender.eval()
    else:
        result = prune(model, prune_config, data, progress=progress)
        slender = result.model
    report = {"slender": config.to_dict(), **result.report}
    logger.info(
        "slenderized to %s: MACs %.1f%%, params %.1f%% of the input; layers kept: %d",
        config.budget, 100 * report["relative"]["macs"], 100 * report["relative"]["params"], len(report["layers"]),
    )  # fmt: skip
    return SlenderResult(model=slender, report=report)
