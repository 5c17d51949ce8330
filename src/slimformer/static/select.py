"""Budgeted selection: which heads and FFN neurons to keep, given importance scores and a budget.

Units compete globally across layers (a layer may lose all its heads or all its neurons; layers
themselves always stay, since an empty layer still applies its two LayerNorms). Selection is a
greedy knapsack over "steps": removing a layer's least important head, or its least important
neurons down to the next allowed FFN width.

* ``importance.comparable`` (scores estimate the same loss for heads and neurons): remove the step
  with the lowest importance per unit of cost (summed scores / marginal cost in the budget's unit,
  from :func:`slimformer.cost.marginal_costs`, the cost model, or the latency table's slope at the
  layer's current shape) until the budget fits, then add back the most valuable steps that still
  fit (filling leftover budget).
* otherwise (magnitude, random: scales differ between kinds): every unit gets its rank within its
  kind as a quantile, and steps go lowest quantile first, so heads and neurons lose the same
  fraction of their cost; ranking is global within each kind.

Ties break by position: at equal score the unit in the later layer, then with the higher index,
goes first. The result is deterministic.

Shape rounding (``ffn_multiple``, ``min_ffn``): kept FFN widths other than the full width are
multiples of ``ffn_multiple`` and at least ``min_ffn`` (or 0); each layer keeps its top-scored
neurons and the result stays within the budget. The defaults, "a multiple of 8 neurons, never 1-31",
come from ``benchmarks/shape_latency.py`` (MiniLM-L6 layer, 128 tokens, 1 thread, AMD EPYC; see
``benchmarks/results/shape_latency.md``):

* alignment: at batch 32, FFN widths in 512..1024 that are odd or 2 mod 4 ran 10-12% above the
  trend and multiples of 8 ran 6% below it, ~19% slower for the same MACs (767 vs 768 neurons:
  +22%, 1535 vs 1536: +18%); multiples of 16, 32, 64 or 128 gained nothing more than 8. At batch 1
  the difference was within noise (1.5%). Rounding costs at most 7 neurons per layer.
* small widths: a narrow FFN costs more than its share of the full FFN's time (fixed work per
  sublayer, ~15 neurons' worth): 8 neurons cost 3.2x (batch 1) / 2.5x (batch 32) their share,
  16 cost 2.0x / 1.3x, 32 cost 1.5x / 1.1x, 64 cost 1.1x / 1.0x. Below 32 the sublayer is better
  removed (or widened).

Pass ``ffn_multiple=1, min_ffn=0`` for unconstrained, unit-by-unit selection.
"""

from __future__ import annotations

import heapq
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from slimformer.budget import Budget, InfeasibleBudget, smallest_structure
from slimformer.cost import marginal_costs
from slimformer.static.importance import Importance
from slimformer.structure import LayerShape, Structure
from slimformer.surgery import KeepPlan

if TYPE_CHECKING:
    from slimformer.latency import LatencyTable

logger = logging.getLogger(__name__)

#: Default shape rounding, from benchmarks/shape_latency.py (see the module docstring).
FFN_MULTIPLE = 8
MIN_FFN = 32
#: What every head and neuron removed still leaves behind, for the infeasibility message.
KEPT_ANYWAY = "(every head and FFN neuron removed) keeps the embeddings, LayerNorms and classifier"


@dataclass
class _Layer:
    """Mutable selection state of one layer: units in removal order and how many are removed."""

    head_order: list[int]  # head indices, least important first
    head_rank: list[float]  # per entry of head_order: its value (score or quantile)
    ffn_order: list[int]
    ffn_prefix: list[float]  # prefix sums of the neurons' values in ffn_order (len F + 1)
    full_ffn: int
    heads_removed: int = 0
    ffn_removed: int = 0

    @property
    def heads(self) -> int:
        return len(self.head_order) - self.heads_removed

    @property
    def ffn(self) -> int:
        return self.full_ffn - self.ffn_removed


