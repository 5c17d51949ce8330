"""Token skimming: equivalence with the dense model, masked training == real removal, training,
calibration, MACs, save/load, evaluate/bench on the loaded model, bad input and the CLI."""

import json
import random

import pytest
import torch
from typer.testing import CliRunner

from conftest import WORDS, make_inputs, make_tiny_model
from slimformer.arch import FAMILIES as ADAPTER_FAMILIES
from slimformer.bench import BenchConfig, bench_model
from slimformer.cli import app
from slimformer.cost import cost_of, head_macs, layer_macs
from slimformer.data import Example, TaskData
from slimformer.evaluate import evaluate
from slimformer.export import save_model
from slimformer.models import load_model
from slimformer.skim import (
    SkimConfig,
    build_skim_model,
    calibrate_shift,
    is_skim_model,
    load_skim,
    measure_skim,
    save_skim,
    skim,
    skim_macs,
    tokenized_batches,
)
from slimformer.skim.timing import OnRealBatches, real_batches, time_on_batches
from slimformer.structure import Structure


def random_predictors(model, scale: float = 1.0, seed: int = 0):
    """Predictors with large random weights: scores spread around 0, so some tokens are skimmed."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.skim_predictors:
            p.fc1.weight.normal_(0.0, scale)
            p.fc2.weight.normal_(0.0, scale)
            p.fc2.bias.zero_()
    return model


@pytest.fixture
def family(family):
    """Every family that can skim (test_families checks the refusal of the others)."""
    if "skim" in ADAPTER_FAMILIES[family].refused:
        pytest.skip(f"{family} refuses skimming: {ADAPTER_FAMILIES[family].refused['skim']}")
    return family


def skimmer(family="bert", **kw):
    return random_predictors(build_skim_model(make_tiny_model(family, **kw)))


def examples(n=60, seed=0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(6, 20))]
        words[rng.randrange(len(words))] = "good" if i % 2 else "bad"
        out.append(Example(" ".join(words), i % 2))
    return out


def tiny_task(n=60):
    ex = examples(n)
    return TaskData("tiny", ["neg", "pos"], {"train": ex[:40], "validation": ex[40:50], "test": ex[50:]}, "h")


# --- equivalence and real removal --------------------------------------------------------------


def test_never_skimming_equals_the_dense_model(family):
    dense = make_tiny_model(family)
    model = random_predictors(build_skim_model(dense))
    x = make_inputs(3, 9)
    model.skim_shift = float("-inf")  # the predictors never fire
    with torch.no_grad():
        expected = dense(**x).logits
        out = model(**x)
    torch.testing.assert_close(out.logits, expected)
    real = x["attention_mask"].sum(1)
    assert out.skim_tokens.tolist() == [[int(n)] * 3 for n in real]  # padding never counts
    model.skim_shift = 0.0  # a real threshold skims tokens, and that changes the outputs
    with torch.no_grad():
        out = model(**x)
    assert (out.skim_tokens[:, 1:] < real[:, None]).any()
    assert not torch.allclose(out.logits, expected, rtol=0, atol=1e-6)


def test_masked_training_path_equals_real_removal(family):
    model = skimmer(family)
    x = make_inputs(4, 11, pad_last=4)
    with torch.no_grad():
        removed = model.skim_forward(**x)
        masked, kept = model.skim_forward_masked(**x, noise=False)
    assert (removed.tokens[:, -1] < removed.tokens[:, 0]).all()  # tokens were really removed
    torch.testing.assert_close(masked, removed.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kept, removed.tokens[:, 1:].float() / removed.tokens[:, :1].float())


def test_a_padded_batch_gives_each_sample_its_own_result(family):
    model = skimmer(family)
    x = make_inputs(3, 12, pad_last=5)
    with torch.no_grad():
        batched = model.skim_forward(**x)
        for i in range(3):
            n = int(x["attention_mask"][i].sum())
            alone = model.skim_forward(**{k: v[i : i + 1, :n] for k, v in x.items()})
            torch.testing.assert_close(alone.logits, batched.logits[i : i + 1], rtol=1e-5, atol=1e-5)
            assert alone.tokens.tolist() == batched.tokens[i : i + 1].tolist()


def test_cls_is_always_kept_and_token_states_are_recoverable():
    dense = make_tiny_model("bert")
    model = random_predictors(build_skim_model(dense))
    x = make_inputs(2, 9)
    model.skim_shift = float("inf")  # skim everything that may be skimmed
    with torch.no_grad():
        out = model(**x, return_token_states=True)
        first, _ = model.skim_first_layer(**x)
    assert out.skim_tokens[:, 1:].eq(1).all()  # only [CLS] is left
    states = out.hidden_states[0]  # (B, T, D): everything but [CLS] froze after layer 0
    real = x["attention_mask"].bool()
    torch.testing.assert_close(states[:, 1:][real[:, 1:]], first[:, 1:][real[:, 1:]])
    model.skim_shift = float("-inf")
    with torch.no_grad():
        states = model(**x, output_hidden_states=True).hidden_states[0]
        full = dense.bert(**x).last_hidden_state
    torch.testing.assert_close(states[real], full[real], rtol=1e-5, atol=1e-5)


def test_macs_count_kept_tokens_and_predictors():
    model = skimmer("bert")
    structure = Structure.from_model(model)
    dims, per_token = structure.dims, model.skim_predictors[0].macs_per_token()
    assert per_token == 32 * 64 + 64 * 2
    full = torch.tensor([[9, 9, 9]])
    assert skim_macs(model, full).item() == cost_of(structure, 9).macs + 2 * 9 * per_token
    tokens = torch.tensor([[9, 4, 2]])
    expected = sum(layer_macs(dims, s, n)["total"] for s, n in zip(structure.layers, (9, 4, 2), strict=True))
    assert skim_macs(model, tokens).item() == expected + head_macs(dims) + (9 + 4) * per_token


# --- training and calibration ------------------------------------------------------------------


def test_training_trades_tokens_for_the_skim_loss(tiny_tokenizer, tmp_path):
    dense = make_tiny_model("bert", num_labels=2)
    task = tiny_task()
    cfg = dict(epochs=2, batch_size=8, max_length=24, lr=1e-3, predictor_lr=3e-2, init_keep_logit=1.0)
    lazy = skim(dense, SkimConfig(skim_weight=0.0, **cfg), task, tokenizer=tiny_tokenizer, progress=False)
    eager = skim(dense, SkimConfig(skim_weight=5.0, **cfg), task, tokenizer=tiny_tokenizer, progress=False)
    kept = {n: r.report["epochs"][-1]["validation"]["mean_kept"] for n, r in (("lazy", lazy), ("eager", eager))}
    assert kept["eager"] < 0.5 * kept["lazy"], kept
    assert eager.report["global_step"] == 10 and not eager.model.training
    assert "accuracy" in eager.report["epochs"][-1]["validation"]


def test_checkpoints_resume_and_distillation(tiny_tokenizer, tmp_path):
    dense = make_tiny_model("distilbert", num_labels=2)
    task = tiny_task()
    cfg = SkimConfig(epochs=1, batch_size=8, max_length=24, distill=0.5)
    first = skim(dense, cfg, task, tokenizer=tiny_tokenizer, out_dir=tmp_path, progress=False)
    assert (tmp_path / "checkpoints" / "epoch-1" / "trainer_state.json").is_file()
    more = SkimConfig.from_dict({**cfg.to_dict(), "epochs": 2})
    second = skim(dense, more, task, tokenizer=tiny_tokenizer, out_dir=tmp_path, resume=True, progress=False)
    assert second.report["resumed_from"].endswith("epoch-1")
    assert second.report["global_step"] == 2 * first.report["global_step"]
    with pytest.raises(ValueError, match="skim_weight"):
        other = SkimConfig.from_dict({**more.to_dict(), "skim_weight": 0.1})
        skim(dense, other, task, tokenizer=tiny_tokenizer, out_dir=tmp_path, resume=True, progress=False)


def test_calibration_meets_a_kept_fraction_and_a_macs_target(tiny_tokenizer):
    model = skimmer("bert", num_labels=2)
    batches = tokenized_batches(examples(24), tiny_tokenizer, batch_size=8, max_length=24)
    found = calibrate_shift(model, batches, keep=0.5, tolerance=0.02)
    assert abs(found["achieved"] - 0.5) <= 0.05 and model.skim_shift == found["shift"]
    assert abs(measure_skim(model, batches)["mean_kept"] - found["achieved"]) < 1e-9
    by_macs = calibrate_shift(model, batches, macs=0.7, tolerance=0.02)
    assert abs(measure_skim(model, batches)["relative_macs"] - by_macs["achieved"]) < 1e-9
    assert abs(by_macs["achieved"] - 0.7) <= 0.05


def test_calibration_meets_a_latency_target(tiny_tokenizer, monkeypatch):
    import slimformer.skim.calibrate as cal

    model = skimmer("bert", num_labels=2)
    batches = tokenized_batches(examples(16), tiny_tokenizer, batch_size=1, max_length=24)
    # the real timer: positive milliseconds, and the model's shift is left as it was
    model.skim_shift = 0.25
    assert cal._median_ms(model, batches[:2], 3.0, 1) > 0 and model.skim_shift == 0.25
    # a timer that is a known function of the work done (10 ms fixed + 1 ms per kept-token layer-slot)
    firsts = [model.skim_first_layer(**{k: v for k, v in b.items() if k != "labels"}) for b in batches]

    def fake_ms(m, bs, shift, repeats):
        assert m is model and len(bs) == len(batches)
        return 10.0 + float(sum(m.skim_rest(h, a, shift=shift).tokens[:, 1:].sum() for h, a in firsts))

    monkeypatch.setattr(cal, "_median_ms", fake_ms)
    full, floor = fake_ms(model, batches, -1e9, 1), fake_ms(model, batches, 1e9, 1)
    target = (full + floor) / 2
    found = calibrate_shift(model, batches, latency_ms=target, tolerance=0.05)
    assert found["metric"] == "latency_ms" and abs(found["achieved"] - target) <= 0.05 * target
    assert model.skim_shift == found["shift"] and fake_ms(model, batches, found["shift"], 1) == found["achieved"]
    below = calibrate_shift(model, batches, latency_ms=floor / 2)  # unreachable: skims all it can, says so
    assert below["achieved"] == floor > below["target"]
    with pytest.raises(ValueError, match="latency_ms"):
        calibrate_shift(model, batches, latency_ms=0)
    with pytest.raises(ValueError, match="exactly one"):
        calibrate_shift(model, batches, keep=0.5, latency_ms=5.0)


# --- save, load, evaluate, bench ------------------------------------------------------------------


def test_save_load_reproduces_and_runs_with_evaluate_and_bench(family, tiny_tokenizer, tmp_path):
    model = skimmer(family, num_labels=2)
    model.skim_shift = 0.25
    save_skim(model, tiny_tokenizer, tmp_path / "s", report={"note": 1})
    loaded, tok = load_model(str(tmp_path / "s"))
    assert is_skim_model(loaded) and loaded.skim_shift == 0.25 and not loaded.training
    x = make_inputs(3, 10)
    with torch.no_grad():
        a, b = model(**x), loaded(**x)
    torch.testing.assert_close(b.logits, a.logits, rtol=0, atol=0)
    assert b.skim_tokens.tolist() == a.skim_tokens.tolist()
    metrics = evaluate(loaded, tok, examples(12), max_length=24, progress=False)
    assert metrics["n"] == 12
    res = bench_model(loaded, BenchConfig(batch_sizes=(1, 4), seq_len=16, repeats=2, warmup=1), progress=False)
    assert [r["batch_size"] for r in res["results"]] == [1, 4]


def test_a_pruned_model_skims_and_reloads(tiny_tokenizer, tmp_path):
    from slimformer.surgery import KeepPlan, apply_plan

    dense = make_tiny_model("bert")
    full = tuple(range(37))
    apply_plan(
        dense, KeepPlan(heads=((0, 2), (), (0, 1, 2, 3)), ffn=(full, full, tuple(range(20))), layers=(True,) * 3)
    )
    model = random_predictors(build_skim_model(dense))
    save_skim(model, tiny_tokenizer, tmp_path / "p")
    loaded = load_skim(tmp_path / "p")
    x = make_inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**x).logits, model(**x).logits, rtol=0, atol=0)
    assert [s.heads for s in Structure.from_model(loaded).layers] == [2, 0, 4]


def test_timing_runs_every_model_on_the_same_real_batches(tiny_tokenizer):
    model = skimmer("bert", num_labels=2)
    ex = examples(8)
    batches = real_batches(ex, tiny_tokenizer, batch_sizes=(1, 4), max_length=24, per_size=2)
    assert [len(batches[1]), len(batches[4])] == [2, 2]
    wrapped = OnRealBatches(model, batches)
    with torch.no_grad():
        first = wrapped(input_ids=torch.zeros(4, 3, dtype=torch.long)).logits
        expected = model(**{k: v for k, v in batches[4][0].items() if k != "labels"}).logits
    torch.testing.assert_close(first, expected)
    res = time_on_batches({"skim": model, "dense": make_tiny_model("bert", num_labels=2)}, batches, repeats=2)
    assert set(res) == {"skim", "dense"} and res["skim"]["results"][1]["batch_size"] == 4


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field,value",
    [
        ("skim_weight", -1.0),
        ("tau", 0.0),
        ("distill", 1.5),
        ("predictor_hidden", 0),
        ("max_length", 1),
        ("warmup_ratio", 1.0),
        ("max_examples", 0),
        ("freeze_embeddings", "yes"),
        ("lr", float("nan")),
    ],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SkimConfig(**{field: value})


def test_config_round_trip_and_unknown_keys():
    cfg = SkimConfig(skim_weight=1, max_examples=10)
    assert SkimConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="lamda"):
        SkimConfig.from_dict({"lamda": 1.0})


def test_bad_models_data_and_targets(tiny_tokenizer, tmp_path):
    model = skimmer("bert", num_labels=2)
    with pytest.raises(ValueError, match="already skims"):
        build_skim_model(model)
    with pytest.raises(ValueError, match="at least 2 layers"):
        build_skim_model(make_tiny_model("bert", layers=1))
    dense = make_tiny_model("bert", num_labels=2)
    with pytest.raises(ValueError, match="empty"):
        skim(dense, SkimConfig(), [], tokenizer=tiny_tokenizer)
    with pytest.raises(ValueError, match="tokenizer"):
        skim(dense, SkimConfig(), examples(4))
    with pytest.raises(ValueError, match="outside"):
        skim(dense, SkimConfig(), [Example("good", 5)], tokenizer=tiny_tokenizer)
    batches = tokenized_batches(examples(4), tiny_tokenizer)
    with pytest.raises(ValueError, match="exactly one"):
        calibrate_shift(model, batches, keep=0.5, macs=0.5)
    with pytest.raises(ValueError, match="keep"):
        calibrate_shift(model, batches, keep=1.5)
    save_model(dense, tiny_tokenizer, tmp_path / "dense")
    with pytest.raises(ValueError, match="not a skimming model"):
        load_skim(tmp_path / "dense")
    with pytest.raises(ValueError, match="save_skim|not a skimming"):
        save_skim(dense, tiny_tokenizer, tmp_path / "x")


# --- command line ---------------------------------------------------------------------------------


def test_cli_trains_calibrates_reports_and_the_folder_works_with_evaluate_and_bench(tmp_path, tiny_tokenizer):
    save_model(make_tiny_model("bert", num_labels=2), tiny_tokenizer, tmp_path / "dense")
    rows = ["text,label"] + [f"{e.text},{'pos' if e.label else 'neg'}" for e in examples(60)]
    (tmp_path / "task.csv").write_text("\n".join(rows) + "\n")
    task, out, runner = str(tmp_path / "task.csv"), tmp_path / "skim", CliRunner()
    args = ["skim", "train", str(tmp_path / "dense"), "--task", task, "--out", str(out), "--lambda", "2"]
    args += ["--max-steps", "2", "--batch-size", "8", "--max-length", "24", "--evaluate", "test", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["global_step"] == 2 and len(report["metrics"]["kept_fraction"]) == 3
    assert not (out / "checkpoints").exists() and (out / "skim_report.json").is_file()
    again = runner.invoke(app, args)
    assert again.exit_code != 0 and "not empty" in again.output
    cal = runner.invoke(app, ["skim", "calibrate", str(out), "--task", task, "--keep", "0.6", "--json"])
    assert cal.exit_code == 0, cal.output
    assert json.loads((out / "config.json").read_text())["slimformer_skim"]["shift"] == json.loads(cal.stdout)["shift"]
    slow = ["skim", "calibrate", str(out), "--task", task, "--latency-ms", "1e6", "--latency-batch-size", "2"]
    lat = runner.invoke(app, [*slow, "--json"])  # a target every shift meets: keeps the most tokens
    assert lat.exit_code == 0, lat.output
    assert json.loads(lat.stdout)["metric"] == "latency_ms" and json.loads(lat.stdout)["achieved"] < 1e6
    ev = runner.invoke(app, ["evaluate", str(out), "--task", task, "--json"])
    assert ev.exit_code == 0, ev.output
    bench = runner.invoke(app, ["bench", str(out), "--seq-len", "16", "--repeats", "2", "--json"])
    assert bench.exit_code == 0, bench.output
    rep = runner.invoke(
        app, ["skim", "report", str(out), "--task", task, "--vs", str(tmp_path / "dense"), "--batch-sizes", "1,2"]
    )
    assert rep.exit_code == 0, rep.output
    assert "kept fraction per layer" in rep.stdout and "batch 2:" in rep.stdout
    bad = runner.invoke(app, ["skim", "calibrate", str(tmp_path / "dense"), "--task", task, "--keep", "0.5"])
    assert bad.exit_code != 0 and "not a skimming model" in bad.output
