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
from tqdm.auto import tqdm

from slimformer.axformer.config import AxConfig
from slimformer.axformer.evaluator import Candidate, Evaluator, Outcome, State
from slimformer.axformer.hard_attention import hard_attention_of, set_hard_attention
from slimformer.budget import InfeasibleBudget
from slimformer.cost import cost_of
from slimformer.static.importance import Batches, Importance
from slimformer.structure import LayerShape, Structure
from slimformer.surgery import KeepPlan, apply_plan

logger = logging.getLogger(__name__)

KEPT_ANYWAY = "(every head and FFN neuron it may remove removed) keeps the embeddings, LayerNorms and classifier"
HARD_ATTENTION_COST = (
    "top-k attention computes every query-key score and adds a top-k per query: MACs are counted as dense, "
    "and on a CPU it is slower than the fused dense attention (see benchmarks/axformer.py)"
)


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
    t0 = time.perf_counter()
    held = None
    if config.holdout > 0:  # the search selects on the rest; the held-out batches only pick where it stops
        validation_data, held = split_holdout(validation_data, config.holdout)
    search = _Search(model, config, validation_data, importance, progress, fit_data, held)
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
def score_batches(model: nn.Module, batches: Batches) -> dict:
    """Mean cross-entropy and accuracy of ``model`` on tokenized batches with labels."""
    was_training = model.training
    model.eval()
    losses, correct = [], []
    try:
        for batch in batches:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            logits = model(**inputs).logits.float()  # (B, C)
            losses.append(nn.functional.cross_entropy(logits, batch["labels"], reduction="none"))
            correct.append(logits.argmax(-1) == batch["labels"])
    finally:
        model.train(was_training)
    loss, hit = torch.cat(losses), torch.cat(correct)
    return {"loss": float(loss.double().mean()), "accuracy": float(hit.double().mean()), "n": int(loss.shape[0])}


