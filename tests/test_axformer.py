"""AxFormer: hard (top-k) attention, the accuracy-driven search, its budgets, save/load and CLI."""

import copy
import dataclasses
import json
import random

import pytest
import torch
import typer
from typer.testing import CliRunner

from conftest import WORDS, make_inputs, make_tiny_model
from slimformer.arch import get_adapter
from slimformer.axformer import (
    AxConfig,
    axformer,
    clear_hard_attention,
    hard_attention_of,
    score_batches,
    set_hard_attention,
    topk_attention,
    validation_batches,
)
from slimformer.budget import InfeasibleBudget
from slimformer.commands.axformer import axformer_command
from slimformer.cost import cost_of
from slimformer.data import Example
from slimformer.export import load_slim, save_model
from slimformer.models import load_model
from slimformer.quantize import is_bf16, size_on_disk
from slimformer.structure import Structure
from slimformer.surgery import KeepPlan, apply_plan
from test_export import plain_transformers_logits


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def naive_topk(q, k, v, valid, topk):
    """Loop reference: per query, softmax over its top-k real keys only."""
    b, h, t, _ = q.shape
    out = torch.zeros_like(q)
    for bi in range(b):
        n = int(valid[bi].sum())
        kk = min(topk, n) if isinstance(topk, int) else max(1, -(-int(topk * n * 1000) // 1000))
        for hi in range(h):
            for qi in range(t):
                scores = (q[bi, hi, qi] @ k[bi, hi, :n].T) * q.shape[-1] ** -0.5  # (n,)
                idx = scores.topk(kk).indices
                w = torch.softmax(scores[idx], -1)
                out[bi, hi, qi] = w @ v[bi, hi, idx]
    return out


# --- hard attention --------------------------------------------------------------------------------


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("topk", [1, 3, 0.5])
def test_topk_attention_matches_a_loop_reference(topk, padded):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 6, 8) for _ in range(3))
    valid = torch.tensor([[1, 1, 1, 1, 0 if padded else 1, 0 if padded else 1], [1] * 6], dtype=torch.bool)
    mask = valid[:, None, None, :].expand(2, 1, 6, 6)  # (B, 1, T, T) bool, True = may attend
    got = topk_attention(q, k, v, mask, topk=topk, scaling=8**-0.5)
    torch.testing.assert_close(got, naive_topk(q, k, v, valid, topk), rtol=1e-5, atol=1e-5)
    additive = torch.zeros(2, 1, 6, 6).masked_fill(~mask, torch.finfo(torch.float32).min)
    torch.testing.assert_close(topk_attention(q, k, v, additive, topk=topk, scaling=8**-0.5), got)
    if not padded:
        torch.testing.assert_close(topk_attention(q, k, v, None, topk=topk, scaling=8**-0.5), got)


@pytest.fixture
def hard_model(tiny_model):
    """The tiny model of a family that has hard attention (DeBERTa refuses it: see test_families)."""
    reason = get_adapter(tiny_model).refused.get("hard_attention")
    if reason:
        pytest.skip(f"{tiny_model.config.model_type} refuses hard attention: {reason}")
    return tiny_model


def test_topk_at_least_the_sequence_equals_dense(hard_model, tiny_inputs):
    expected = logits(hard_model, tiny_inputs)
    n = len(Structure.from_model(hard_model).layers)
    set_hard_attention(hard_model, dict.fromkeys(range(n), 64))
    assert hard_attention_of(hard_model) == dict.fromkeys(range(n), 64)
    torch.testing.assert_close(logits(hard_model, tiny_inputs), expected, rtol=1e-5, atol=1e-6)
    set_hard_attention(hard_model, {0: 1, 2: 0.3})  # a real setting changes the outputs
    assert not torch.allclose(logits(hard_model, tiny_inputs), expected, atol=1e-5)
    clear_hard_attention(hard_model)
    assert hard_attention_of(hard_model) == {} and hard_model.config.slimformer_topk == {}
    torch.testing.assert_close(logits(hard_model, tiny_inputs), expected, rtol=0, atol=0)


