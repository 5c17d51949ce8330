"""AxFormer's settings: one frozen dataclass, validated, round-tripping through JSON."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from slimformer.budget import Budget
from slimformer.hf_remote.modeling_slimformer import check_topk

#: Budget kinds the search can aim at (a latency budget would need a measured table per candidate).
BUDGET_KINDS = ("macs", "params", "memory")
TOLERANCE_FROM = ("previous", "start")


@dataclass(frozen=True, kw_only=True)
class AxConfig:
    """How AxFormer searches (see :func:`slimformer.axformer.axformer`).

    Without a budget the search runs to convergence for the most accurate model: it keeps every
    removal and every hard-attention switch that passes the acceptance test. With a budget it
    stops as soon as the budget is met; when the free removals are not enough, it then removes the
    units that raise the validation loss least per unit of budget saved (a forced removal).
    """

    budget: Budget | None = field(
        default=None,
        metadata={"help": "stop once this fits (macs=0.5, params=12M, memory=40MB); none: most accurate model"},
    )
    loss_tolerance: float = field(
        default=0.0,
        metadata={
            "help": "a removal is kept when the mean validation loss stays within this (nats, >= 0) of the reference"
        },
    )
    tolerance_from: str = field(
        default="previous",
        metadata={
            "help": "reference of the tolerance: previous (the loss before each removal) or start (the input "
            "model's loss: gains made earlier pay for later removals, the final loss stays within the tolerance)"
        },
    )
    max_worse_fraction: float = field(
        default=0.5,
        metadata={"help": "and when at most this share of the samples whose loss changes get worse, in [0, 1]"},
    )
    max_accuracy_drop: float | None = field(
        default=None,
        metadata={
            "help": "and when validation accuracy stays at least the input model's minus this (0: never below it; "
            "none: accuracy not checked). Forced removals of a budget are exempt"
        },
    )
    compensate: bool = field(
        default=False,
        metadata={
            "help": "evaluate every removal with its least-squares compensation: the kept units' output weights and "
            "the bias are refit so the sublayer's output on the validation tokens stays as close as it can to what "
            "it was (no labels); an accepted removal keeps its refit"
        },
    )
    repair: bool = field(
        default=True,
        metadata={
            "help": "after the search, refit the output projections of the smaller model by least squares to the "
            "input model's hidden states on the validation inputs (no labels); the refit is kept when the "
            "validation loss does not rise and accuracy stays at least the searched model's (or the guard's floor)"
        },
    )
    repair_ridge: float = field(
        default=1e-2,
        metadata={
            "help": "ridge of both refits (compensate, repair), relative to the mean squared unit activation (>= 0)"
        },
    )
    holdout: float = field(
        default=0.0,
        metadata={
            "help": "no budget only: share of the validation batches kept out of the search (0: none). After every "
            "accepted change the model is scored on them, and the search returns the longest prefix of its changes "
            "whose held-out loss stays within loss_tolerance of the input model's and whose held-out accuracy stays "
            "at least the input's (minus max_accuracy_drop when set): where to stop is judged on data the search "
            "did not select on"
        },
    )
    change_eps: float = field(
        default=1e-4, metadata={"help": "per-sample loss changes smaller than this (nats) count as unchanged"}
    )
    ffn: bool = field(default=True, metadata={"help": "search FFN sublayers and groups of their neurons"})
    attention: bool = field(default=True, metadata={"help": "search attention sublayers and single heads"})
    hard_attention: bool = field(default=True, metadata={"help": "search top-k attention per layer"})
    remove_layers: bool = field(
        default=True, metadata={"help": "try dropping a layer (LayerNorms too) once both its sublayers are gone"}
    )
    neuron_groups: int = field(
        default=8, metadata={"help": "FFN neurons of a layer are tried in this many groups, least important first"}
    )
    topk: tuple[int | float, ...] = field(
        default=(0.1, 0.25, 0.5),
        metadata={"help": "top-k settings tried per layer: ints are keys per query, floats in (0, 1) fractions"},
    )
    topk_min_gain: float = field(
        default=0.0,
        metadata={"help": "hard attention is switched on only if it lowers the validation loss by more than this"},
    )
    max_passes: int = field(
        default=4,
        metadata={
            "help": "passes over the layers (last to first); stops early when a pass changes nothing "
            "(budget mode: the passes before forced removals)"
        },
    )
    budget_step: float = field(
        default=0.1,
        metadata={"help": "budget mode: at most this fraction of the starting cost is forced out per ranking round"},
    )
    screen_fraction: float = field(
        default=0.25,
        metadata={"help": "budget mode: share of validation examples the forced removals are ranked on, in (0, 1]"},
    )
    reject_z: float = field(
        default=1.5,
        metadata={"help": "stop evaluating a candidate once it fails by this many standard errors (0: never)"},
    )
    eval_rows: int = field(
        default=128, metadata={"help": "sequences per forward pass when candidates are evaluated together"}
    )

    def __post_init__(self) -> None:
        if isinstance(self.budget, str):
            object.__setattr__(self, "budget", Budget.parse(self.budget))
        if self.budget is not None:
            if not isinstance(self.budget, Budget):
                raise ValueError(f"budget={self.budget!r}: must be None, a Budget or its text form such as 'macs=0.5'")
            if self.budget.kind not in BUDGET_KINDS:
                raise ValueError(f"budget={str(self.budget)!r}: AxFormer supports {', '.join(BUDGET_KINDS)} budgets")
        if isinstance(self.topk, list):
            object.__setattr__(self, "topk", tuple(self.topk))
        if not isinstance(self.topk, tuple):
            raise ValueError(f"topk={self.topk!r}: must be a tuple of ints >= 1 or floats in (0, 1)")
        for k in self.topk:
            try:
                check_topk(k)
            except ValueError as e:
                raise ValueError(f"topk={self.topk!r}: {e}") from None
        if self.tolerance_from not in TOLERANCE_FROM:
            raise ValueError(f"tolerance_from={self.tolerance_from!r}: must be one of {', '.join(TOLERANCE_FROM)}")
        for name in ("ffn", "attention", "hard_attention", "remove_layers", "compensate", "repair"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r}: must be true or false")
        _number(self, "loss_tolerance", low=0.0)
        _number(self, "max_worse_fraction", low=0.0, high=1.0)
        _number(self, "change_eps", low=0.0)
        _number(self, "repair_ridge", low=0.0)
        if self.max_accuracy_drop is not None:
            _number(self, "max_accuracy_drop", low=0.0, high=1.0)
        _number(self, "holdout", low=0.0, high=0.9)
        if self.holdout > 0 and self.budget is not None:
            raise ValueError(
                f"holdout={self.holdout!r} picks where a search without a budget stops; with budget="
                f"{str(self.budget)!r} the budget decides (set holdout=0)"
            )
        _number(self, "topk_min_gain", low=0.0)
        _number(self, "reject_z", low=0.0)
        _number(self, "budget_step", low=0.0, high=1.0, open_low=True)
        _number(self, "screen_fraction", low=0.0, high=1.0, open_low=True)
        for name in ("neuron_groups", "max_passes", "eval_rows"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r}: must be an integer >= 1")

    @property
    def mode(self) -> str:
        """``"accuracy"`` (no budget: run to convergence) or ``"budget"``."""
        return "accuracy" if self.budget is None else "budget"

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["budget"] = None if self.budget is None else str(self.budget)
        out["topk"] = list(self.topk)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AxConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming the allowed ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"axformer: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
        return cls(**data)


def _number(config, name: str, *, low: float, high: float | None = None, open_low: bool = False) -> None:
    v = getattr(config, name)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    ok = ok and (v > low if open_low else v >= low) and (high is None or v <= high)
    if not ok:
        lo = f"> {low}" if open_low else f">= {low}"
        allowed = f"a number {lo}" + (f" and <= {high}" if high is not None else "")
        raise ValueError(f"{name}={v!r}: must be {allowed}")