class _Search:
    """The greedy search over one working copy of the model (masks only; surgery comes after)."""

    def __init__(
        self,
        model,
        config: AxConfig,
        batches: Batches,
        importance: Importance | None,
        progress: bool,
        fit_data: Batches | None = None,
        held: Batches | None = None,
    ):
        if not batches:
            raise ValueError("validation_data is empty: pass tokenized validation batches (validation_batches)")
        if any("labels" not in b for b in batches):
            raise ValueError("validation_data: every batch needs 'labels' (the search measures the task loss)")
        if fit_data is not None and (
            not fit_data or any("input_ids" not in b or "attention_mask" not in b for b in fit_data)
        ):
            raise ValueError("fit_data: pass tokenized batches with input_ids and attention_mask, or None")
        self.config, self.progress = config, progress
        self.structure = Structure.from_model(model)
        self.groups = _neuron_groups(model, self.structure, importance, config.neuron_groups)
        self.ev = Evaluator(
            copy.deepcopy(model),
            batches,
            eval_rows=config.eval_rows,
            change_eps=config.change_eps,
            reject_z=config.reject_z,
            compensate_ridge=config.repair_ridge if config.compensate else None,
            fit_batches=fit_data,
        )
        self.state = State.full(self.structure, hard_attention_of(model))
        self.actions: list[dict] = []
        self.budget, self.limit = config.budget, None
        if self.budget is not None:
            self.start_cost = self.budget.measure(self.structure)
            self.limit = self.budget.limit(self.structure)
            smallest = self.budget.measure(_smallest(self.structure, config))
            if smallest > self.limit:
                raise InfeasibleBudget(self.budget, smallest, self.start_cost, KEPT_ANYWAY)
        self.passes_run = 0
        self.rounds = 0
        self.estimate_valid = True
        self.held = held  # held-out batches that pick how many accepted changes to keep (see AxConfig.holdout)
        self.held_before: dict | None = None
        self.curve: list[dict] = []  # held-out score after each accepted change
        self.best: tuple[int, State, dict | None] | None = None  # (changes kept, state, work weights)

    # --- driver --------------------------------------------------------------------------------
    def run(self) -> State:
        ev = self.ev
        ev.refresh(self.state)
        self.before = {"loss": float(ev.loss.double().mean()), "accuracy": float(ev.correct.double().mean())}
        if self.held:
            self.held_before = self._held_score()
            self._snapshot()
        for p in range(self.config.max_passes):
            if self.fits():
                break
            if p > 0:
                ev.refresh(self.state)
            accepted = self._pass(p)
            self.passes_run = p + 1
            if accepted == 0:
                break
        if self.budget is not None and not self.fits():
            self._force()
        if self.held and self.best[0] < len(self.actions):
            self._stop_early()
        return self.state

    # --- the held-out stopping rule ----------------------------------------------------------
    def _held_score(self) -> dict:
        with self.ev.applied(self.state) as work:
            return score_batches(work, self.held)

    def _held_ok(self, score: dict) -> bool:
        """The held-out loss within the tolerance of the input model's, accuracy at least its (minus the guard)."""
        ref, cfg = self.held_before, self.config
        drop = cfg.max_accuracy_drop or 0.0
        return score["loss"] <= ref["loss"] + cfg.loss_tolerance and score["accuracy"] >= ref["accuracy"] - drop - 1e-12

    def _snapshot(self) -> None:
        """Remember the current prefix of changes (with compensation, the refit weights too)."""
        weights = None
        if self.config.compensate:
            weights = {k: v.detach().clone() for k, v in self.ev.work.state_dict().items()}
        self.best = (len(self.actions), self.state, weights)

    def _stop_early(self) -> None:
        """Go back to the longest prefix of changes that passed on the held-out batches."""
        kept, state, weights = self.best
        logger.info("axformer held-out rule: keeping %d of %d accepted changes", kept, len(self.actions))
        for a in self.actions[kept:]:
            a["undone"] = True
        if weights is not None:
            self.ev.work.load_state_dict(weights)
        self.state = state
        self.ev.refresh(state)
        self.estimate_valid = True

    def holdout_report(self) -> dict | None:
        if not self.held:
            return None
        return {
            "fraction": self.config.holdout,
            "examples": self.held_before["n"],
            "before": self.held_before,
            "accepted": len(self.actions),
            "kept": self.best[0],
            "curve": self.curve,
        }

    def fits(self) -> bool:
        return self.budget is not None and self.budget.measure(self.state.structure(self.structure)) <= self.limit

    @property
    def estimate(self) -> float:
        return float(self.ev.loss.double().mean())

    # --- the accuracy-driven pass, last layer to first ------------------------------------------
    def _pass(self, p: int) -> int:
        n_before = len(self.actions)
        bar = tqdm(total=self.structure.num_layers, desc=f"axformer pass {p + 1}", disable=not self.progress)
        try:
            for i in reversed(range(self.structure.num_layers)):
                if self.state.layers[i]:
                    self._layer(i, p)
                self.ev.drop_cache(i)
                bar.update()
                bar.set_postfix(loss=f"{self.estimate:.4f}", kept=len(self.actions), passes=f"{self.ev.passes:.0f}")
                if self.fits():
                    break
        finally:
            bar.close()
        return len(self.actions) - n_before

    def _layer(self, i: int, p: int) -> None:
        cfg, st = self.config, self.state
        self.ev.prepare(st, i)  # the FFN's Gram matrix stays valid until this layer's attention changes
        if cfg.ffn and st.ffn[i].any() and not self._try_alone(Candidate(i, "ffn"), p):
            groups = [g for g in self.groups[i] if bool(self.state.ffn[i][list(g)].all())]
            if len(groups) > 1:
                self._try_each([Candidate(i, "neurons", g) for g in groups], p)
        if self.fits():
            return
        if cfg.attention and self.state.heads[i].any() and not self._try_alone(Candidate(i, "attention"), p):
            heads = [h for h in range(len(self.state.heads[i])) if self.state.heads[i][h]]
            if len(heads) > 1:
                self._try_each([Candidate(i, "head", (h,)) for h in heads], p)
        st = self.state
        if cfg.remove_layers and not st.heads[i].any() and not st.ffn[i].any() and not self.fits():
            self._try_alone(Candidate(i, "layer"), p)
        if cfg.hard_attention and self.state.layers[i] and self.state.heads[i].any():
            current = self.state.topk.get(i)
            options = [k for k in cfg.topk if k != current] + ([None] if current is not None else [])
            self._try_best([Candidate(i, "topk", topk=k) for k in options], p)

    def _threshold(self, c: Candidate) -> tuple[float, bool]:
        """(the mean loss change from the current state a candidate must stay under, whether strictly)."""
        if c.kind == "topk":
            return -self.config.topk_min_gain, True  # hard attention must help, not merely not hurt
        if self.config.tolerance_from == "start":
            return self.before["loss"] + self.config.loss_tolerance - self.estimate, False
        return self.config.loss_tolerance, False

    def _ok(self, c: Candidate, o: Outcome) -> bool:
        threshold, strict = self._threshold(c)
        loss_ok = o.delta < threshold if strict else o.delta <= threshold
        ok = not o.rejected and loss_ok and o.worse_fraction <= self.config.max_worse_fraction
        drop = self.config.max_accuracy_drop
        if ok and drop is not None:  # accuracy on the whole validation set, against the input model's
            ok = o.correct.shape[0] == self.ev.n and float(o.correct.double().mean()) >= (
                self.before["accuracy"] - drop - 1e-12
            )
        return ok

    def _evaluate(self, cands: list[Candidate]) -> list[Outcome]:
        threshold, _ = self._threshold(cands[0])
        return self.ev.evaluate(
            self.state,
            cands[0].layer,
            cands,
            threshold=threshold,
            max_worse=self.config.max_worse_fraction,
            race=True,
        )

    def _try_alone(self, c: Candidate, p: int) -> bool:
        o = self._evaluate([c])[0]
        if self._ok(c, o):
            self._accept(c, o, f"pass {p + 1}")
            return True
        return False

    def _try_each(self, cands: list[Candidate], p: int) -> None:
        """Screen all together; try every passing one at once; else keep them best first, each checked
        on the new state."""
        outcomes = self._evaluate(cands)
        passing = sorted((o.delta, k) for k, o in enumerate(outcomes) if self._ok(cands[k], o))
        if len(passing) > 2 and not self.fits():
            # all of them at once first: one evaluation instead of one per unit when the tolerance is loose
            units = tuple(sorted(u for _, k in passing for u in cands[k].units))
            combined = Candidate(cands[0].layer, cands[0].kind, units)
            if self.budget is None or self._cost_after(combined) > self.limit:  # would not overshoot a budget
                if self._try_alone(combined, p):
                    return
        for rank, (_, k) in enumerate(passing):
            if self.fits():
                return
            if rank == 0:
                self._accept(cands[k], outcomes[k], f"pass {p + 1}")
            else:
                self._try_alone(cands[k], p)

    def _try_best(self, cands: list[Candidate], p: int) -> None:
        if not cands:
            return
        outcomes = self._evaluate(cands)
        passing = [(o.delta, k) for k, o in enumerate(outcomes) if self._ok(cands[k], o)]
        if passing:
            _, k = min(passing)
            self._accept(cands[k], outcomes[k], f"pass {p + 1}")

    def _accept(self, c: Candidate, o: Outcome, phase: str, *, forced: bool = False) -> None:
        self.ev.commit(self.state, c)  # the compensation the outcome was measured with, if any
        self.state = self.state.apply(c)
        if c.kind == "topk":
            self.ev.set_topk(self.state.topk)
        if o.losses.shape[0] == self.ev.n and not forced:
            self.ev.loss, self.ev.correct = o.losses, o.correct
        else:
            self.estimate_valid = False  # ranked on part of the data; refreshed before further use
        action = {"phase": phase, "layer": self.structure.layers[c.layer].origin, "change": c.describe()}
        action.update(o.to_dict(), forced=forced)
        self.actions.append(action)
        if self.held and not forced:
            score = self._held_score()
            macs = cost_of(self.state.structure(self.structure), 128).macs / cost_of(self.structure, 128).macs
            self.curve.append({"changes": len(self.actions), "macs": macs, **score})
            action["holdout"] = score
            if self._held_ok(score):
                self._snapshot()
        logger.info("axformer %s: layer %d %s (loss %+.5f)", phase, c.layer, c.describe(), o.delta)

    # --- budget mode: forced removals, cheapest loss per unit of budget first --------------------
    def _force(self) -> None:
        cfg = self.config
        step = cfg.budget_step * self.start_cost
        n_screen = max(1, math.ceil(cfg.screen_fraction * len(self.ev.batches)))
        while not self.fits():
            self.rounds += 1
            self.ev.refresh(self.state)
            scored: list[tuple[Candidate, Outcome]] = []
            layers = [i for i in range(self.structure.num_layers) if self.state.layers[i]]
            bar = tqdm(layers, desc=f"axformer budget round {self.rounds}", disable=not self.progress)
            for i in bar:
                cands = self._removals(i)
                if cands:
                    self.ev.prepare(self.state, i)
                    outcomes = self.ev.evaluate(
                        self.state, i, cands, threshold=math.inf, max_worse=1.0, race=False, n_batches=n_screen
                    )
                    scored += list(zip(cands, outcomes, strict=True))
            bar.close()
            if not self._take(scored, step):
                raise RuntimeError("axformer: no removal left to meet the budget (please report this)")
        self.ev.refresh(self.state)
        self.estimate_valid = True

    def _removals(self, i: int) -> list[Candidate]:
        st, out = self.state, []
        if self.config.ffn and st.ffn[i].any():
            out.append(Candidate(i, "ffn"))
            groups = [g for g in self.groups[i] if bool(st.ffn[i][list(g)].all())]
            if len(groups) > 1:
                out += [Candidate(i, "neurons", g) for g in groups]
        if self.config.attention and st.heads[i].any():
            out.append(Candidate(i, "attention"))
            heads = [h for h in range(len(st.heads[i])) if st.heads[i][h]]
            if len(heads) > 1:
                out += [Candidate(i, "head", (h,)) for h in heads]
        return out

    def _take(self, scored: list[tuple[Candidate, Outcome]], step: float) -> int:
        """Force out candidates by loss per budget unit saved until ``step`` is removed or the budget fits."""
        taken, start = 0, self._cost()
        while not self.fits() and start - self._cost() < step:
            now, gap = self._cost(), self._cost() - self.limit
            best, best_score = None, math.inf
            for c, o in scored:
                saving = now - self.budget.measure(self.state.apply(c).structure(self.structure))
                if saving <= 0:
                    continue  # already removed by an earlier pick this round
                # loss per unit saved; a removal that overshoots the budget pays its loss for the gap only
                score = o.delta / (min(saving, gap) if o.delta > 0 else saving)
                if score < best_score:
                    best, best_score = (c, o), score
            if best is None:
                break
            self._accept(*best, f"budget round {self.rounds}", forced=True)
            taken += 1
        return taken

    def _cost(self) -> float:
        return self.budget.measure(self.state.structure(self.structure))

    def _cost_after(self, c: Candidate) -> float:
        return self.budget.measure(self.state.apply(c).structure(self.structure))

    # --- report ----------------------------------------------------------------------------------
    def report(self, pruned: nn.Module, after: dict) -> dict:
        cfg = self.config
        start, end = self.structure, Structure.from_model(pruned)
        seq_len = cfg.budget.seq_len if cfg.budget is not None else 128
        c0, c1 = cost_of(start, seq_len), cost_of(end, seq_len)
        out = {
            "method": "axformer",
            "mode": cfg.mode,
            "config": cfg.to_dict(),
            "budget": None if cfg.budget is None else str(cfg.budget),
            "validation_examples": self.ev.n,
            "validation": {"before": self.before, "after": after},
            "seq_len": seq_len,
            "params": c1.params,
            "macs": c1.macs,
            "bytes_fp32": c1.bytes_fp32,
            "relative": {
                "params": c1.params / c0.params,
                "macs": c1.macs / c0.macs,
                "bytes_fp32": c1.bytes_fp32 / c0.bytes_fp32,
            },
            "start": {"params": c0.params, "macs": c0.macs, "bytes_fp32": c0.bytes_fp32},
            "layers": [{"heads": s.heads, "ffn": s.ffn, "origin": s.origin} for s in end.layers],
            "passes": self.passes_run,
            "budget_rounds": self.rounds,
            "evaluation_passes": round(self.ev.passes, 2),
            "actions": self.actions,
            "forced_removals": sum(a["forced"] for a in self.actions),
            "hard_attention_cost": HARD_ATTENTION_COST,
        }
        if cfg.budget is not None:
            out["budget_limit"] = self.limit
            out["achieved"] = cfg.budget.measure(end)
        return out


