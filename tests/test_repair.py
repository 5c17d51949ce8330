"""Least-squares repair of pruned models: it must reduce the error against the dense model."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from conftest import make_inputs, make_tiny_model
from slimformer.arch import get_adapter
from slimformer.static.repair import repair
from slimformer.structure import Structure
from slimformer.surgery import KeepPlan, apply_plan

CALIB = [make_inputs(8, 16, seed=s) for s in range(4)]  # ~500 tokens; at most 38 unknowns per output
HELD_OUT = make_inputs(16, 14, seed=123)
PLAN = {"heads": {0: [1, 2], 1: [0], 2: [3]}, "neurons": {0: list(range(15)), 1: list(range(0, 37, 2))}}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from threads, and on a busy 2-core machine two OpenMP threads make
    these tests ~100x slower (barrier spinning); restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pruned(dense, **removing):
    return apply_plan(copy.deepcopy(dense), KeepPlan.removing(dense, **removing))


@torch.no_grad()
def _errors(model, dense, inputs) -> tuple[float, float]:
    """Relative error of the final hidden states (non-padding tokens) and MSE of the logits vs dense."""
    adapter = get_adapter(model)

    def run(m):
        h = adapter.embed(m, inputs["input_ids"])
        mask = adapter.layer_mask(m, h, inputs["attention_mask"])
        for layer in adapter.layers(m):
            h = adapter.run_layer(layer, h, mask)
        return h, adapter.classify(m, h)

    (h, logits), (h_d, logits_d) = run(model), run(dense)
    keep = inputs["attention_mask"].bool()
    rel = float((h - h_d)[keep].norm() / h_d[keep].norm())
    return rel, float((logits - logits_d).square().mean())


def _shapes(model) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def _check_improves(stats) -> None:
    """Every sublayer's fit error drops or stays (the refit may never be worse than the original
    weights on the same inputs), and at least one drops clearly."""
    for entry in stats["layers"]:
        for part in ("attention", "ffn"):
            assert entry[part]["after"] <= entry[part]["before"] + 1e-9, (entry["layer"], part, entry[part])
    assert any(e[p]["after"] < 0.9 * e[p]["before"] for e in stats["layers"] for p in ("attention", "ffn"))


def test_repair_reduces_error_on_every_family(family):
    dense = make_tiny_model(family)
    dense_before = {k: v.clone() for k, v in dense.state_dict().items()}
    pruned = _pruned(dense, **PLAN)
    unrepaired = copy.deepcopy(pruned)
    shapes, structure = _shapes(pruned), Structure.from_model(pruned)

    stats = repair(pruned, dense, CALIB, progress=False)

    _check_improves(stats)
    assert stats["tokens"] == sum(int(b["attention_mask"].sum()) for b in CALIB)
    assert stats["seconds"] > 0 and stats["skipped"] == [] and len(stats["layers"]) == 3
    for inputs in (CALIB[0], HELD_OUT):
        rel_u, mse_u = _errors(unrepaired, dense, inputs)
        rel_r, mse_r = _errors(pruned, dense, inputs)
        assert rel_r < 0.8 * rel_u, (rel_r, rel_u)
        assert mse_r < 0.8 * mse_u, (mse_r, mse_u)
    # shapes unchanged; only the output projections of attention and FFN moved; dense untouched
    assert _shapes(pruned) == shapes and Structure.from_model(pruned) == structure
    adapter = get_adapter(pruned)
    outputs = [m for layer in adapter.layers(pruned) for m in (adapter.attention(layer).o, adapter.ffn(layer).fc_out)]
    refit = {id(p) for m in outputs for p in m.parameters()}
    changed = []
    for (name, p), q in zip(pruned.named_parameters(), unrepaired.parameters(), strict=True):
        if id(p) in refit:
            changed.append(not torch.equal(p, q))
        else:
            assert torch.equal(p, q), name
    assert all(changed) and len(changed) == sum(len(list(m.parameters())) for m in outputs)  # weight (+ bias)
    for k, v in dense.state_dict().items():
        assert torch.equal(v, dense_before[k]), k
    assert not dense.training and not pruned.training


def test_repair_without_pruning_is_a_near_noop(family):
    """Nothing pruned: the dense weights already solve the least squares problem exactly, so the
    refit may only move them by the float32 rounding of the targets (~1e-7 relative) amplified by
    the condition number of the design matrix [X, 1] (sqrt(cond(X^T X)) ~ 6e3 here: the random tiny
    models' head outputs are small next to the bias column), i.e. ~5e-4 of the largest weight with an
    almost-zero ridge; we allow 2e-3. The function the model computes stays equal to ~1e-5."""
    dense = make_tiny_model(family)
    copy_ = copy.deepcopy(dense)
    stats = repair(copy_, dense, CALIB, ridge=1e-8, progress=False)
    for entry in stats["layers"]:
        for part in ("attention", "ffn"):
            assert entry[part]["before"] < 1e-6 and entry[part]["after"] < 1e-5, entry
    for (name, p), q in zip(copy_.named_parameters(), dense.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=0, atol=2e-3 * float(q.detach().abs().max().clamp_min(1e-2))), name
    rel, _ = _errors(copy_, dense, HELD_OUT)
    assert rel < 1e-5


def test_repair_with_a_removed_layer(family):
    dense = make_tiny_model(family)
    pruned = _pruned(dense, layers=[1], heads={0: [0, 3]}, neurons={2: list(range(20))})
    unrepaired = copy.deepcopy(pruned)
    dense.train()  # repair runs both models without dropout and restores their modes
    stats = repair(pruned, dense, CALIB, progress=False)
    assert dense.training and not pruned.training
    dense.eval()
    assert stats["skipped"] == [1]
    assert [(e["layer"], e["origin"]) for e in stats["layers"]] == [(0, 0), (1, 2)]
    _check_improves(stats)
    for inputs in (CALIB[1], HELD_OUT):
        assert _errors(pruned, dense, inputs)[1] < 0.8 * _errors(unrepaired, dense, inputs)[1]


def test_repair_with_headless_and_neuronless_sublayers(family):
    dense = make_tiny_model(family)
    pruned = _pruned(dense, attention=[1], ffn=[2], heads={0: [2]}, neurons={1: list(range(10))})
    unrepaired = copy.deepcopy(pruned)
    shapes = _shapes(pruned)
    stats = repair(pruned, dense, CALIB, progress=False)
    assert stats["layers"][1]["attention"]["units"] == 0 and stats["layers"][2]["ffn"]["units"] == 0
    _check_improves(stats)
    adapter = get_adapter(pruned)
    headless = adapter.attention(adapter.layers(pruned)[1]).o
    assert headless.weight.shape == (32, 0) and _shapes(pruned) == shapes
    if headless.bias is not None:  # a bias-free family (ModernBERT) has nothing left to refit there
        assert not torch.equal(headless.bias, adapter.attention(adapter.layers(unrepaired)[1]).o.bias)  # bias refit
    for inputs in (CALIB[2], HELD_OUT):
        assert _errors(pruned, dense, inputs)[1] < 0.8 * _errors(unrepaired, dense, inputs)[1]


def test_repair_rejects_bad_input():
    bert, distil = make_tiny_model("bert"), make_tiny_model("distilbert")
    with pytest.raises(ValueError, match=r"'bert'.*'distilbert'"):
        repair(copy.deepcopy(bert), distil, CALIB, progress=False)
    wide = BertForSequenceClassification(
        BertConfig(vocab_size=99, hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37)
    ).eval()
    with pytest.raises(ValueError, match=r"hidden size 32.*hidden size 48"):
        repair(copy.deepcopy(bert), wide, CALIB, progress=False)
    with pytest.raises(ValueError, match="empty"):
        repair(copy.deepcopy(bert), bert, [], progress=False)
    with pytest.raises(ValueError, match="same object"):
        repair(bert, bert, CALIB, progress=False)
    with pytest.raises(ValueError, match="ridge"):
        repair(copy.deepcopy(bert), bert, CALIB, ridge=-1.0, progress=False)
