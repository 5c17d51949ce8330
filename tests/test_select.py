"""Budgeted selection on tiny models with synthetic scores, checked against the cost model."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import make_tiny_model
from slimformer.budget import Budget, InfeasibleBudget, smallest_structure
from slimformer.cost import cost_of, marginal_costs
from slimformer.latency import LatencyTable
from slimformer.static.importance import Importance
from slimformer.static.select import select as _select
from slimformer.structure import LayerShape, Structure
from slimformer.surgery import KeepPlan, apply_plan

SEQ = 32


def select(*args, **kwargs):
    """Unit-by-unit selection (no shape rounding) unless a test asks for rounding."""
    return _select(*args, **{"ffn_multiple": 1, "min_ffn": 0, **kwargs})


def random_importance(structure: Structure, seed: int = 0, comparable: bool = True) -> Importance:
    g = torch.Generator().manual_seed(seed)
    heads = tuple(torch.rand(s.heads, generator=g) * 5 for s in structure.layers)
    ffn = tuple(torch.rand(s.ffn, generator=g) for s in structure.layers)
    return Importance(heads, ffn, comparable=comparable)


def shapes(plan: KeepPlan) -> list[tuple[int, int]]:
    return [(len(h), len(f)) for h, f in zip(plan.heads, plan.ffn, strict=True)]


def structure_of(plan: KeepPlan, st: Structure) -> Structure:
    return Structure(
        st.dims, tuple(LayerShape(h, f, s.origin) for (h, f), s in zip(shapes(plan), st.layers, strict=True))
    )


@pytest.fixture
def st():
    return Structure.from_model(make_tiny_model("bert"))


@pytest.mark.parametrize(
    "text", ["macs=0.5,seq=32", "macs=0.2,seq=32", "macs=0.9,seq=32", "params=0.8", "memory=0.7,dtype=int8"]
)
def test_fits_and_is_close_on_a_real_pruned_model(family, text):
    model = make_tiny_model(family)
    st = Structure.from_model(model)
    budget = Budget.parse(text)
    plan = select(st, random_importance(st), budget)
    pruned = Structure.from_model(apply_plan(model, plan))
    limit, cost = budget.limit(st), budget.measure(pruned)
    assert cost == budget.measure(structure_of(plan, st))
    assert cost <= limit
    # Close to the limit: adding back any one removed head or neuron would not fit (the fill pass).
    for bigger in _one_more(plan, st):
        assert budget.measure(bigger) > limit
    for kept in (*plan.heads, *plan.ffn):
        assert list(kept) == sorted(kept)
    assert plan.layers == (True,) * st.num_layers


def _one_more(plan: KeepPlan, st: Structure) -> list[Structure]:
    """Every structure with one more head or one more neuron in one layer than the plan keeps."""
    out = []
    for i, (h, f) in enumerate(shapes(plan)):
        for dh, df in ((1, 0), (0, 1)):
            if h + dh <= st.layers[i].heads and f + df <= st.layers[i].ffn:
                layers = list(structure_of(plan, st).layers)
                layers[i] = LayerShape(h + dh, f + df, layers[i].origin)
                out.append(Structure(st.dims, tuple(layers)))
    return out


def test_absolute_budget(st):
    full = cost_of(st, SEQ).macs
    budget = Budget(kind="macs", value=0.6 * full, relative=False, seq_len=SEQ)
    plan = select(st, random_importance(st), budget)
    assert budget.measure(structure_of(plan, st)) <= 0.6 * full
    assert plan == select(st, random_importance(st), Budget.parse(f"macs=0.6,seq={SEQ}"))


def test_higher_scores_are_kept_within_each_kind(st):
    imp = random_importance(st, seed=3)
    plan = select(st, imp, Budget.parse("macs=0.5,seq=32"))
    for scores, kept_idx in ((imp.ffn, plan.ffn), (imp.heads, plan.heads)):
        kept = [float(s[j]) for s, k in zip(scores, kept_idx, strict=True) for j in k]
        removed = [float(s[j]) for s, k in zip(scores, kept_idx, strict=True) for j in range(len(s)) if j not in k]
        assert kept and removed
        assert max(removed) <= min(kept)


def test_cost_aware_trade_between_heads_and_neurons(st):
    # Value per MAC: layer 0 neurons 0.25, layer 2 heads 0.5, every other unit 1 (a head costs `ratio` neurons).
    mc = marginal_costs(st, SEQ)
    ratio = mc["head"]["macs"] / mc["neuron"]["macs"]
    heads = (torch.full((4,), ratio), torch.full((4,), ratio), torch.full((4,), 0.5 * ratio))
    ffn = (torch.full((37,), 0.25), torch.ones(37), torch.ones(37))
    plan = select(st, Importance(heads, ffn), Budget.parse("macs=0.7,seq=32"))
    # Ranking raw scores would drop neurons (score 1) before heads (score 0.5 * ratio ~ 12); per MAC the
    # layer 0 neurons go first, then layer 2's heads; the fill pass adds back what fits (layer 0 neurons).
    assert plan.heads[2] == ()
    assert len(plan.heads[0]) == len(plan.heads[1]) == 4
    assert len(plan.ffn[1]) == len(plan.ffn[2]) == 37
    assert 0 < len(plan.ffn[0]) < 37


def test_a_layer_can_lose_all_heads_and_global_not_per_layer(st):
    g = torch.Generator().manual_seed(1)
    heads = [torch.rand(4, generator=g) * 100 + 100 for _ in range(3)]
    ffn = [torch.rand(37, generator=g) + 1 for _ in range(3)]
    heads[1] = torch.full((4,), 1e-3)  # layer 1's heads are worthless
    ffn[2] = ffn[2] * 1e-3  # layer 2's neurons are worthless
    plan = select(st, Importance(tuple(heads), tuple(ffn)), Budget.parse("macs=0.55,seq=32"))
    assert plan.heads[1] == ()
    assert len(plan.heads[0]) == 4 and len(plan.heads[2]) == 4
    assert plan.ffn[2] == ()
    assert 0 < len(plan.ffn[0]) < 37 and 0 < len(plan.ffn[1]) < 37


def test_deterministic_and_ties_break_by_position(st):
    imp = random_importance(st)
    b = Budget.parse("params=0.85")
    assert select(st, imp, b) == select(st, imp, b)
    for head_score in (1.0, 100.0):  # heads go first (cheap per MAC at score 1), then neurons first
        flat = Importance(
            tuple(torch.full((4,), head_score) for _ in range(3)), tuple(torch.ones(37) for _ in range(3))
        )
        plan = select(st, flat, Budget.parse("macs=0.8,seq=32"))
        assert plan == select(st, flat, Budget.parse("macs=0.8,seq=32"))
        # At equal scores later layers and higher indices go first: kept units are prefixes, earliest layers fullest.
        for kept in (plan.heads, plan.ffn):
            sizes = [len(k) for k in kept]
            assert sizes == sorted(sizes, reverse=True)
            assert all(list(k) == list(range(len(k))) for k in kept)
        assert shapes(plan) != [(4, 37)] * 3


def test_keeps_everything_when_the_budget_allows(st):
    plan = select(st, random_importance(st), Budget.parse("macs=1"))
    assert shapes(plan) == [(4, 37)] * 3


def test_infeasible_budget_states_the_smallest(st):
    smallest = cost_of(smallest_structure(st)).params
    with pytest.raises(InfeasibleBudget) as err:
        select(st, random_importance(st), Budget.parse("params=1k"))
    text = str(err.value)
    assert f"{smallest / 1e3:.2f}k params" in text
    assert f"{smallest / cost_of(st).params:.0%} of dense" in text
    assert err.value.smallest == smallest
    # exactly the smallest achievable is feasible: everything goes
    plan = select(st, random_importance(st), Budget(kind="params", value=smallest, relative=False))
    assert shapes(plan) == [(0, 0)] * 3


def test_non_comparable_removes_equal_fractions(st):
    # MiniLM-sized, so one head is a small fraction of all heads and of the neurons' cost.
    dims = dataclasses.replace(st.dims, hidden=384, num_heads=12, head_size=32, ffn=1536, num_layers=6)
    big = Structure.dense(dims)
    imp = random_importance(big, seed=2, comparable=False)
    imp = Importance(tuple(h * 1e4 for h in imp.heads), imp.ffn, comparable=False)  # different scales
    for value in (0.3, 0.5, 0.8):
        plan = select(big, imp, Budget.parse(f"macs={value}"))
        frac_heads = sum(len(h) for h in plan.heads) / 72
        frac_ffn = sum(len(f) for f in plan.ffn) / (6 * 1536)
        assert abs(frac_heads - frac_ffn) <= 1 / 72 + 0.01, (value, frac_heads, frac_ffn)
        for scores, kept_idx in ((imp.ffn, plan.ffn), (imp.heads, plan.heads)):  # ranked globally within each kind
            kept = [float(s[j]) for s, k in zip(scores, kept_idx, strict=True) for j in k]
            removed = [float(s[j]) for s, k in zip(scores, kept_idx, strict=True) for j in set(range(len(s))) - set(k)]
            assert max(removed) <= min(kept)


@pytest.mark.parametrize(("multiple", "min_ffn"), [(8, 0), (8, 16), (16, 16), (4, 30)])
def test_rounding_to_multiples(st, multiple, min_ffn):
    imp = random_importance(st, seed=4)
    for value in (0.2, 0.4, 0.6, 0.8):
        budget = Budget.parse(f"macs={value},seq=32")
        plan = select(st, imp, budget, ffn_multiple=multiple, min_ffn=min_ffn)
        for scores, kept in zip(imp.ffn, plan.ffn, strict=True):
            w = len(kept)
            assert w in (0, 37) or (w % multiple == 0 and w >= min_ffn), (w, multiple, min_ffn)
            top = sorted(range(37), key=lambda j, s=scores: -float(s[j]))[:w]
            assert sorted(top) == list(kept)  # the layer's top-scored neurons
        assert budget.fits(structure_of(plan, st), reference=st)


def test_starting_from_a_pruned_structure():
    model = make_tiny_model("bert")
    apply_plan(model, KeepPlan.removing(model, heads={0: [0, 1]}, neurons={2: range(20)}))
    st = Structure.from_model(model)
    budget = Budget.parse("macs=0.5,seq=32")
    plan = select(st, random_importance(st), budget)
    pruned = Structure.from_model(apply_plan(model, plan))
    # relative to the model being compressed, not to the architecture it was pruned from
    assert budget.measure(pruned) <= budget.limit(st) < budget.limit(Structure.dense(st.dims))
    for bigger in _one_more(plan, st):
        assert budget.measure(bigger) > budget.limit(st)


def synthetic_table(st: Structure) -> LatencyTable:
    # A step when a sublayer appears (0 -> 1 head, 0 -> 1 neuron), linear after it.
    heads, ffn = (0, 1, 2, 3, 4), (0, 1, 16, 37)
    rows = tuple(tuple(0.1 + (0.2 + 0.1 * h if h else 0) + (0.05 + 0.01 * w if w else 0) for w in ffn) for h in heads)
    return LatencyTable(dims=st.dims, batch_size=1, seq_len=128, heads=heads, ffn=ffn, layer_ms=rows, fixed_ms=0.3)


@pytest.mark.parametrize("text", ["latency=0.5", "latency=0.8", "latency=1.2ms"])
def test_latency_budget_with_a_table(st, text):
    table = synthetic_table(st)
    budget = Budget.parse(text)
    plan = select(st, random_importance(st), budget, latency_table=table)
    ms = table.predict(structure_of(plan, st))
    limit = budget.limit(st, latency_table=table)
    assert ms <= limit + 1e-12
    assert limit - ms < 0.05 + 1e-9  # within one unit: adding back a neuron costs 0.01, a fresh FFN 0.06


def test_latency_budget_needs_a_table(st):
    with pytest.raises(ValueError, match="latency table"):
        select(st, random_importance(st), Budget.parse("latency=0.5"))


def test_bad_arguments(st):
    imp = random_importance(st)
    b = Budget.parse("macs=0.5")
    with pytest.raises(ValueError, match="ffn_multiple"):
        select(st, imp, b, ffn_multiple=0)
    with pytest.raises(ValueError, match="min_ffn"):
        select(st, imp, b, min_ffn=-1)
    with pytest.raises(ValueError, match="covers 2 layers"):
        select(st, Importance(imp.heads[:2], imp.ffn[:2]), b)
    with pytest.raises(ValueError, match="layer 1"):
        select(st, Importance(imp.heads, (imp.ffn[0], imp.ffn[1][:5], imp.ffn[2])), b)
    nan = Importance((imp.heads[0] * float("nan"), *imp.heads[1:]), imp.ffn)
    with pytest.raises(ValueError, match="NaN"):
        select(st, nan, b)


def test_default_rounding_is_a_multiple_of_8_never_below_32(st):
    dims = dataclasses.replace(st.dims, hidden=384, num_heads=12, head_size=32, ffn=1536, num_layers=6)
    big = Structure.dense(dims)
    imp = random_importance(big, seed=5)
    imp = Importance(imp.heads, (*imp.ffn[:5], imp.ffn[5] * 1e-3))  # layer 5's neurons nearly worthless
    neuron = marginal_costs(big)["neuron"]["macs"]
    for text in ("macs=0.3", "macs=0.6", "params=0.6"):
        budget = Budget.parse(text)
        plan = _select(big, imp, budget)
        widths = [len(f) for f in plan.ffn]
        assert all(w in (0, 1536) or (w % 8 == 0 and w >= 32) for w in widths), widths
        result = structure_of(plan, big)
        assert budget.fits(result, reference=big)
        if budget.kind == "macs":  # leftover is less than one more 8-neuron chunk (or a first 32)
            assert budget.limit(big) - budget.measure(result) < 32 * neuron