def _smallest(structure: Structure, config: AxConfig) -> Structure:
    """Every unit the search may remove removed (all heads / all FFN neurons, as the config allows)."""
    return Structure(
        structure.dims,
        tuple(
            LayerShape(0 if config.attention else s.heads, 0 if config.ffn else s.ffn, s.origin)
            for s in structure.layers
        ),
    )


def _neuron_groups(
    model, structure: Structure, importance: Importance | None, n_groups: int
) -> list[list[tuple[int, ...]]]:
    """Per layer, the FFN neurons in ``n_groups`` groups, least important group first."""
    if importance is None:
        from slimformer.static.magnitude import score_magnitude

        importance = score_magnitude(model, [])
    if len(importance.ffn) != structure.num_layers:
        raise ValueError(f"importance covers {len(importance.ffn)} layers, the model has {structure.num_layers}")
    out = []
    for i, (scores, shape) in enumerate(zip(importance.ffn, structure.layers, strict=True)):
        if scores.shape != (shape.ffn,):
            raise ValueError(f"importance: layer {i} has {tuple(scores.shape)} neuron scores, the model {shape.ffn}")
        order = torch.argsort(scores.float(), stable=True)  # least important first
        out.append([tuple(int(j) for j in g) for g in torch.tensor_split(order, min(n_groups, shape.ffn)) if len(g)])
    return out


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