def test_topk_is_the_same_alone_or_in_a_padded_batch(hard_model):
    set_hard_attention(hard_model, {0: 2, 1: 0.4, 2: 1})
    inputs = make_inputs(batch=3, seq=9, pad_last=4)
    batched = logits(hard_model, inputs)
    alone = logits(
        hard_model, {"input_ids": inputs["input_ids"][:1, :5], "attention_mask": inputs["attention_mask"][:1, :5]}
    )
    torch.testing.assert_close(alone, batched[:1], rtol=1e-5, atol=1e-6)


def test_bad_topk_settings_are_refused(tiny_model):
    for bad in (0, -1, 1.0, 1.5, "4", True):
        with pytest.raises(ValueError, match="topk"):
            set_hard_attention(tiny_model, {0: bad})
    with pytest.raises(ValueError, match="layer index 7 out of range"):
        set_hard_attention(tiny_model, {7: 2})


def test_topk_survives_surgery_and_save_load(hard_model, tiny_tokenizer, tmp_path):
    set_hard_attention(hard_model, {0: 2, 2: 0.5})
    plan = KeepPlan.removing(hard_model, heads={0: [1]}, neurons={2: range(5)}, layers=[1])
    apply_plan(hard_model, plan)  # layer 2 becomes layer 1: the setting follows it (keyed by origin)
    assert hard_attention_of(hard_model) == {0: 2, 1: 0.5}
    inputs = make_inputs()
    expected = logits(hard_model, inputs)
    folder = save_model(hard_model, tiny_tokenizer, tmp_path / "m")
    assert json.loads((folder / "config.json").read_text())["slimformer_topk"] == {"0": 2, "2": 0.5}
    loaded = load_slim(folder)
    assert hard_attention_of(loaded) == {0: 2, 1: 0.5}
    torch.testing.assert_close(logits(loaded, inputs), expected, rtol=0, atol=0)


def test_topk_on_a_dense_model_loads_with_plain_transformers(tiny_tokenizer, tmp_path):
    model = make_tiny_model("distilbert")
    set_hard_attention(model, {1: 2})
    inputs = make_inputs()
    expected = logits(model, inputs)
    folder = save_model(model, tiny_tokenizer, tmp_path / "m")
    got = plain_transformers_logits(folder, inputs)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


# --- the search --------------------------------------------------------------------------------------


def examples(n=96, seed=0):
    rng = random.Random(seed)
    return [Example(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))), rng.randrange(3)) for _ in range(n)]


