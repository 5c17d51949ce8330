"""AxFormer's greedy search over one working copy of the model (masks only; surgery comes after).

The search itself is described in :mod:`slimformer.axformer.search`, which runs it.
"""

from __future__ import annotations

import copy
import logging
import math

import torch
from torch import nn
from tqdm.auto import tqdm

from slimformer.arch import get_adapter
from slimformer.axformer.config import AxConfig
from slimformer.axformer.evaluator import Candidate, Evaluator, Outcome, State
from slimformer.axformer.hard_attention import hard_attention_of
from slimformer.budget import InfeasibleBudget
from slimformer.cost import cost_of
from slimformer.static.importance import Batches, Importance
from slimformer.structure import LayerShape, Structure

logger = logging.getLogger(__name__)

KEPT_ANYWAY = "(every head and FFN neuron it may remove removed) keeps the embeddings, LayerNorms and classifier"
HARD_ATTENTION_COST = (
    "top-k attention computes every query-key score and adds a top-k per query: MACs are counted as dense, "
    "and on a CPU it is slower than the fused dense attention (see benchmarks/axformer.py)"
)


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


class GreedySearch:
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
        # a family without hard attention (DeBERTa) searches the rest; the report says why
        self.no_hard_attention = get_adapter(model).refused.get("hard_attention") if config.hard_attention else None
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
        if cfg.hard_attention and not self.no_hard_attention and self.state.layers[i] and self.state.heads[i].any():
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
            "hard_attention_skipped": self.no_hard_attention,
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
