"""Slenderized multi-exit models: equivalence, batched early exit, training, calibration, save/load, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import make_inputs, make_tiny_model
from slimformer.bench import BenchConfig, bench_model
from slimformer.cli import app
from slimformer.cost import cost_of
from slimformer.data import Example
from slimformer.evaluate import evaluate
from slimformer.exits import (
    CalibrateConfig,
    ExitConfig,
    ExitRule,
    MultiExitModel,
    SlenderConfig,
    calibrate_rule,
    collect_exits,
    early_exit,
    exit_cost_table,
    expected_macs,
    load_exit,
    save_exit,
    simulate,
    slender_exit,
    slenderize,
)
from slimformer.exits.model import exit_spec
from slimformer.export import save_model
from slimformer.models import load_model
from slimformer.structure import Structure
from slimformer.surgery import KeepPlan, apply_plan


def _wrapped(family: str, *, layers: int = 4, seed: int = 0, head: str = "mean") -> MultiExitModel:
    """A multi-exit model whose exit heads are random (so rows leave at different layers)."""
    model = MultiExitModel.from_classifier(make_tiny_model(family, layers=layers, num_labels=3), head=head)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.exits.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def _ragged(batch: int = 8, seq: int = 12, seed: int = 0) -> dict:
    """Right-padded rows of different lengths (at least 3 real tokens each)."""
    x = make_inputs(batch, seq, seed=seed, pad_last=0)
    lengths = torch.randint(3, seq + 1, (batch,), generator=torch.Generator().manual_seed(seed))
    lengths[0] = seq
    for i, n in enumerate(lengths.tolist()):
        x["attention_mask"][i, n:] = 0
        x["input_ids"][i, n:] = 0
    return x


def _median_rule(model: MultiExitModel, x: dict) -> ExitRule:
    """An entropy threshold halfway between the middle scores of the exits: some rows leave early, some do
    not, and no score sits on the threshold (where float noise could flip the decision)."""
    logits, _ = collect_exits(
        model, [{**x, "labels": torch.zeros(len(x["input_ids"]), dtype=torch.long)}], progress=False
    )
    logp = torch.log_softmax(logits[:, :-1], -1)
    ent = -(logp.exp() * logp).sum(-1) / torch.log(torch.tensor(3.0))
    values = ent.flatten().sort().values
    mid = len(values) // 2
    return ExitRule(kind="entropy", threshold=float(values[mid - 1 : mid + 1].mean()))


# --- equivalence ---------------------------------------------------------------------------------


def test_rule_none_equals_the_plain_classifier(family):
    plain = make_tiny_model(family, layers=3)
    x = make_inputs(3, 9)
    model = _wrapped(family, layers=3)
    model.backbone.load_state_dict(plain.state_dict())
    out = model(**x, exit_rule=ExitRule(kind="none"))
    torch.testing.assert_close(out.logits, plain(**x).logits)
    assert out.exit_layers.tolist() == [3, 3, 3]
    # the last entry of all_exits is the classifier's own head
    torch.testing.assert_close(model.all_exits(**x)[0][-1], plain(**x).logits)


@pytest.mark.parametrize(("rule_kind", "head"), [("entropy", "mean"), ("patience", "mean"), ("entropy", "pooler")])
def test_batched_early_exit_equals_each_row_alone(family, rule_kind, head):
    model = _wrapped(family, head=head)
    x = _ragged()
    rule = _median_rule(model, x) if rule_kind == "entropy" else ExitRule(kind="patience", patience=2)
    out = model(**x, exit_rule=rule)
    assert len(set(out.exit_layers.tolist())) > 1, "the test needs rows leaving at different layers"
    for i in range(len(x["input_ids"])):
        keep = x["attention_mask"][i].bool()
        alone = model(**{k: v[i : i + 1, keep] for k, v in x.items()}, exit_rule=rule)
        torch.testing.assert_close(out.logits[i : i + 1], alone.logits)
        assert out.exit_layers[i] == alone.exit_layers[0]


def test_exiting_rows_really_leave_the_batch():
    model = _wrapped("bert")
    x = _ragged()
    rule = _median_rule(model, x)
    seen: list[tuple[int, int]] = []
    hooks = [
        layer.register_forward_pre_hook(lambda mod, args: seen.append(tuple(args[0].shape[:2])))
        for layer in model.adapter.layers(model.backbone)
    ]
    out = model(**x, exit_rule=rule)
    for h in hooks:
        h.remove()
    rows = [s[0] for s in seen]
    # layer k runs exactly the rows that had not left before it
    assert rows == [int((out.exit_layers >= k).sum()) for k in range(1, len(rows) + 1)]
    assert sum(rows) < len(x["input_ids"]) * model.num_layers
    # trailing padding no live row needs is cut off
    for k, (_, t) in enumerate(seen, start=1):
        live = out.exit_layers >= k
        assert t == int(x["attention_mask"][live].sum(1).max())
    cost = expected_macs(model, out.exit_layers, seq_len=12)
    assert cost < exit_cost_table(model, 12)["macs_by_depth"][-1]


def test_cost_table_counts_exit_heads():
    model = _wrapped("bert", layers=3)
    table = exit_cost_table(model, 16)
    dense = cost_of(Structure.from_model(model.backbone), 16)
    assert table["dense_macs"] == dense.macs
    assert table["macs_by_depth"][-1] == dense.macs + sum(table["exit_macs"])  # all exits + the own head
    assert table["exit_macs"][0] == 16 * 32 + 32 * 32 + 32 * 3  # mean of 16 tokens, dense, linear
    assert table["params"] == dense.params + table["exit_params"]


# --- save / load, evaluate, bench ----------------------------------------------------------------


def test_save_load_reproduces_outputs_and_rule(tiny_tokenizer, tmp_path):
    plain = make_tiny_model("bert", layers=3)
    apply_plan(plain, KeepPlan.removing(plain, heads={0: [1, 2]}, neurons={1: range(12)}))  # slender
    model = _wrapped("bert", layers=3)
    model = MultiExitModel.from_classifier(plain)
    x = _ragged()
    model.set_rule(_median_rule(model, x))
    folder = save_exit(model, tiny_tokenizer, tmp_path / "m")
    saved = json.loads((folder / "config.json").read_text())
    assert saved["slimformer_exit"]["rule"] == model.rule.to_dict() and saved["slimformer"]["layers"][0]["heads"] == 2
    assert saved["slimformer_exit"]["head_sizes"]["out"] == [32, 3]
    loaded, tok = load_model(str(folder))
    assert isinstance(loaded, MultiExitModel) and loaded.rule == model.rule
    a, b = model(**x), loaded(**x)
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)
    assert torch.equal(a.exit_layers, b.exit_layers)
    examples = [Example(t, i % 3) for i, t in enumerate(["good movie", "bad plot", "the best film", "dull"] * 3)]
    metrics = evaluate(loaded, tok, examples, max_length=16, progress=False)
    assert metrics["n"] == 12
    timing = bench_model(loaded, BenchConfig(batch_sizes=(1, 4), seq_len=8, warmup=0, repeats=2), progress=False)
    assert len(timing["results"]) == 2
    with pytest.raises(FileExistsError):
        save_exit(model, tiny_tokenizer, folder)


def test_load_exit_refuses_other_folders(tiny_tokenizer, tmp_path):
    folder = save_model(make_tiny_model("bert"), tiny_tokenizer, tmp_path / "plain")
    with pytest.raises(ValueError, match="slimformer_exit"):
        load_exit(folder)
    config = make_tiny_model("bert").config
    config.slimformer_exit = {"format": 99}
    with pytest.raises(ValueError, match="format"):
        exit_spec(config)


# --- training, slenderizing, calibration ---------------------------------------------------------


def _batches(n: int = 4, batch: int = 8, seed: int = 0) -> list[dict]:
    out = []
    for s in range(n):
        x = _ragged(batch, 10, seed=seed + s)
        x["labels"] = (x["input_ids"][:, 1] % 2).long()  # learnable from the first word
        out.append(x)
    return out


def test_early_exit_trains_a_copy_jointly():
    plain = make_tiny_model("bert", layers=3, num_labels=2)
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    result = early_exit(plain, ExitConfig(epochs=3, head_lr=5e-3), _batches(), progress=False)
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in before.items())  # input untouched
    model = result.model
    assert isinstance(model, MultiExitModel) and model.rule.kind == "none" and not model.training
    moved = [k for k, v in model.backbone.state_dict().items() if not torch.equal(v, before[k])]
    assert moved  # the backbone trained too, not only the heads
    hist = result.report["epochs"]
    assert result.report["steps"] == 12 and hist[-1]["loss"] < hist[0]["loss"]


def test_calibration_meets_targets_and_matches_inference():
    model = _wrapped("bert", layers=4)
    val = _batches(3, seed=10)
    for b in val:
        b["labels"] = b["labels"] % 3
    acc = calibrate_rule(model, val, CalibrateConfig(rule="entropy", value=0.05), seq_len=10, progress=False)
    ch, ref = acc.report["chosen"], acc.report["reference"]
    assert ch["accuracy"] >= ref["accuracy"] - 0.05 and model.rule == acc.rule
    depth = calibrate_rule(model, val, CalibrateConfig(rule="confidence", target="depth", value=2.0), progress=False)
    assert depth.report["chosen"]["avg_exit_layer"] <= 2.0
    # replaying the rule on precomputed exits agrees with real batched inference, row for row
    logits, _ = collect_exits(model, val, progress=False)
    _, layers = simulate(model.rule, logits)
    real = torch.cat([model(**{k: v for k, v in b.items() if k != "labels"}).exit_layers for b in val])
    assert torch.equal(layers, real)
    # counted from another model's accuracy (dense, when this one is slender): unreachable -> never exit early
    strict = calibrate_rule(model, val, CalibrateConfig(value=0.0), reference_accuracy=1.01, progress=False)
    assert strict.rule.kind == "none" and strict.report["reference_accuracy"] == 1.01
    lat = calibrate_rule(
        model, val, CalibrateConfig(rule="patience", target="latency", value=1e3), latency_inputs=[make_inputs(1, 6)]
    )
    assert len(lat.report["depth_latency_ms"]) == 4
    with pytest.raises(ValueError, match="smallest achievable"):
        calibrate_rule(model, val, CalibrateConfig(rule="entropy", target="depth", value=0.5), progress=False)
    with pytest.raises(ValueError, match="latency_inputs"):
        calibrate_rule(model, val, CalibrateConfig(rule="entropy", target="latency", value=5), progress=False)


def test_slenderize_keeps_every_layer_and_fits_the_budget():
    plain = make_tiny_model("bert", layers=3, num_labels=2)
    data = _batches(2)
    thin = slenderize(plain, SlenderConfig(budget="macs=0.5,seq=10", method="fisher"), data, progress=False)
    st = Structure.from_model(thin.model)
    assert st.num_layers == 3 and thin.report["relative"]["macs"] <= 0.5
    assert Structure.from_model(plain).total_heads == 12  # input untouched
    both = slender_exit(plain, SlenderConfig(budget="macs=0.5,seq=10"), ExitConfig(max_steps=2), data, data)
    assert both.report["steps"] == 2 and both.report["slenderize"]["relative"]["macs"] <= 0.5
    assert Structure.from_model(both.model.backbone).total_heads < 12
    wrapped = slenderize(_wrapped("bert", layers=3), SlenderConfig(budget="macs=0.5,seq=10"), data, progress=False)
    assert isinstance(wrapped.model, MultiExitModel) and len(wrapped.model.exits) == 2


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: ExitRule(kind="sometimes"), "kind"),
        (lambda: ExitRule(threshold=1.5), "threshold"),
        (lambda: ExitRule(patience=0), "patience"),
        (lambda: ExitConfig(alpha=2), "alpha"),
        (lambda: ExitConfig(head="mlp"), "head"),
        (lambda: ExitConfig(epochs=0), "epochs"),
        (lambda: ExitConfig(warmup_ratio=1.0), "warmup_ratio"),
        (lambda: SlenderConfig(budget="macs=lots"), "budget"),
        (lambda: SlenderConfig(budget="macs=0.5", method="magic"), "method"),
        (lambda: CalibrateConfig(rule="none"), "rule"),
        (lambda: CalibrateConfig.parse("entropy", "speed=2"), "target"),
        (lambda: CalibrateConfig.parse("entropy", "latency=fast"), "latency=fast"),
        (lambda: ExitConfig.from_dict({"epochz": 1}), "epochz"),
    ],
)
def test_bad_settings_name_the_field(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_training_refuses_bad_data():
    plain = make_tiny_model("bert", layers=2, num_labels=2)
    with pytest.raises(ValueError, match="training batches"):
        early_exit(plain, ExitConfig(), [])
    with pytest.raises(ValueError, match="labelled"):
        early_exit(plain, ExitConfig(), [make_inputs()])
    with pytest.raises(ValueError, match="as deep"):
        early_exit(plain, ExitConfig(), _batches(1), teacher=make_tiny_model("bert", layers=3, num_labels=2))


# --- command line --------------------------------------------------------------------------------


def test_cli_train_calibrate_evaluate_bench(tmp_path, tiny_tokenizer):
    src = save_model(make_tiny_model("bert", num_labels=2), tiny_tokenizer, tmp_path / "model")
    rows = ["text,label"] + [
        f"{'good fun' if i % 2 else 'bad dull'} movie {i},{'pos' if i % 2 else 'neg'}" for i in range(60)
    ]
    task = tmp_path / "task.csv"
    task.write_text("\n".join(rows) + "\n")
    out = tmp_path / "exit"
    args = ["exit", "train", str(src), "--task", str(task), "--out", str(out), "--budget", "macs=0.6,seq=16"]
    args += [
        "--epochs",
        "2",
        "--max-steps",
        "3",
        "--max-length",
        "16",
        "--calibration-size",
        "16",
        "--evaluate",
        "test",
        "--json",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["steps"] == 3 and report["metrics"]["n"] == 6 and report["slenderize"]["relative"]["macs"] <= 0.6
    assert report["calibration"]["chosen"]["accuracy"] >= report["calibration"]["reference"]["accuracy"] - 0.01
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "not empty" in again.stderr

    cal = ["exit", "calibrate", str(out), "--task", str(task), "--rule", "patience", "--target", "depth=2"]
    result = CliRunner().invoke(app, [*cal, "--max-length", "16", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["slimformer_exit"]["rule"]["kind"] == "patience"
    assert load_exit(out).rule.kind == "patience"
    bad = CliRunner().invoke(app, ["exit", "calibrate", str(out), "--task", str(task), "--target", "depth"])
    assert bad.exit_code == 2 and "target" in bad.stderr

    ev = CliRunner().invoke(app, ["evaluate", str(out), "--task", str(task), "--max-length", "16", "--json"])
    assert ev.exit_code == 0, ev.output
    assert json.loads(ev.stdout)["n"] == 6
    bench = ["bench", str(out), "--batch-sizes", "1,2", "--seq-len", "8", "--repeats", "1", "--warmup", "0", "--json"]
    bn = CliRunner().invoke(app, bench)
    assert bn.exit_code == 0, bn.output
    assert len(json.loads(bn.stdout)["results"]) == 2