def confident_task(model, tokenizer, n=96):
    """A model whose labels are its own (sharpened) predictions: low loss, so damage shows."""
    head = [m for m in model.classifier.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        head.weight.mul_(300.0)
    batches = validation_batches(examples(n), tokenizer, batch_size=16, max_length=32)
    for b in batches:
        inputs = {k: v for k, v in b.items() if k != "labels"}
        b["labels"] = logits(model, inputs).argmax(-1)
    return batches


def loud_model(family, tokenizer, *, sharpen=10.0):
    """A model whose predictions depend on its layers (loud attention values, classifier centred so all
    three classes occur), labelled with its own predictions: every removal risks flips, which cost
    little loss because the logits are close."""
    from slimformer.arch import get_adapter

    model = make_tiny_model(family)
    adapter = get_adapter(model)
    with torch.no_grad():
        for layer in adapter.layers(model):
            adapter.attention(layer).v.weight.mul_(40.0)
    batches = validation_batches(examples(96), tokenizer, batch_size=16, max_length=32)
    unlabeled = [{k: v for k, v in b.items() if k != "labels"} for b in batches]
    head = [m for m in model.classifier.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        head.bias.sub_(torch.cat([logits(model, x) for x in unlabeled]).mean(0))
        head.weight.mul_(sharpen)
        head.bias.mul_(sharpen)
    for b, x in zip(batches, unlabeled, strict=True):
        b["labels"] = logits(model, x).argmax(-1)
    assert len(torch.cat([b["labels"] for b in batches]).unique()) == 3
    return model, batches


def damage_head(model, layer: int, head: int, scale: float = 40.0):
    from slimformer.arch import get_adapter

    adapter = get_adapter(model)
    att = adapter.attention(adapter.layers(model)[layer])
    rows = slice(head * att.head_size, (head + 1) * att.head_size)
    torch.manual_seed(1)
    with torch.no_grad():
        att.v.weight[rows] = torch.randn_like(att.v.weight[rows]) * scale


def test_search_removes_a_harmful_head(family, tiny_tokenizer):
    model = make_tiny_model(family)
    batches = confident_task(model, tiny_tokenizer)
    damage_head(model, layer=1, head=1)  # harmful in every family's tiny random model (layer 2's is not)
    before = copy.deepcopy(model.state_dict())
    result = axformer(model, AxConfig(hard_attention=False), batches, progress=False)
    report = result.report
    assert 1 not in result.plan.heads[1]
    assert report["validation"]["after"]["loss"] < report["validation"]["before"]["loss"] - 0.01
    assert report["relative"]["macs"] < 1.0 and report["actions"]
    # the masked search and the real smaller model agree, and the input model is untouched
    assert report["validation"]["after"]["loss"] == pytest.approx(report["validation"]["search_estimate"], abs=1e-5)
    assert score_batches(result.model, batches)["loss"] == pytest.approx(report["validation"]["after"]["loss"])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert Structure.from_model(result.model).total_heads < Structure.from_model(model).total_heads


def test_tolerance_from_start_spends_earlier_gains(tiny_tokenizer):
    model = make_tiny_model("bert")
    batches = confident_task(model, tiny_tokenizer)
    damage_head(model, layer=2, head=1)
    per_step = axformer(model, AxConfig(hard_attention=False), batches, progress=False).report
    spend = axformer(model, AxConfig(hard_attention=False, tolerance_from="start"), batches, progress=False).report
    assert spend["validation"]["after"]["loss"] <= spend["validation"]["before"]["loss"] + 1e-6
    assert spend["macs"] <= per_step["macs"]
    assert all(a["delta_loss"] <= 0 for a in per_step["actions"])


def test_accuracy_guard_holds_validation_accuracy_under_a_loose_loss_tolerance(tiny_tokenizer):
    model, batches = loud_model("bert", tiny_tokenizer, sharpen=1.0)
    loose = dict(hard_attention=False, tolerance_from="start", loss_tolerance=5.0, max_worse_fraction=1.0, repair=False)
    free = axformer(model, AxConfig(**loose), batches, progress=False).report
    guarded = axformer(model, AxConfig(**loose, max_accuracy_drop=0.0), batches, progress=False).report
    before = guarded["validation"]["before"]["accuracy"]
    assert free["validation"]["after"]["accuracy"] < before  # the loss tolerance alone lets accuracy fall
    assert guarded["validation"]["after"]["accuracy"] >= before
    assert guarded["actions"] and all(a["accuracy_seen"] >= before for a in guarded["actions"])
    assert guarded["macs"] < guarded["start"]["macs"]


def test_passing_units_of_a_layer_are_taken_in_one_step_when_together_they_pass(tiny_tokenizer):
    from slimformer.axformer.evaluator import Candidate
    from slimformer.axformer.greedy import GreedySearch

    model = make_tiny_model("bert")
    batches = validation_batches(examples(32), tiny_tokenizer, batch_size=8)
    loose = AxConfig(hard_attention=False, loss_tolerance=10.0, max_worse_fraction=1.0)
    search = GreedySearch(model, loose, batches, None, progress=False)
    search.ev.refresh(search.state)
    search.before = {"loss": search.estimate, "accuracy": float(search.ev.correct.double().mean())}
    search._try_each([Candidate(2, "head", (h,)) for h in range(4)], 0)
    assert [a["change"] for a in search.actions] == ["head x4"]  # one evaluation, not four
    assert not search.state.heads[2].any() and search.state.heads[1].all()
    # the working copy's losses follow the accepted state exactly
    search.ev.refresh(search.state)
    assert search.actions[0]["delta_loss"] == pytest.approx(search.estimate - search.before["loss"], abs=1e-6)


def test_search_with_nothing_to_try_changes_nothing(tiny_model, tiny_tokenizer, tiny_inputs):
    batches = validation_batches(examples(32), tiny_tokenizer, batch_size=8)
    off = AxConfig(ffn=False, attention=False, hard_attention=False)
    result = axformer(tiny_model, off, batches, progress=False)
    assert result.report["actions"] == [] and result.plan == KeepPlan.full(tiny_model)
    torch.testing.assert_close(logits(result.model, tiny_inputs), logits(tiny_model, tiny_inputs), rtol=0, atol=0)


def test_hard_attention_is_kept_only_where_it_lowers_the_loss(tiny_tokenizer):
    model = make_tiny_model("bert")
    batches = confident_task(model, tiny_tokenizer)
    damage_head(model, layer=2, head=1, scale=4.0)
    config = AxConfig(ffn=False, attention=False, topk=(1, 2, 0.5))
    result = axformer(model, config, batches, progress=False)
    report = result.report
    assert report["validation"]["after"]["loss"] <= report["validation"]["before"]["loss"]
    assert all(a["delta_loss"] < 0 for a in report["actions"])
    assert set(result.topk) == {int(k) for k in report["topk"]}
    assert result.topk == hard_attention_of(result.model)


@pytest.mark.parametrize("budget", ["macs=0.4", "params=0.7"])
def test_budget_is_met(budget, tiny_tokenizer):
    model = make_tiny_model("roberta")
    batches = confident_task(model, tiny_tokenizer, n=48)
    result = axformer(model, AxConfig(budget=budget, hard_attention=False), batches, progress=False)
    report = result.report
    assert report["achieved"] <= report["budget_limit"]
    b = AxConfig(budget=budget).budget
    assert b.measure(Structure.from_model(result.model)) <= b.limit(Structure.from_model(model))
    assert report["mode"] == "budget" and report["budget"] == budget


def test_repair_after_forced_removals_is_kept_when_it_recovers_validation_loss(tiny_tokenizer):
    model, batches = loud_model("distilbert", tiny_tokenizer, sharpen=100.0)
    settings = dict(budget="macs=0.5", hard_attention=False)
    plain = axformer(model, AxConfig(**settings, repair=False), batches, progress=False)
    fixed = axformer(model, AxConfig(**settings), batches, progress=False)
    assert plain.report["repair"] is None and fixed.plan == plain.plan  # the same search, then the refit
    info, unrepaired = fixed.report["repair"], fixed.report["validation"]["unrepaired"]
    assert unrepaired == plain.report["validation"]["after"] and info["tokens"] > 0
    # forced removals flipped predictions; the refit towards the input model's hidden states flips some back
    assert info["kept"] and info["repaired"]["loss"] < unrepaired["loss"]
    assert info["repaired"]["accuracy"] > unrepaired["accuracy"]
    assert fixed.report["validation"]["after"] == info["repaired"] == score_batches(fixed.model, batches)
    inputs = make_inputs()
    assert not torch.allclose(logits(fixed.model, inputs), logits(plain.model, inputs))


def test_repair_that_does_not_help_on_validation_is_discarded(tiny_tokenizer):
    # the removals the search keeps made this (self-labelled) model more confident; refitting towards the
    # input model gives that back: same accuracy, higher loss
    model = make_tiny_model("bert")
    batches = confident_task(model, tiny_tokenizer, n=48)
    settings = dict(budget="macs=0.4", hard_attention=False)
    plain = axformer(model, AxConfig(**settings, repair=False), batches, progress=False)
    fixed = axformer(model, AxConfig(**settings), batches, progress=False)
    info = fixed.report["repair"]
    assert not info["kept"] and info["repaired"]["loss"] > fixed.report["validation"]["unrepaired"]["loss"]
    assert fixed.report["validation"]["after"] == plain.report["validation"]["after"]
    inputs = make_inputs()
    torch.testing.assert_close(logits(fixed.model, inputs), logits(plain.model, inputs), rtol=0, atol=0)


def test_compensation_is_the_least_squares_refit_of_the_removed_units(tiny_tokenizer):
    from slimformer.axformer.evaluator import Candidate
    from slimformer.axformer.greedy import GreedySearch

    model, batches = loud_model("bert", tiny_tokenizer)
    config = AxConfig(hard_attention=False, compensate=True, repair_ridge=0.0)
    search = GreedySearch(model, config, batches, None, progress=False)
    ev, state = search.ev, search.state
    ev.refresh(state)
    ev.prepare(state, 1)
    fc_out = ev.adapter.ffn(ev.layers[1]).fc_out
    xs = []  # the FFN activations fc_out reads, non-padding tokens only
    handle = fc_out.register_forward_pre_hook(lambda m, a: xs.append(a[0]))
    try:
        with torch.inference_mode():
            for b in range(len(batches)):
                ev.adapter.run_layer(ev.layers[1], ev.inputs[1][b], ev.masks[b])
    finally:
        handle.remove()
    x = torch.cat([a[batch["attention_mask"].bool()] for a, batch in zip(xs, batches, strict=True)]).double()
    removed = torch.tensor(search.groups[1][0])
    kept = torch.ones(x.shape[1], dtype=torch.bool)
    kept[removed] = False
    w = fc_out.weight.detach().double()
    target = x[:, removed] @ w[:, removed].T  # (tokens, d): what the removed neurons contributed
    design = torch.cat([x[:, kept], torch.ones(x.shape[0], 1, dtype=torch.float64)], dim=1)
    expected = torch.linalg.lstsq(design, target).solution.T  # (d, kept + 1)

    which, delta = ev.correction(state, Candidate(1, "neurons", tuple(removed.tolist())))
    assert which == "fc_out" and not delta[:, removed].any()
    torch.testing.assert_close(
        delta[:, torch.cat([kept, torch.tensor([True])])].double(), expected, rtol=1e-3, atol=1e-4
    )
    fitted = design @ delta[:, torch.cat([kept, torch.tensor([True])])].double().T
    assert (target - fitted).norm() < 0.5 * target.norm()  # the kept neurons carry much of it

    # the whole sublayer: only the bias moves, by the mean of what the sublayer added (mean ablation)
    which, delta = ev.correction(state, Candidate(1, "ffn"))
    assert not delta[:, :-1].any()
    torch.testing.assert_close(delta[:, -1].double(), (x @ w.T).mean(0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_compensated_search_returns_the_model_it_measured(family, tiny_tokenizer):
    model, batches = loud_model(family, tiny_tokenizer, sharpen=100.0)
    settings = dict(budget="macs=0.5", hard_attention=False, repair=False)
    plain = axformer(model, AxConfig(**settings), batches, progress=False).report
    result = axformer(model, AxConfig(**settings, compensate=True), batches, progress=False)
    report = result.report
    assert report["achieved"] <= report["budget_limit"]
    # the refits the search measured are in the smaller model's weights
    after = score_batches(result.model, batches)
    assert after == report["validation"]["after"]
    assert after["loss"] == pytest.approx(report["validation"]["search_estimate"], abs=1e-4)
    # the removals flip predictions (at little loss: the logits are close); measured with their refit they
    # flip far fewer
    assert after["accuracy"] > plain["validation"]["after"]["accuracy"] + 0.1
    pruned = apply_plan(copy.deepcopy(model), result.plan)
    assert not torch.allclose(logits(pruned, make_inputs()), logits(result.model, make_inputs()))


def test_refits_fit_on_separate_inputs_when_given(tiny_tokenizer):
    from slimformer.axformer.greedy import GreedySearch

    model, batches = loud_model("bert", tiny_tokenizer)
    fit = validation_batches(examples(40, seed=5), tiny_tokenizer, batch_size=8, max_length=32)
    for b in fit:
        del b["labels"]  # inputs only
    tokens = sum(int(b["attention_mask"].sum()) for b in fit)
    search = GreedySearch(model, AxConfig(compensate=True), batches, None, progress=False, fit_data=fit)
    search.ev.refresh(search.state)
    search.ev.prepare(search.state, 2)
    assert search.ev.grams[2]["fc_out"][-1, -1] == tokens  # the bias column counts the fit tokens
    config = AxConfig(budget="macs=0.5", hard_attention=False, compensate=True)
    result = axformer(model, config, batches, fit_data=fit, progress=False)
    report = result.report
    assert report["repair"]["tokens"] == tokens  # the repair too
    unrepaired = report["validation"]["unrepaired"]
    assert unrepaired["loss"] == pytest.approx(report["validation"]["search_estimate"], abs=1e-4)
    on_validation = axformer(model, config, batches, progress=False).report
    assert on_validation["repair"]["tokens"] == sum(int(b["attention_mask"].sum()) for b in batches)
    with pytest.raises(ValueError, match="fit_data"):
        axformer(model, config, batches, fit_data=[{"labels": torch.zeros(2)}], progress=False)


def test_split_holdout_spreads_the_held_out_batches():
    from slimformer.axformer.search import split_holdout

    batches = [{"i": i} for i in range(10)]
    search, held = split_holdout(batches, 0.3)
    assert [b["i"] for b in held] == [3, 6, 9] and len(search) == 7
    assert [b["i"] for b in split_holdout(batches, 0.5)[1]] == [1, 3, 5, 7, 9]
    with pytest.raises(ValueError, match="held-out batches"):
        split_holdout(batches[:1], 0.5)


@pytest.mark.parametrize("compensate", [False, True])
def test_holdout_stops_where_held_out_data_stops_agreeing(compensate, tiny_tokenizer):
    from slimformer.axformer.search import split_holdout

    model, batches = loud_model("bert", tiny_tokenizer)
    gen = torch.Generator().manual_seed(0)
    search_part, held = split_holdout(batches, 0.5)
    for b in search_part:  # random labels: removals look free to the search; the held-out labels are the
        b["labels"] = torch.randint(0, 3, b["labels"].shape, generator=gen)  # model's own predictions
    config = AxConfig(
        hard_attention=False, repair=False, compensate=compensate, loss_tolerance=1.0, tolerance_from="start",
        max_worse_fraction=1.0, max_accuracy_drop=0.1, holdout=0.5,
    )  # fmt: skip
    result = axformer(model, config, batches, progress=False)
    rep, hold = result.report, result.report["holdout"]
    assert hold["examples"] == sum(len(b["labels"]) for b in held) and hold["before"]["accuracy"] == 1.0
    assert 0 < hold["kept"] < hold["accepted"] == len(rep["actions"]) == len(hold["curve"])  # stopped midway
    assert sum(bool(a.get("undone")) for a in rep["actions"]) == hold["accepted"] - hold["kept"]
    # the returned model is the kept prefix: it scores on the held-out batches what the curve recorded there
    expected = hold["curve"][hold["kept"] - 1]
    got = score_batches(result.model, held)
    assert got["accuracy"] == expected["accuracy"] >= 0.9 and got["loss"] == pytest.approx(expected["loss"], abs=1e-5)
    assert all(c["accuracy"] < 0.9 for c in hold["curve"][hold["kept"] :])
    # ... and the search batches what the search measured
    assert rep["validation"]["after"]["loss"] == pytest.approx(rep["validation"]["search_estimate"], abs=1e-5)
    # without the rule the search keeps every change it accepted
    free = axformer(model, dataclasses.replace(config, holdout=0.0), search_part, progress=False).report
    assert free["holdout"] is None and len(free["actions"]) == hold["accepted"]
    assert free["relative"]["macs"] < rep["relative"]["macs"]


@pytest.mark.parametrize(
    ("repaired", "floor", "kept"),
    [
        ({"loss": 0.30, "accuracy": 0.90}, None, True),  # both better
        ({"loss": 0.40, "accuracy": 0.95}, None, False),  # more accurate but a higher loss: the loss decides
        ({"loss": 0.30, "accuracy": 0.85}, None, False),  # lower loss, accuracy below the searched model's
        ({"loss": 0.30, "accuracy": 0.85}, 0.85, True),  # ... but not below the guard's floor
        ({"loss": 0.30, "accuracy": 0.80}, 0.85, False),
        ({"loss": 0.30, "accuracy": 0.89}, 0.95, False),  # a floor above the searched model's accuracy
    ],
)
def test_the_repair_rule(repaired, floor, kept):
    from slimformer.axformer.search import keep_repair

    assert keep_repair({"loss": 0.35, "accuracy": 0.90}, repaired, floor) is kept


def test_an_infeasible_budget_names_the_smallest_model(tiny_model, tiny_tokenizer):
    batches = validation_batches(examples(16), tiny_tokenizer)
    with pytest.raises(InfeasibleBudget, match="params=10"):
        axformer(tiny_model, AxConfig(budget="params=10"), batches, progress=False)
    with pytest.raises(InfeasibleBudget, match="macs=0.5"):  # attention is most of these MACs and may not go
        axformer(tiny_model, AxConfig(budget="macs=0.5", attention=False), batches, progress=False)


def test_composes_with_one_shot_pruning_both_ways(tiny_tokenizer, tmp_path):
    from slimformer.static import MagnitudeConfig, prune

    model = make_tiny_model("bert")
    batches = confident_task(model, tiny_tokenizer, n=48)
    damage_head(model, layer=2, head=1)
    first = prune(model, MagnitudeConfig(budget="macs=0.8", repair=False), batches, progress=False).model
    set_hard_attention(first, {0: 2, 1: 2, 2: 2})  # the search keeps what it does not search
    ax = axformer(first, AxConfig(hard_attention=False, remove_layers=False), batches, progress=False)
    assert ax.report["start"]["macs"] == cost_of(Structure.from_model(first)).macs  # relative to its input

    def topk_where_heads(m):
        return {i: 2 for i, s in enumerate(Structure.from_model(m).layers) if s.heads}

    assert hard_attention_of(ax.model) == topk_where_heads(ax.model)
    then = prune(ax.model, MagnitudeConfig(budget="macs=0.7", repair=True), batches, progress=False).model
    assert hard_attention_of(then) == topk_where_heads(then)
    inputs = make_inputs()
    loaded = load_slim(save_model(then, tiny_tokenizer, tmp_path / "m"))
    assert hard_attention_of(loaded) == hard_attention_of(then)
    torch.testing.assert_close(logits(loaded, inputs), logits(then, inputs), rtol=0, atol=0)


def test_result_saves_and_loads(tiny_tokenizer, tmp_path):
    model = make_tiny_model("bert")
    batches = confident_task(model, tiny_tokenizer, n=48)
    damage_head(model, layer=2, head=1)
    result = axformer(model, AxConfig(topk=(1, 0.5)), batches, progress=False)
    inputs = make_inputs()
    folder = save_model(result.model, tiny_tokenizer, tmp_path / "m", extra=result.report)
    loaded = load_slim(folder)
    torch.testing.assert_close(logits(loaded, inputs), logits(result.model, inputs), rtol=0, atol=0)
    assert hard_attention_of(loaded) == result.topk


def test_bad_validation_data(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="empty"):
        axformer(tiny_model, AxConfig(), [], progress=False)
    batches = validation_batches(examples(8), tiny_tokenizer)
    for b in batches:
        b.pop("labels")
    with pytest.raises(ValueError, match="labels"):
        axformer(tiny_model, AxConfig(), batches, progress=False)


# --- config -----------------------------------------------------------------------------------------


def test_config_round_trip():
    config = AxConfig(budget="macs=0.5", topk=(8, 0.25), loss_tolerance=0.01, neuron_groups=4)
    data = json.loads(json.dumps(config.to_dict()))
    assert AxConfig.from_dict(data) == config and config.mode == "budget" and AxConfig().mode == "accuracy"
    with pytest.raises(ValueError, match="unknown field"):
        AxConfig.from_dict({"bogus": 1})


@pytest.mark.parametrize(
    "field, value",
    [
        ("budget", "latency=8ms"),
        ("budget", 0.5),
        ("loss_tolerance", -0.1),
        ("max_worse_fraction", 1.5),
        ("neuron_groups", 0),
        ("max_passes", 1.5),
        ("topk", (0,)),
        ("topk", (1.0,)),
        ("topk", 4),
        ("budget_step", 0.0),
        ("screen_fraction", 2.0),
        ("hard_attention", "yes"),
        ("tolerance_from", "first"),
        ("eval_rows", True),
        ("holdout", 0.95),
    ],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        AxConfig(**{field: value})
    with pytest.raises(ValueError, match="holdout=0.5: picks where a search without a budget stops"):
        AxConfig(holdout=0.5, budget="macs=0.5")


# --- command line ---------------------------------------------------------------------------------


def test_cli_searches_saves_and_reports(tmp_path, tiny_tokenizer, monkeypatch):
    model = make_tiny_model("bert", num_labels=2)
    damage_head(model, layer=2, head=1)
    src = save_model(model, tiny_tokenizer, tmp_path / "model")
    rows = ["text,label"] + [
        f"{'good fun' if i % 2 else 'bad dull'} movie {i},{'pos' if i % 2 else 'neg'}" for i in range(60)
    ]
    (tmp_path / "task.csv").write_text("\n".join(rows) + "\n")
    app = typer.Typer()
    app.command()(axformer_command)
    app.command("other")(lambda: None)  # two commands, so typer keeps the subcommand name
    out = tmp_path / "ax"
    args = ["axformer-command", str(src), "--task", str(tmp_path / "task.csv"), "--out", str(out)]
    args += ["--budget", "macs=0.6,seq=16", "--evaluate", "test", "--int8-out", str(tmp_path / "int8"), "--json"]
    args += ["--bf16-out", str(tmp_path / "bf16")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["method"] == "axformer" and report["relative"]["macs"] <= 0.6
    assert [(s["index"], s["step"]) for s in report["recipe"]] == [(1, "axformer"), (2, "int8"), (2, "bf16")]
    assert report["metrics"]["n"] == 6 and report["validation_examples"] == 6
    assert json.loads((out / "slimformer.json").read_text())["budget"] == "macs=0.6,seq=16"
    assert load_slim(out) is not None
    assert (tmp_path / "int8" / "model_int8.pt").is_file() and report["int8"]["size_on_disk"] > 0
    half, _ = load_model(str(tmp_path / "bf16"))
    assert is_bf16(half) and report["bf16"]["metrics"]["n"] == 6
    assert Structure.from_model(half) == Structure.from_model(load_slim(out))
    assert 0 < report["bf16"]["size_on_disk"] < size_on_disk(out)
    same = CliRunner().invoke(app, [*args[:-1], str(out), "--overwrite"])
    assert same.exit_code == 2 and "must be different folders" in same.stderr
    assert report["repair"]["tokens"] > 0 and report["validation"]["unrepaired"]["n"] == 6
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "not empty" in again.stderr
    plain = CliRunner().invoke(app, [*args, "--overwrite", "--no-repair"])
    assert plain.exit_code == 0, plain.output
    assert json.loads(plain.stdout)["repair"] is None
    compensated = CliRunner().invoke(app, [*args, "--overwrite", "--no-repair", "--compensate"])
    assert compensated.exit_code == 0, compensated.output
    assert json.loads(compensated.stdout)["config"]["compensate"] is True
    from slimformer import recover as recover_module

    teachers, real = [], recover_module.recover
    monkeypatch.setattr(recover_module, "recover", lambda m, t, *a, **k: teachers.append(t) or real(m, t, *a, **k))
    recovered = CliRunner().invoke(app, [*args, "--overwrite", "--recover-epochs", "1"])
    assert recovered.exit_code == 0, recovered.output
    steps = [s["step"] for s in json.loads(recovered.stdout)["recipe"]]
    assert steps == ["axformer", "recover", "int8", "bf16"]  # one recipe, the copies its alternative last steps
    assert [Structure.from_model(t) for t in teachers] == [Structure.from_model(model)]  # distilled from the input
    rec = json.loads(recovered.stdout)["recover"]
    assert rec["steps"] == 2 and rec["examples_per_epoch"] == 48  # 48 train rows in batches of 32
    assert rec["validation"]["before"]["n"] == rec["validation"]["after"]["n"] == 6
    refused = CliRunner().invoke(app, [*args, "--overwrite", "--holdout", "0.5"])
    assert refused.exit_code != 0 and "holdout=0.5" in refused.output
    free = [a for a in args if a not in ("--budget", "macs=0.6,seq=16")]
    held = CliRunner().invoke(app, [*free, "--overwrite", "--holdout", "0.5", "--batch-size", "2"])
    assert held.exit_code == 0, held.output
    hold = json.loads(held.stdout)["holdout"]
    assert hold["examples"] == 2 and json.loads(held.stdout)["validation_examples"] == 4
