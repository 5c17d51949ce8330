"""The prune verb: contract tests over every registered method and every family."""

import json

import pytest
import torch

from conftest import make_inputs, make_tiny_model
from slimformer.budget import Budget, InfeasibleBudget
from slimformer.cost import cost_of
from slimformer.static import METHODS, OptinConfig, PruneConfig, prune, score
from slimformer.structure import Structure


def batches(n: int = 3, batch: int = 8, seq: int = 12):
    out = []
    for seed in range(n):
        b = make_inputs(batch=batch, seq=seq, seed=seed)
        b["labels"] = torch.randint(0, 3, (batch,), generator=torch.Generator().manual_seed(seed))
        out.append(b)
    return out


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_prunes_to_budget_without_touching_input(method, family):
    model = make_tiny_model(family)
    before = logits(model, make_inputs(seed=9))
    n_params = sum(p.numel() for p in model.parameters())
    config = PruneConfig.from_dict({"method": method, "budget": "macs=0.6,seq=12"})
    result = prune(model, config, batches(), progress=False)
    # the input model is untouched
    torch.testing.assert_close(logits(model, make_inputs(seed=9)), before, rtol=0, atol=0)
    assert sum(p.numel() for p in model.parameters()) == n_params
    # the output is physically smaller and fits the budget
    st = Structure.from_model(result.model)
    dense = cost_of(Structure.from_model(model), 12)
    assert cost_of(st, 12).macs <= 0.6 * dense.macs
    assert sum(p.numel() for p in result.model.parameters()) == cost_of(st).params < n_params
    assert not torch.allclose(logits(result.model, make_inputs(seed=9)), before)
    report = result.report
    assert report["method"] == method and report["relative"]["macs"] <= 0.6
    assert report["calibration_examples"] == 24
    json.dumps(report)  # JSON-ready


def test_config_round_trip_and_validation():
    cfg = OptinConfig(budget="params=0.5", head_examples=64, repair=False)
    assert isinstance(cfg.budget, Budget)
    again = PruneConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(ValueError, match="unknown pruning method 'nope'"):
        PruneConfig.from_dict({"method": "nope", "budget": "macs=0.5"})
    with pytest.raises(ValueError, match="unknown field.*bogus"):
        PruneConfig.from_dict({"method": "optin", "budget": "macs=0.5", "bogus": 1})
    with pytest.raises(ValueError, match="head_examples=0"):
        OptinConfig(budget="macs=0.5", head_examples=0)
    with pytest.raises(ValueError, match="cannot parse budget"):
        OptinConfig(budget="macs=lots")


def test_importance_reuse_gives_the_same_model():
    model = make_tiny_model("bert")
    cfg = OptinConfig(budget="macs=0.5,seq=12", repair=False)
    cal = batches()
    importance = score(model, cfg, cal, progress=False)
    a = prune(model, cfg, cal, importance=importance, progress=False)
    b = prune(model, cfg, cal, progress=False)
    assert a.plan == b.plan and a.report["importance_reused"] and not b.report["importance_reused"]


def test_repair_brings_logits_closer_to_dense():
    model = make_tiny_model("bert")
    cal = batches(n=6, batch=16, seq=16)
    held_out = make_inputs(batch=16, seq=16, seed=99, pad_last=0)
    dense = logits(model, held_out)
    off = prune(model, OptinConfig(budget="macs=0.5,seq=16", repair=False), cal, progress=False)
    on = prune(model, OptinConfig(budget="macs=0.5,seq=16", repair=True), cal, progress=False)
    assert off.plan == on.plan
    err = lambda m: (logits(m, held_out) - dense).pow(2).mean()  # noqa: E731
    assert err(on.model) < err(off.model)


def test_infeasible_budget_names_smallest():
    model = make_tiny_model("bert")
    with pytest.raises(InfeasibleBudget, match="smallest"):
        prune(model, OptinConfig(budget="params=100"), batches(), progress=False)


def test_infeasible_budget_is_refused_before_scoring(monkeypatch):
    import importlib

    prune_module = importlib.import_module("slimformer.static.prune")  # the module, not the function

    def no_scoring(*args, **kwargs):
        raise AssertionError("scored an infeasible budget")

    monkeypatch.setattr(prune_module, "score", no_scoring)
    with pytest.raises(InfeasibleBudget, match="smallest"):
        prune(make_tiny_model("bert"), OptinConfig(budget="memory=1KB"), batches(), progress=False)