def select(
    structure: Structure,
    importance: Importance,
    budget: Budget,
    *,
    latency_table: LatencyTable | None = None,
    ffn_multiple: int = FFN_MULTIPLE,
    min_ffn: int = MIN_FFN,
) -> KeepPlan:
    """The highest-importance set of heads and neurons of ``structure`` that fits ``budget``.

    Args:
        structure: the model's current structure (``Structure.from_model``).
        importance: per-layer scores for exactly those heads and neurons (higher = keep).
        budget: the bound; a relative budget is a fraction of ``structure``'s own cost.
        latency_table: a :class:`slimformer.latency.LatencyTable`, required for latency budgets.
        ffn_multiple: kept FFN widths (except the layer's full width) are multiples of this.
        min_ffn: no layer keeps between 1 and ``min_ffn - 1`` neurons (0 or at least ``min_ffn``).

    Returns:
        a :class:`KeepPlan` (sorted indices, every layer kept) for :func:`slimformer.surgery.apply_plan`.

    Raises:
        InfeasibleBudget: even removing every head and neuron does not fit.
        ValueError: scores that do not match the structure, NaN scores, bad rounding arguments,
            or a latency budget without a (matching) table.
    """
    _check(structure, importance, ffn_multiple, min_ffn)
    total = dense_cost = budget.measure(structure, latency_table=latency_table)
    limit = budget.limit_of(dense_cost)
    check_feasible(structure, budget, latency_table=latency_table)

    greedy = _Greedy(
        _init_layers(structure, importance),
        _layer_cost_fn(structure, budget, latency_table),
        comparable=importance.comparable,
        multiple=ffn_multiple,
        lowest=max(min_ffn, 1),
    )
    layers = greedy.layers
    # Latency predictions are sums of floats: aim a hair under the limit so that rounding in the
    # running total cannot leave the final prediction a hair over it. Other costs are exact ints.
    target = limit - 1e-9 * abs(limit) if budget.kind == "latency" else limit
    total = greedy.remove(total, target)  # least valuable step first until the budget fits
    total = greedy.fill(total, target)  # then add back the most valuable steps that still fit

    plan = KeepPlan(
        heads=tuple(tuple(sorted(st.head_order[st.heads_removed :])) for st in layers),
        ffn=tuple(tuple(sorted(st.ffn_order[st.ffn_removed :])) for st in layers),
        layers=(True,) * len(layers),
    )
    shapes = zip(layers, structure.layers, strict=True)
    result = Structure(structure.dims, tuple(LayerShape(st.heads, st.ffn, s.origin) for st, s in shapes))
    final = budget.measure(result, latency_table=latency_table)
    if final > limit:  # the running total and the cost model disagree: a bug, never a silent overshoot
        raise RuntimeError(f"selection overshot {budget}: {final} > {limit} (running total {total})")
    logger.info(
        "select %s: heads %d -> %d, ffn %d -> %d, %s %.6g of %.6g allowed (input %.6g)",
        budget, structure.total_heads, result.total_heads, structure.total_ffn, result.total_ffn,
        budget.kind, final, limit, dense_cost,
    )  # fmt: skip
    return plan


def check_feasible(structure: Structure, budget: Budget, *, latency_table: LatencyTable | None = None) -> None:
    """Refuse, before any scoring, a budget that even removing every head and neuron cannot meet.

    Raises:
        InfeasibleBudget: naming the smallest reachable cost and the dense cost.
    """
    dense_cost = budget.measure(structure, latency_table=latency_table)
    smallest = budget.measure(smallest_structure(structure), latency_table=latency_table)
    if smallest > budget.limit_of(dense_cost):
        raise InfeasibleBudget(budget, smallest, dense_cost, KEPT_ANYWAY)


