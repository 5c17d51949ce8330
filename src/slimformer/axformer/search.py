"""AxFormer: accuracy-driven pruning and selective hard attention, searched on validation data.

Nagarajan et al. ("AxFormer: Accuracy-driven Approximation of Transformers for Faster, Smaller and
more Accurate NLP Models") observe that a model fine-tuned for one task carries parts that do not
help it, and some that hurt it. The search, on the validation split (never the test split), goes
from the last layer to the first; at each layer it tries

1. removing the whole FFN sublayer, else groups of its neurons (least important first);
2. removing the whole attention sublayer, else single heads;
3. dropping the layer (its LayerNorms too) once both sublayers are gone;
4. hard (top-k) attention, from a few settings of k.

A removal is kept when the mean validation loss does not rise by more than ``loss_tolerance`` (from
the loss before it, or with ``tolerance_from="start"`` from the input model's loss, so that earlier
gains pay for later removals), at most ``max_worse_fraction`` of the samples whose loss changes
get worse and, with ``max_accuracy_drop`` set, validation accuracy stays within it of the input
model's (the accuracy-driven test of the paper; a loss tolerance then lets removals through that
leave the predictions right but less confident); hard attention is switched on only where it
lowers the loss (it costs time on a CPU, see
:mod:`slimformer.axformer.hard_attention`). Without a budget, passes repeat until one changes
nothing (the most accurate model). With a budget, the search stops once it fits; if the free
removals are not enough, it ranks every remaining unit by the validation-loss increase per unit of
budget saved, on ``screen_fraction`` of the data, and forces out the best ones, at most
``budget_step`` of the starting cost per round, re-ranking after each round. Those forced removals
may raise the loss; the report lists them with their measured change.

With ``compensate`` on, every removal is evaluated together with a least-squares refit of the
output projection it touches (the kept units' weights and the bias, fit on ``fit_data``, else the
validation inputs, so the sublayer's output moves as little as it can; no labels; see
:mod:`slimformer.axformer.evaluator`), and an accepted removal keeps its refit: the search then
removes what the rest of the sublayer can absorb, and the model it measured is the one it returns.

A search that keeps ~50 removals on one validation set also selects on its noise: each passes on
the very samples that judge it. With ``holdout`` (no budget), a share of the validation batches is
kept out of the search; after every accepted change the model is scored on them, and the search
returns the longest prefix of its changes whose held-out loss stays within ``loss_tolerance`` of
the input model's and whose held-out accuracy stays at least the input's (minus
``max_accuracy_drop``). The held-out data only chooses how far down one path to go.

After the search, with ``repair`` on, the smaller model's output projections are refit by least
squares towards the input model's hidden states on ``fit_data``, else the validation inputs (as
after one-shot pruning); the refit is kept only when the validation loss does not rise and accuracy holds
(:func:`keep_repair`). It recovers most of what forced removals cost; after an accuracy-first
search, which ends on a validation accuracy above the input model's, it tends to give that back and
is then discarded.

The result is a plain pruned model (weights physically removed) whose top-k settings save and
load with it.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from slimformer.axformer.config import AxConfig
from slimformer.axformer.greedy import GreedySearch, score_batches
from slimformer.axformer.hard_attention import hard_attention_of, set_hard_attention
from slimformer.static.importance import Batches, Importance
from slimformer.structure import Structure
from slimformer.surgery import KeepPlan, apply_plan

logger = logging.getLogger(__name__)


@dataclass
class AxResult:
    """The compressed model, the plan that made it, its top-k settings and a JSON-ready report."""

    model: Any
    plan: KeepPlan
    topk: dict[int, int | float]  # present layer index (after surgery) -> k
    report: dict
    unrepaired: Any = None  # the searched model before the refit, when the refit was kept


def axformer(
    model: nn.Module,
    config: AxConfig,
    validation_data: Batches,
    *,
    importance: Importance | None = None,
    fit_data: Batches | None = None,
    progress: bool = True,
) -> AxResult:
    """Search a copy of ``model`` for removals and hard attention that do not hurt validation loss.

    Args:
        model: a fine-tuned sequence classifier of a supported family (pruned or not; left unchanged).
        config: the search settings (``AxConfig(budget=...)`` for a budget, none for the most accurate model).
        validation_data: tokenized validation batches with labels (see :func:`validation_batches`); keep
            the test split out of them.
        importance: scores that order each layer's FFN neurons into groups (e.g. from
            :func:`slimformer.static.score`); default: weight magnitude.
        fit_data: tokenized batches (inputs only; labels are ignored) the least-squares refits
            (``compensate``, ``repair``) are fit on, e.g. a sample of the train split. Default: the
            validation inputs, which flatters the refits, judged on the same data.
        progress: show progress bars.

    Returns:
        :class:`AxResult`; ``result.model`` is a physically smaller copy.

    Raises:
        ValueError: batches without labels, or importance scores that do not match the model.
        slimformer.budget.InfeasibleBudget: the budget is below the smallest model the search can make.
    """
    from slimformer.arch import require

    require(model, "axformer")
    t0 = time.perf_counter()
    held = None
    if config.holdout > 0:  # the search selects on the rest; the held-out batches only pick where it stops
        validation_data, held = split_holdout(validation_data, config.holdout)
    search = GreedySearch(model, config, validation_data, importance, progress, fit_data, held)
    state = search.run()
    t_search = time.perf_counter() - t0

    t1 = time.perf_counter()
    plan = KeepPlan.from_masks(state.heads, state.ffn, state.layers)
    # the working copy: with compensation its output projections carry the accepted refits
    pruned = apply_plan(copy.deepcopy(search.ev.work), plan).eval()
    new_index = {old: new for new, old in enumerate(i for i, keep in enumerate(state.layers) if keep)}
    set_hard_attention(pruned, {new: state.topk.get(old) for old, new in new_index.items()})
    topk = hard_attention_of(pruned)
    t_surgery = time.perf_counter() - t1

    t2 = time.perf_counter()
    after = score_batches(pruned, validation_data)
    if search.estimate_valid and abs(after["loss"] - search.estimate) > 1e-3 * max(1.0, abs(after["loss"])):
        logger.warning("pruned model: validation loss %.5f, the search expected %.5f", after["loss"], search.estimate)
    t_verify = time.perf_counter() - t2

    t3 = time.perf_counter()
    repaired, searched = None, pruned
    if config.repair and Structure.from_model(pruned) != search.structure:  # something was removed
        floor = None if config.max_accuracy_drop is None else search.before["accuracy"] - config.max_accuracy_drop
        pruned, repaired = _repair(
            pruned, model, validation_data, fit_data, after, config.repair_ridge, floor, progress
        )
    report = search.report(pruned, repaired["repaired"] if repaired and repaired["kept"] else after)
    # the search's own figure (masks on the working copy), to check against the real smaller model
    report["validation"]["search_estimate"] = search.estimate if search.estimate_valid else None
    report["validation"]["unrepaired"] = after
    report["repair"] = repaired
    report["topk"] = {str(i): k for i, k in topk.items()}
    report["holdout"] = search.holdout_report()
    report["seconds"] = {
        "search": round(t_search, 3),
        "surgery": round(t_surgery, 3),
        "verify": round(t_verify, 3),
        "repair": round(time.perf_counter() - t3, 3),
        "total": round(time.perf_counter() - t0, 3),
    }
    logger.info(
        "axformer (%s): validation loss %.4f -> %.4f, accuracy %.4f -> %.4f, MACs %.1f%% in %.1fs",
        config.mode,
        report["validation"]["before"]["loss"],
        report["validation"]["after"]["loss"],
        report["validation"]["before"]["accuracy"],
        report["validation"]["after"]["accuracy"],
        100 * report["relative"]["macs"],
        report["seconds"]["total"],
    )
    return AxResult(
        model=pruned, plan=plan, topk=topk, report=report, unrepaired=searched if pruned is not searched else None
    )


def _repair(
    pruned: nn.Module,
    model: nn.Module,
    batches: Batches,
    fit_data: Batches | None,
    unrepaired: dict,
    ridge: float,
    floor: float | None,
    progress: bool,
):
    """Refit a copy of ``pruned`` towards ``model`` (:func:`slimformer.static.repair`) on ``fit_data``,
    else the validation inputs (never labels); keep it as :func:`keep_repair` decides on validation.

    The refit pulls the smaller model back towards the input model's hidden states. That recovers
    what the removal of a merely unhelpful part cost, but it can also pull back towards a part the
    search removed because it hurt; the validation check decides.
    """
    from slimformer.static.repair import repair as refit

    fixed = copy.deepcopy(pruned)
    stats = refit(fixed, model, fit_data or batches, ridge=ridge, progress=progress)  # inputs only
    scores = score_batches(fixed, batches)
    kept = keep_repair(unrepaired, scores, floor)
    logger.info(
        "axformer repair: validation accuracy %.4f -> %.4f, loss %.4f -> %.4f: %s",
        unrepaired["accuracy"],
        scores["accuracy"],
        unrepaired["loss"],
        scores["loss"],
        "kept" if kept else "discarded",
    )
    info = {
        "kept": kept,
        "repaired": scores,
        "ridge": ridge,
        "tokens": stats["tokens"],
        "seconds": round(stats["seconds"], 3),
        "output_error": [round(layer["output_error"], 5) for layer in stats["layers"]],
    }
    return (fixed if kept else pruned), info


def keep_repair(unrepaired: dict, repaired: dict, floor: float | None) -> bool:
    """Whether the refit model replaces the searched one: its validation loss is no higher, and its
    validation accuracy no lower than the searched model's or, with an accuracy guard, than the guard's
    floor (the input model's accuracy minus ``max_accuracy_drop``).

    The loss decides because it is the finer measure: on a few hundred examples accuracy moves in
    steps of one example, and a search that keeps removals while accuracy holds ends on a lucky
    accuracy that a refit towards the input model gives back. The guard still bounds what it may give.
    """
    least = unrepaired["accuracy"] if floor is None else min(unrepaired["accuracy"], floor)
    return repaired["loss"] <= unrepaired["loss"] and repaired["accuracy"] >= least - 1e-12


@torch.inference_mode()
def split_holdout(batches: Batches, fraction: float) -> tuple[Batches, Batches]:
    """Split batches into (search, held-out), the held-out ones spread evenly: about ``fraction`` of them."""
    held_idx = {i for i in range(len(batches)) if math.floor((i + 1) * fraction) > math.floor(i * fraction)}
    search = [b for i, b in enumerate(batches) if i not in held_idx]
    held = [b for i, b in enumerate(batches) if i in held_idx]
    if not search or not held:
        raise ValueError(
            f"holdout={fraction!r} leaves {len(search)} search and {len(held)} held-out batches out of "
            f"{len(batches)}: each side needs at least one (more validation data, or another holdout)"
        )
    return search, held


def validation_batches(
    examples, tokenizer, *, batch_size: int = 32, max_length: int = 128, seed: int = 0, limit: int | None = None
) -> Batches:
    """Tokenized validation batches for the search: similar lengths per batch (little padding), batches
    in a seeded random order (so any prefix is a fair sample, which early rejection relies on).

    Args:
        limit: use only the first ``limit`` examples (smoke tests).
    """
    from slimformer.batching import batches

    return batches(examples, tokenizer, limit=limit, batch_size=batch_size, max_length=max_length, seed=seed)
