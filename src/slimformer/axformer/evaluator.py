"""Fast evaluation of candidate changes on the validation set, for the greedy search.

The hidden states entering every layer are cached once (one forward pass over the validation
batches). A candidate at layer ``l`` (remove a sublayer, a neuron group or a head; drop the layer;
switch its attention to top-k) changes nothing before ``l``, so it is evaluated by running layers
``l..L-1`` and the classifier from the cache. Candidates are masks (see
:func:`slimformer.surgery.masked`), stacked along the batch dimension so that several are
evaluated in one forward pass; the search applies real surgery only at the end. A candidate that
is clearly failing after part of the data is dropped early (a statistical race), so most rejected
candidates cost a fraction of a pass.

With compensation on (``compensate_ridge`` set), a removal is evaluated together with the
least-squares refit of the output projection it touches (attention ``o`` or FFN ``fc_out``): the
kept units' weights and the bias are re-solved so that the sublayer's output stays as close as it
can to its output before the removal, on every non-padding validation token::

    min_{D}  sum_t || D [x_K; 1] - W_S x_S ||^2 + lam ||D_K||^2,   D = W_S G_{S,K1} (G_{K1,K1} + Lam)^-1

where ``x`` is the projection's input, ``S`` the units removed, ``K`` those kept, ``G`` the Gram
matrix of ``[x; 1]`` over the tokens and ``lam`` the ridge relative to the mean squared activation
(none on the bias). Removing a whole sublayer then shifts the bias by the removed part's mean output
(mean ablation instead of zero ablation). The Gram matrices of a layer are computed once
(:meth:`Evaluator.prepare`) from cached layer inputs: of separate fit batches when given (inputs
only, e.g. from the train split), else of the validation batches. Separate data matters: a refit
fit on the very tokens the removals are judged on flatters them (on rotten_tomatoes, validation
loss below dense's while test accuracy fell 1.65 points); each candidate's correction is added to the
projection's output in the stacked forward pass, and an accepted removal writes it into the
working model's weights (:meth:`Evaluator.commit`), so the model the search measured is the model
surgery returns.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from slimformer.arch import get_adapter
from slimformer.hf_remote.modeling_slimformer import set_layer_topk
from slimformer.static.importance import Batches
from slimformer.structure import LayerShape, Structure
from slimformer.surgery import masked

logger = logging.getLogger(__name__)

#: Candidates evaluated by masking units (stackable along the batch); the others run one at a time.
MASK_KINDS = ("ffn", "neurons", "attention", "head")
#: A race starts once this share of the validation samples has been seen.
RACE_AFTER = 0.2


@dataclass(frozen=True)
class Candidate:
    """One change at one layer: ``kind`` is ffn, neurons, attention, head, layer or topk."""

    layer: int
    kind: str
    units: tuple[int, ...] = ()  # neurons or heads removed (kinds neurons / head)
    topk: int | float | None = None  # kind topk: the new setting (None = dense attention)

    def describe(self) -> str:
        if self.kind in ("neurons", "head"):
            return f"{self.kind} x{len(self.units)}" if len(self.units) > 1 else f"{self.kind} {self.units[0]}"
        if self.kind == "topk":
            return f"topk {self.topk}"
        return self.kind


@dataclass
class State:
    """What the search has decided so far: kept heads, neurons and layers, and top-k per layer."""

    heads: list[torch.Tensor]  # per layer (H_l,) bool
    ffn: list[torch.Tensor]  # per layer (F_l,) bool
    layers: list[bool]
    topk: dict[int, int | float] = field(default_factory=dict)

    @classmethod
    def full(cls, structure: Structure, topk: dict[int, int | float]) -> State:
        return cls(
            heads=[torch.ones(s.heads, dtype=torch.bool) for s in structure.layers],
            ffn=[torch.ones(s.ffn, dtype=torch.bool) for s in structure.layers],
            layers=[True] * structure.num_layers,
            topk=dict(topk),
        )

    def apply(self, c: Candidate) -> State:
        """A new state with ``c`` applied (this one is unchanged)."""
        heads, ffn, layers, topk = list(self.heads), list(self.ffn), list(self.layers), dict(self.topk)
        i = c.layer
        if c.kind == "ffn":
            ffn[i] = torch.zeros_like(ffn[i])
        elif c.kind == "neurons":
            ffn[i] = ffn[i].clone()
            ffn[i][list(c.units)] = False
        elif c.kind == "attention":
            heads[i] = torch.zeros_like(heads[i])
        elif c.kind == "head":
            heads[i] = heads[i].clone()
            heads[i][list(c.units)] = False
        elif c.kind == "layer":
            layers[i] = False
        elif c.kind == "topk":
            topk.pop(i, None)
            if c.topk is not None:
                topk[i] = c.topk
        else:
            raise ValueError(f"unknown candidate kind {c.kind!r}")
        if not heads[i].any() or not layers[i]:
            topk.pop(i, None)  # nothing left to sparsify
        return replace(self, heads=heads, ffn=ffn, layers=layers, topk=topk)

    def structure(self, like: Structure) -> Structure:
        """The structure this state's surgery will produce."""
        shapes = [
            LayerShape(int(h.sum()), int(f.sum()), s.origin)
            for h, f, keep, s in zip(self.heads, self.ffn, self.layers, like.layers, strict=True)
            if keep
        ]
        return Structure(like.dims, tuple(shapes))