class _Greedy:
    """The greedy knapsack over removal / add-back steps of every layer (see the module docstring).

    A step is (kind, new count, value, cost change): removing (or adding back) one head, or FFN
    neurons down (up) to the next allowed width. Steps sit in a heap keyed by value per unit of
    cost (or by value alone when scores are quantiles); a layer's entries are versioned, since its
    costs change only when the layer changes, which re-pushes its steps.
    """

    def __init__(self, layers: list[_Layer], layer_cost, *, comparable: bool, multiple: int, lowest: int):
        self.layers, self.layer_cost = layers, layer_cost
        self.comparable, self.m, self.lo = comparable, multiple, lowest

    def _lower(self, st: _Layer) -> int:
        w = ((st.ffn - 1) // self.m) * self.m
        return w if w >= self.lo else 0

    def _higher(self, st: _Layer) -> int:
        w = max((st.ffn // self.m + 1) * self.m, -(-self.lo // self.m) * self.m)
        return min(w, st.full_ffn)

    def _steps(self, i: int, removing: bool) -> list[tuple[str, int, float, float]]:
        """The (at most two) next steps of layer i: (kind, new count, value, cost change)."""
        st = self.layers[i]
        now = self.layer_cost(i, st.heads, st.ffn)
        out = []
        if removing and st.heads > 0 or not removing and st.heads < len(st.head_order):
            h = st.heads - 1 if removing else st.heads + 1
            k = st.heads_removed - (0 if removing else 1)
            out.append(("head", h, st.head_rank[k], self.layer_cost(i, h, st.ffn) - now))
        if removing and st.ffn > 0 or not removing and st.ffn < st.full_ffn:
            w = self._lower(st) if removing else self._higher(st)
            a, b = sorted((st.full_ffn - st.ffn, st.full_ffn - w))
            value = st.ffn_prefix[b] - st.ffn_prefix[a]
            value = value if self.comparable else value / (b - a)  # quantiles: the chunk's mean
            out.append(("ffn", w, value, self.layer_cost(i, st.heads, w) - now))
        return out

    def _key(self, value: float, cost: float) -> float:
        if not self.comparable:
            return value
        # a step that saves (or costs) nothing is kept (added back) first, unless its value is negative
        return value / cost if cost > 0 else (math.inf if value >= 0 else -math.inf)

    def _push(self, heap: list, i: int, removing: bool, version: list[int]) -> None:
        for kind, new, value, delta in self._steps(i, removing):
            k = self._key(value, -delta if removing else delta)
            # later layer first at ties (removal); earlier layer first at ties (adding back)
            entry = (k, -i, kind, new, delta, version[i]) if removing else (-k, i, kind, new, delta, version[i])
            heapq.heappush(heap, entry)

    def _apply(self, i: int, kind: str, new: int) -> None:
        st = self.layers[i]
        if kind == "head":
            st.heads_removed = len(st.head_order) - new
        else:
            st.ffn_removed = st.full_ffn - new

    def _heap(self, removing: bool) -> tuple[list, list[int]]:
        version = [0] * len(self.layers)
        heap: list = []
        for i in range(len(self.layers)):
            self._push(heap, i, removing, version)
        return heap, version

    def remove(self, total: float, target: float) -> float:
        """Remove the least valuable step first until ``total`` fits ``target``; the new total."""
        heap, version = self._heap(True)
        while total > target and heap:
            _, neg_i, kind, new, delta, ver = heapq.heappop(heap)
            i = -neg_i
            if ver != version[i]:
                continue
            self._apply(i, kind, new)
            total += delta
            version[i] += 1
            self._push(heap, i, True, version)
        return total

    def fill(self, total: float, target: float) -> float:
        """Add back the most valuable steps that still fit ``target``; the new total."""
        heap, version = self._heap(False)
        while heap:
            _, i, kind, new, delta, ver = heapq.heappop(heap)
            if ver != version[i] or total + delta > target:
                continue
            self._apply(i, kind, new)
            total += delta
            version[i] += 1
            self._push(heap, i, False, version)
        return total


def _check(structure: Structure, importance: Importance, ffn_multiple: int, min_ffn: int) -> None:
    for name, v, low in (("ffn_multiple", ffn_multiple, 1), ("min_ffn", min_ffn, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{name}={v!r}: must be an int >= {low}")
    n = structure.num_layers
    if len(importance.heads) != n or len(importance.ffn) != n:
        raise ValueError(f"importance covers {len(importance.heads)} layers, the structure has {n}")
    for i, (s, h, f) in enumerate(zip(structure.layers, importance.heads, importance.ffn, strict=True)):
        if h.numel() != s.heads or f.numel() != s.ffn:
            raise ValueError(
                f"layer {i}: importance has {h.numel()} head / {f.numel()} neuron scores, "
                f"the structure has {s.heads} heads / {s.ffn} neurons"
            )
        if torch.isnan(h).any() or torch.isnan(f).any():
            raise ValueError(f"layer {i}: importance scores contain NaN")


def _layer_cost_fn(structure: Structure, budget: Budget, table: LatencyTable | None):
    """``cost(layer index, heads, ffn)`` in the budget's unit, up to a per-layer constant."""
    if budget.kind == "latency":
        return lambda i, h, w: table.layer_time(h, w)
    if budget.kind == "memory":
        # marginal_costs has no bytes: take them from the cost model by finite differences (every
        # cost is linear in heads and neurons, so one difference is exact).
        base = smallest_structure(structure)
        zero = budget.measure(base)

        def with_first(heads: int, ffn: int) -> Structure:
            first = LayerShape(heads, ffn, base.layers[0].origin)
            return Structure(base.dims, (first, *base.layers[1:]))

        c_head = int(budget.measure(with_first(1, 0)) - zero)
        c_neuron = int(budget.measure(with_first(0, 1)) - zero)
    else:
        unit = "macs" if budget.kind == "macs" else "params"
        mc = marginal_costs(structure, budget.seq_len)
        c_head, c_neuron = mc["head"][unit], mc["neuron"][unit]
    return lambda i, h, w: h * c_head + w * c_neuron


def _init_layers(structure: Structure, importance: Importance) -> list[_Layer]:
    """Per-layer removal orders; values are raw scores (comparable) or within-kind quantiles."""
    layers = []
    # Global removal order within each kind: ascending score, later layer / higher index first at ties.
    heads = sorted(
        ((float(v), -i, -j) for i, t in enumerate(importance.heads) for j, v in enumerate(t.tolist())),
    )
    neurons = sorted(
        ((float(v), -i, -j) for i, t in enumerate(importance.ffn) for j, v in enumerate(t.tolist())),
    )
    h_quant = {(-i, -j): (r + 1) / len(heads) for r, (_, i, j) in enumerate(heads)}
    f_quant = {(-i, -j): (r + 1) / len(neurons) for r, (_, i, j) in enumerate(neurons)}
    for i, s in enumerate(structure.layers):
        h_scores, f_scores = importance.heads[i].tolist(), importance.ffn[i].tolist()
        h_order = sorted(range(s.heads), key=lambda j, sc=h_scores: (sc[j], -j))
        f_order = sorted(range(s.ffn), key=lambda j, sc=f_scores: (sc[j], -j))
        if importance.comparable:
            h_val = [float(h_scores[j]) for j in h_order]
            f_val = [float(f_scores[j]) for j in f_order]
        else:
            h_val = [h_quant[(i, j)] for j in h_order]
            f_val = [f_quant[(i, j)] for j in f_order]
        prefix = [0.0]
        for v in f_val:
            prefix.append(prefix[-1] + v)
        layers.append(_Layer(h_order, h_val, f_order, prefix, s.ffn))
    return layers
