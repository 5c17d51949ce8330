"""AxFormer's settings: one frozen dataclass, validated, round-tripping through JSON."""

from __future__ import annotations

from dataclasses import dataclass

from slimformer.budget import Budget
from slimformer.config import (
    Check,
    ConfigBase,
    boolean,
    budget_or_text,
    fraction,
    integer,
    non_negative,
    number,
    one_of,
    option,
    tuple_of,
)
from slimformer.hf_remote.modeling_slimformer import check_topk

#: Budget kinds the search can aim at (a latency budget would need a measured table per candidate).
BUDGET_KINDS = ("macs", "params", "memory")
TOLERANCE_FROM = ("previous", "start")
#: One top-k setting: an int count of keys per query or a float fraction of the sequence.
TOPK = Check("an int >= 1 (keys per query) or a float in (0, 1) (fraction)", check_topk)


@dataclass(frozen=True, kw_only=True)
class AxConfig(ConfigBase):
    """How AxFormer searches (see :func:`slimformer.axformer.axformer`).

    Without a budget the search runs to convergence for the most accurate model: it keeps every
    removal and every hard-attention switch that passes the acceptance test. With a budget it
    stops as soon as the budget is met; when the free removals are not enough, it then removes the
    units that raise the validation loss least per unit of budget saved (a forced removal).
    """

    budget: Budget | None = option(
        None,
        "stop once this fits (macs=0.5, params=12M, memory=40MB); none: most accurate model",
        budget_or_text(optional=True, kinds=BUDGET_KINDS),
    )
    loss_tolerance: float = option(
        0.0,
        "a removal is kept when the mean validation loss stays within this (nats, >= 0) of the reference",
        non_negative(),
    )
    tolerance_from: str = option(
        "previous",
        (
            "reference of the tolerance: previous (the loss before each removal) or start (the input "
            "model's loss: gains made earlier pay for later removals, the final loss stays within the tolerance)"
        ),
        one_of(*TOLERANCE_FROM),
    )
    max_worse_fraction: float = option(
        0.5, "and when at most this share of the samples whose loss changes get worse, in [0, 1]", fraction()
    )
    max_accuracy_drop: float | None = option(
        None,
        (
            "and when validation accuracy stays at least the input model's minus this (0: never below it; "
            "none: accuracy not checked). Forced removals of a budget are exempt"
        ),
        fraction(optional=True),
    )
    compensate: bool = option(
        False,
        (
            "evaluate every removal with its least-squares compensation: the kept units' output weights and "
            "the bias are refit so the sublayer's output on the validation tokens stays as close as it can to what "
            "it was (no labels); an accepted removal keeps its refit"
        ),
        boolean(),
    )
    repair: bool = option(
        True,
        (
            "after the search, refit the output projections of the smaller model by least squares to the "
            "input model's hidden states on the validation inputs (no labels); the refit is kept when the "
            "validation loss does not rise and accuracy stays at least the searched model's (or the guard's floor)"
        ),
        boolean(),
    )
    repair_ridge: float = option(
        1e-2,
        "ridge of both refits (compensate, repair), relative to the mean squared unit activation (>= 0)",
        non_negative(),
    )
    holdout: float = option(
        0.0,
        (
            "no budget only: share of the validation batches kept out of the search (0: none). After every "
            "accepted change the model is scored on them, and the search returns the longest prefix of its changes "
            "whose held-out loss stays within loss_tolerance of the input model's and whose held-out accuracy stays "
            "at least the input's (minus max_accuracy_drop when set): where to stop is judged on data the search "
            "did not select on"
        ),
        number(0, 0.9),
    )
    change_eps: float = option(
        1e-4, "per-sample loss changes smaller than this (nats) count as unchanged", non_negative()
    )
    ffn: bool = option(True, "search FFN sublayers and groups of their neurons", boolean())
    attention: bool = option(True, "search attention sublayers and single heads", boolean())
    hard_attention: bool = option(True, "search top-k attention per layer", boolean())
    remove_layers: bool = option(
        True, "try dropping a layer (LayerNorms too) once both its sublayers are gone", boolean()
    )
    neuron_groups: int = option(
        8, "FFN neurons of a layer are tried in this many groups, least important first", integer(1)
    )
    topk: tuple[int | float, ...] = option(
        (0.1, 0.25, 0.5),
        "top-k settings tried per layer: ints are keys per query, floats in (0, 1) fractions",
        tuple_of(TOPK),
    )
    topk_min_gain: float = option(
        0.0, "hard attention is switched on only if it lowers the validation loss by more than this", non_negative()
    )
    max_passes: int = option(
        4,
        (
            "passes over the layers (last to first); stops early when a pass changes nothing "
            "(budget mode: the passes before forced removals)"
        ),
        integer(1),
    )
    budget_step: float = option(
        0.1,
        "budget mode: at most this fraction of the starting cost is forced out per ranking round",
        fraction(open_low=True),
    )
    screen_fraction: float = option(
        0.25,
        "budget mode: share of validation examples the forced removals are ranked on, in (0, 1]",
        fraction(open_low=True),
    )
    reject_z: float = option(
        1.5, "stop evaluating a candidate once it fails by this many standard errors (0: never)", non_negative()
    )
    eval_rows: int = option(128, "sequences per forward pass when candidates are evaluated together", integer(1))

    def _check(self) -> None:
        if self.holdout > 0 and self.budget is not None:
            self._fail(
                "holdout",
                f"picks where a search without a budget stops; with budget={str(self.budget)!r} the budget "
                "decides (set holdout=0)",
            )

    @property
    def mode(self) -> str:
        """``"accuracy"`` (no budget: run to convergence) or ``"budget"``."""
        return "accuracy" if self.budget is None else "budget"