@dataclass
class Outcome:
    """Per-sample validation losses of one candidate (``n`` samples seen) against the current ones."""

    losses: torch.Tensor  # (n,)
    correct: torch.Tensor  # (n,) bool: the sample's prediction is right
    delta: float  # mean loss change on the samples seen
    worse_fraction: float  # among samples whose loss changed by more than change_eps, the share that rose
    rejected: bool  # dropped early by the race

    def to_dict(self) -> dict:
        out = {"delta_loss": round(self.delta, 6), "worse_fraction": round(self.worse_fraction, 4)}
        out["accuracy_seen"] = round(float(self.correct.double().mean()), 6) if self.correct.numel() else None
        return out


class Evaluator:
    """Cached layer inputs and batched candidate evaluation for one working copy of a model."""

    def __init__(
        self,
        work: nn.Module,
        batches: Batches,
        *,
        eval_rows: int,
        change_eps: float,
        reject_z: float,
        compensate_ridge: float | None = None,
        fit_batches: Batches | None = None,
    ):
        self.work = work.eval()
        self.adapter = get_adapter(work)
        self.layers = self.adapter.layers(work)
        self.paths = self.adapter.paths
        self.head_size = self.adapter.dims(work.config).head_size
        self.batches = batches
        self.labels = [b["labels"] for b in batches]  # each (B,)
        self.n = sum(int(y.shape[0]) for y in self.labels)
        self.eval_rows, self.change_eps, self.reject_z = eval_rows, change_eps, reject_z
        self.inputs: list[list[torch.Tensor] | None] = [None] * len(self.layers)  # [layer][batch] (B, T, d)
        self.masks: list = [None] * len(batches)  # what run_layer expects, per batch
        self.loss = torch.zeros(0)  # (N,) current per-sample losses
        self.correct = torch.zeros(0, dtype=torch.bool)  # (N,)
        self.passes = 0.0  # work done, in full forward passes over the validation set
        self.compensate_ridge = compensate_ridge  # None: removals are evaluated as plain masks
        self.grams: dict[int, dict[str, torch.Tensor]] = {}  # layer -> {"o"|"fc_out": (k+1, k+1) float64}
        # the refits' data: its own batches (inputs only), else the validation batches
        self.fit_batches = fit_batches if compensate_ridge is not None else None
        self.fit_inputs: list[list[torch.Tensor] | None] = [None] * len(self.layers)
        self.fit_masks: list = []

    # --- the current state --------------------------------------------------------------------
    def set_topk(self, topk: dict[int, int | float]) -> None:
        for i, layer in enumerate(self.layers):
            set_layer_topk(layer, self.paths, topk.get(i), head_size=self.head_size)

    @torch.inference_mode()
    def refresh(self, state: State) -> None:
        """Run the whole model in ``state``: cache every layer's inputs and the per-sample losses."""
        self.set_topk(state.topk)
        losses, correct = [], []
        with self._masked(state):
            inputs, self.masks, last = self._layer_inputs(self.batches)
            for b, hidden in enumerate(last):
                logits = self.adapter.classify(self.work, hidden).float()  # (B, C)
                losses.append(nn.functional.cross_entropy(logits, self.labels[b], reduction="none"))
                correct.append(logits.argmax(-1) == self.labels[b])
            if self.fit_batches:
                self.fit_inputs, self.fit_masks, _ = self._layer_inputs(self.fit_batches)
                self.passes += sum(int(b["input_ids"].shape[0]) for b in self.fit_batches) / self.n
        self.inputs = inputs
        self.loss, self.correct = torch.cat(losses), torch.cat(correct)
        self.passes += 1

    @contextmanager
    def applied(self, state: State):
        """The working model as it is in ``state`` (masks and top-k), for a plain forward pass."""
        self.set_topk(state.topk)
        with self._masked(state):
            yield self.work

    def _layer_inputs(self, batches: Batches) -> tuple[list[list[torch.Tensor]], list, list[torch.Tensor]]:
        """For ``batches``: every layer's inputs ``[layer][batch] (B, T, d)``, the layer masks and the last
        layer's outputs ``[batch] (B, T, d)``."""
        inputs: list[list[torch.Tensor]] = [[] for _ in self.layers]
        masks, last = [], []
        for batch in batches:
            hidden = self.adapter.embed(self.work, batch["input_ids"], batch.get("token_type_ids"))
            masks.append(self.adapter.layer_mask(self.work, hidden, batch["attention_mask"]))
            for i, layer in enumerate(self.layers):
                inputs[i].append(hidden)
                hidden = self.adapter.run_layer(layer, hidden, masks[-1])
            last.append(hidden)
        return inputs, masks, last

    def drop_cache(self, layer: int) -> None:
        """Free the inputs of ``layer`` (a pass moving to earlier layers no longer needs them)."""
        self.inputs[layer] = None
        if self.fit_batches:
            self.fit_inputs[layer] = None

    # --- candidates ----------------------------------------------------------------------------
    @torch.inference_mode()
    def evaluate(
        self,
        state: State,
        layer: int,
        candidates: list[Candidate],
        *,
        threshold: float,
        max_worse: float,
        race: bool,
        n_batches: int | None = None,
    ) -> list[Outcome]:
        """Per-sample losses of each candidate applied to ``state``, from the cached inputs of ``layer``.

        Args:
            threshold: with ``race``, a candidate whose mean loss change is above this by more than
                ``reject_z`` standard errors (or whose share of worse samples is clearly above
                ``max_worse``) stops being evaluated.
            n_batches: evaluate on the first ``n_batches`` validation batches only (ranking).
        """
        if self.inputs[layer] is None:
            raise RuntimeError(f"layer {layer}: inputs not cached; refresh() first")
        nb = len(self.batches) if n_batches is None else min(n_batches, len(self.batches))
        parts: list[list[torch.Tensor]] = [[] for _ in candidates]
        hits: list[list[torch.Tensor]] = [[] for _ in candidates]
        alive = list(range(len(candidates)))
        rejected = [False] * len(candidates)
        seen, depth = 0, (len(self.layers) - layer) / len(self.layers)
        fixes = {i: self.correction(state, c) for i, c in enumerate(candidates) if c.kind in MASK_KINDS}
        for b in range(nb):
            rows = int(self.labels[b].shape[0])
            stack = [i for i in alive if candidates[i].kind in MASK_KINDS]
            per_pass = max(1, self.eval_rows // rows)
            for start in range(0, len(stack), per_pass):
                group = stack[start : start + per_pass]
                out, hit = self._forward_masks(
                    state, layer, b, [candidates[i] for i in group], [fixes[i] for i in group]
                )  # (C, B) each
                for j, i in enumerate(group):
                    parts[i].append(out[j])
                    hits[i].append(hit[j])
            for i in alive:
                if candidates[i].kind not in MASK_KINDS:
                    out, hit = self._forward_one(state, layer, b, candidates[i])
                    parts[i].append(out)
                    hits[i].append(hit)
            self.passes += depth * len(alive) * rows / self.n
            seen += rows
            if race and self.reject_z > 0 and seen >= RACE_AFTER * self.n and b + 1 < nb:
                for i in list(alive):
                    if self._clearly_fails(torch.cat(parts[i]), self.loss[:seen], threshold, max_worse):
                        alive.remove(i)
                        rejected[i] = True
                if not alive:
                    break
        logger.debug(
            "layer %d: %d candidates, %d rejected early, %.2f passes so far",
            layer,
            len(candidates),
            sum(rejected),
            self.passes,
        )
        outcomes = []
        for i in range(len(candidates)):
            new = torch.cat(parts[i])
            delta, worse = self.compare(new, self.loss[: new.shape[0]])
            outcomes.append(Outcome(new, torch.cat(hits[i]), delta, worse, rejected[i]))
        return outcomes

    def compare(self, new: torch.Tensor, cur: torch.Tensor) -> tuple[float, float]:
        """(mean loss change, share of changed samples that got worse)."""
        d = new.double() - cur.double()
        rises, falls = int((d > self.change_eps).sum()), int((d < -self.change_eps).sum())
        return float(d.mean()), rises / max(rises + falls, 1)

    def _clearly_fails(self, new: torch.Tensor, cur: torch.Tensor, threshold: float, max_worse: float) -> bool:
        d = new.double() - cur.double()
        n, z = d.shape[0], self.reject_z
        if n < 2:
            return False
        if float(d.mean()) - z * float(d.std()) / math.sqrt(n) > threshold:
            return True
        rises, falls = int((d > self.change_eps).sum()), int((d < -self.change_eps).sum())
        m = rises + falls
        if m < 20:
            return False
        p = rises / m
        return p - z * math.sqrt(p * (1 - p) / m) > max_worse

    def _masked(self, state: State, layer: int | None = None, stacked: tuple | None = None):
        heads = [h.float() for h in state.heads]
        ffn = [f.float() for f in state.ffn]
        if stacked is not None:
            heads[layer], ffn[layer] = stacked
        return masked(self.work, head_masks=heads, ffn_masks=ffn, layer_mask=state.layers)

    def _run(self, layer: int, hidden: torch.Tensor, mask, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row loss and whether the prediction is right, both ``(rows,)``."""
        for block in self.layers[layer:]:
            hidden = self.adapter.run_layer(block, hidden, mask)
        logits = self.adapter.classify(self.work, hidden).float()  # (rows, C)
        return nn.functional.cross_entropy(logits, labels, reduction="none"), logits.argmax(-1) == labels

    def _forward_masks(
        self, state: State, layer: int, b: int, cands: list[Candidate], fixes: list | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Losses and hits ``(C, B)`` of mask candidates, stacked along the batch: rows ``c*B..`` are candidate
        c; ``fixes`` are their corrections (:meth:`correction`), added to the projections' outputs."""
        c, hidden, mask = len(cands), self.inputs[layer][b], self.masks[b]
        rows = hidden.shape[0]
        states = [state.apply(x) for x in cands]
        heads = torch.stack([s.heads[layer] for s in states]).float()  # (C, H)
        ffn = torch.stack([s.ffn[layer] for s in states]).float()  # (C, F)
        per_row = (heads.repeat_interleave(rows, 0)[:, None], ffn.repeat_interleave(rows, 0)[:, None])  # (C*B, 1, .)
        big = hidden.repeat(c, 1, 1)  # (C*B, T, d)
        big_mask = mask.repeat(c, *([1] * (mask.dim() - 1))) if mask is not None else None
        with self._masked(state, layer, per_row), self._corrected(layer, fixes or [None] * c):
            losses, hits = self._run(layer, big, big_mask, self.labels[b].repeat(c))
        return losses.view(c, rows), hits.view(c, rows)

    def _forward_one(self, state: State, layer: int, b: int, cand: Candidate) -> tuple[torch.Tensor, torch.Tensor]:
        """Losses and hits ``(B,)`` of a top-k or layer-drop candidate (changes the working model briefly)."""
        new = state.apply(cand)
        block = self.layers[layer]
        set_layer_topk(block, self.paths, new.topk.get(layer), head_size=self.head_size)
        try:
            with self._masked(new):
                return self._run(layer, self.inputs[layer][b], self.masks[b], self.labels[b])
        finally:
            set_layer_topk(block, self.paths, state.topk.get(layer), head_size=self.head_size)

    # --- compensation ---------------------------------------------------------------------------
    def _projection(self, layer: int, which: str) -> nn.Linear:
        block = self.layers[layer]
        return self.adapter.attention(block).o if which == "o" else self.adapter.ffn(block).fc_out

    def _columns(self, state: State, layer: int, which: str) -> torch.Tensor:
        """Which input columns of the projection are live in ``state``: ``(k,)`` bool."""
        if which == "fc_out":
            return state.ffn[layer]
        return state.heads[layer].repeat_interleave(self.adapter.attention(self.layers[layer]).head_size)

    @torch.inference_mode()
    def prepare(self, state: State, layer: int) -> None:
        """Gram matrices of ``[x; 1]`` for the inputs ``x`` of ``layer``'s output projections, over the
        non-padding tokens of the fit batches (else the validation batches), in ``state`` (needs the
        layer's cached inputs). No-op without compensation."""
        if self.compensate_ridge is None:
            return
        batches, inputs, masks = (
            (self.fit_batches, self.fit_inputs[layer], self.fit_masks)
            if self.fit_batches
            else (self.batches, self.inputs[layer], self.masks)
        )
        if inputs is None:
            raise RuntimeError(f"layer {layer}: inputs not cached; refresh() first")
        block = self.layers[layer]
        mods = {"o": self.adapter.attention(block).o, "fc_out": self.adapter.ffn(block).fc_out}
        grams = {w: torch.zeros(m.in_features + 1, m.in_features + 1, dtype=torch.float64) for w, m in mods.items()}
        keep: list[torch.Tensor] = []  # the current batch's non-padding tokens, (B, T) bool

        def capture(which: str):
            def hook(module, args):
                x = args[0][keep[0]].to(torch.float64)  # (tokens, k), after the masks
                x = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)
                grams[which].add_(x.T @ x)

            return hook

        handles = []
        with self._masked(state):
            # registered after the masks' pre-hooks, so they see the masked input
            handles = [m.register_forward_pre_hook(capture(w)) for w, m in mods.items()]
            try:
                for b, batch in enumerate(batches):
                    keep[:] = [batch["attention_mask"].bool()]
                    self.adapter.run_layer(block, inputs[b], masks[b])
            finally:
                for h in handles:
                    h.remove()
        self.grams[layer] = grams
        self.passes += sum(int(b["input_ids"].shape[0]) for b in batches) / self.n / len(self.layers)

    def correction(self, state: State, cand: Candidate) -> tuple[str, torch.Tensor] | None:
        """The least-squares correction of removing ``cand`` from ``state``: (projection, ``(d, k+1)``
        float32 added to its weight and, in the last column, its bias), or None (no compensation)."""
        if self.compensate_ridge is None or cand.kind not in MASK_KINDS:
            return None
        which = "fc_out" if cand.kind in ("ffn", "neurons") else "o"
        if cand.layer not in self.grams:
            raise RuntimeError(f"layer {cand.layer}: no Gram matrices; prepare() first")
        gram = self.grams[cand.layer][which]  # (k+1, k+1)
        now, new = self._columns(state, cand.layer, which), self._columns(state.apply(cand), cand.layer, which)
        removed = (now & ~new).nonzero().squeeze(1)  # (s,)
        kept = torch.cat([new, torch.ones(1, dtype=torch.bool)]).nonzero().squeeze(1)  # (k'+1,) with the bias
        weight = self._projection(cand.layer, which).weight  # (d, k)
        out = torch.zeros(weight.shape[0], weight.shape[1] + 1)
        if removed.numel() == 0:
            return which, out
        g_kk = gram[kept][:, kept].clone()  # (k'+1, k'+1)
        g_sk = gram[removed][:, kept]  # (s, k'+1)
        n_kept = kept.numel() - 1
        if n_kept:
            lam = self.compensate_ridge * float(torch.diagonal(g_kk)[:-1].sum()) / n_kept
            g_kk[:-1, :-1] += lam * torch.eye(n_kept, dtype=g_kk.dtype)
        try:
            coef = torch.linalg.solve(g_kk, g_sk.T)  # (k'+1, s)
        except RuntimeError:  # singular without a ridge
            coef = torch.linalg.lstsq(g_kk, g_sk.T).solution
        out[:, kept] = (weight.detach().to(torch.float64)[:, removed] @ coef.T).float()  # (d, k'+1)
        return which, out

    @torch.inference_mode()
    def commit(self, state: State, cand: Candidate) -> None:
        """Write ``cand``'s correction (computed from ``state``, before it is applied) into the working
        model's weights. No-op without compensation."""
        fix = self.correction(state, cand)
        if fix is None:
            return
        which, delta = fix
        proj = self._projection(cand.layer, which)
        if proj.bias is None:
            raise ValueError(f"layer {cand.layer}: {which} has no bias; compensation needs one")
        proj.weight.add_(delta[:, :-1].to(proj.weight.dtype))
        proj.bias.add_(delta[:, -1].to(proj.bias.dtype))

    @contextmanager
    def _corrected(self, layer: int, fixes: list):
        """Add each stacked candidate's correction to the output of the projection it touches."""
        if all(f is None for f in fixes):
            yield
            return
        c, handles = len(fixes), []
        for which in ("o", "fc_out"):
            proj = self._projection(layer, which)
            if not any(f is not None and f[0] == which for f in fixes):
                continue
            delta = torch.stack(
                [
                    f[1] if f is not None and f[0] == which else torch.zeros(proj.out_features, proj.in_features + 1)
                    for f in fixes
                ]
            ).to(proj.weight.dtype)  # (C, d, k+1)

            def hook(module, args, output, delta=delta):
                x = args[0].reshape(c, -1, args[0].shape[-1])  # (C, B*T, k): candidate c's rows
                fix = torch.baddbmm(delta[:, None, :, -1], x, delta[:, :, :-1].transpose(1, 2))  # (C, B*T, d)
                return output + fix.view_as(output)

            handles.append(proj.register_forward_hook(hook))
        try:
            yield
        finally:
            for h in handles:
                h.remove()
