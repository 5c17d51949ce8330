"""``fit``: the choice meets the budget, max_drop picks the fastest, no fit names the closest, outputs load."""

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import WORDS, make_tiny_model
from slimformer.cli import app
from slimformer.cost import cost_of
from slimformer.data import load_task
from slimformer.export import save_model
from slimformer.fit import FitConfig, NoFit, choose, fit
from slimformer.fit_report import save_fit
from slimformer.models import load_model
from slimformer.structure import Structure

runner = CliRunner()
SMALL = {"budgets": (0.7, 0.4), "calibration": 16, "repeats": 2, "warmup": 1}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMFORMER_CACHE", str(tmp_path / "cache"))  # latency tables of the tiny model


@pytest.fixture
def task_file(tmp_path):
    rows = ["text,label"]
    for i in range(80):
        words = " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(3 + i % 5))
        rows.append(f"{words} {'great fun' if i % 2 else 'awful dull'},{'pos' if i % 2 else 'neg'}")
    path = tmp_path / "reviews.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture
def dense_folder(tmp_path, tiny_tokenizer):
    return save_model(make_tiny_model("bert", num_labels=2, layers=2), tiny_tokenizer, tmp_path / "dense")


def _row(key, acc, ms, met, ratio=0.5):
    return {"key": key, "val_accuracy": acc, "latency_ms": ms, "met": met, "ratio": ratio,
            "measure_text": f"{ms} ms", "limit_text": "5 ms"}  # fmt: skip


def test_choose_most_accurate_that_meets_the_budget():
    rows = [_row("dense", 0.90, 10, False, 2.0), _row("a", 0.88, 4, True), _row("b", 0.85, 2, True)]
    chosen, reason = choose(rows, 0.90, None)
    assert chosen["key"] == "a" and "most accurate" in reason


def test_choose_with_max_drop_takes_the_fastest_within_it():
    rows = [_row("dense", 0.90, 10, True), _row("a", 0.895, 4, True), _row("b", 0.885, 3, True)]
    assert choose(rows, 0.90, 1.0)[0]["key"] == "a"  # b is 1.5 points below dense
    assert choose(rows, 0.90, 2.0)[0]["key"] == "b"
    none, closest = choose(rows[2:], 0.90, 0.5)
    assert none is None and closest["key"] == "b" and "max_drop=0.5" in closest["message"]


def test_choose_names_the_closest_miss():
    rows = [_row("dense", 0.9, 10, False, 2.0), _row("a", 0.8, 6, False, 1.2), _row("b", 0.7, 7, False, 1.4)]
    none, closest = choose(rows, 0.9, None)
    assert none is None and closest["key"] == "a" and "missed it by 20.0%" in closest["message"]


def test_fit_macs_budget_meets_it_and_saves_a_loadable_model(dense_folder, task_file, tiny_tokenizer, tmp_path):
    model, _ = load_model(str(dense_folder))
    task = load_task(str(task_file))
    config = FitConfig(budget="macs=0.5,seq=16", variants=("torch-fp32", "torch-int8"), **SMALL)
    result = fit(model, config, task, tiny_tokenizer, progress=False)
    report = result.report
    rows = {r["key"]: r for r in report["candidates"]}
    dense_macs = cost_of(Structure.from_model(model), 16).macs
    assert report["limit"] == 0.5 * dense_macs
    assert not rows["dense/torch-fp32"]["met"] and "optin@macs=0.5/torch-int8" in rows
    chosen = rows[report["choice"]["key"]]
    assert chosen["met"] and chosen["macs"] <= 0.5 * dense_macs
    assert chosen["val_accuracy"] == max(r["val_accuracy"] for r in rows.values() if r["met"])
    assert set(report["test"]) == {"chosen", "dense", "drop_points"}

    out = save_fit(result, tiny_tokenizer, tmp_path / "out")
    loaded, _ = load_model(str(out / "model"))
    ids = torch.randint(5, 40, (3, 9))
    with torch.inference_mode():
        torch.testing.assert_close(loaded(input_ids=ids).logits, result.model(input_ids=ids).logits)
        assert not torch.allclose(loaded(input_ids=ids).logits, model(input_ids=ids).logits)  # it was compressed
    assert json.loads((out / "fit.json").read_text())["choice"]["key"] == chosen["key"]
    assert (out / "frontier.png").stat().st_size > 0


def test_cli_latency_max_drop_picks_the_fastest_and_the_saved_model_loads(dense_folder, task_file, tmp_path):
    out = tmp_path / "fit"
    args = ["fit", dense_folder, "--task", task_file, "--budget", "latency=10s,seq=16", "--max-drop", "100",
            "--budgets", "0.5", "--calibration", "16", "--repeats", "3", "--out", out, "--json"]  # fmt: skip
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report == json.loads((out / "fit.json").read_text())
    rows = report["candidates"]
    assert {r["runtime"] for r in rows} == {"torch", "onnxruntime"} and all(r["met"] for r in rows)
    chosen = next(r for r in rows if r["key"] == report["choice"]["key"])
    assert chosen["latency_ms"] == min(r["latency_ms"] for r in rows)  # max_drop=100: every row is within
    if chosen["runtime"] == "onnxruntime":
        from slimformer.onnx_runtime import load_onnx

        precision = chosen["precision"]
        saved, tok = load_onnx(out / "model", int8=precision == "int8", static=precision == "int8-static")
        metrics = saved.evaluate(
            tok, load_task(str(task_file)).split("test"), max_length=report["config"]["max_length"]
        )
    else:
        from slimformer.evaluate import evaluate

        saved, tok = load_model(str(out / "model"))
        metrics = evaluate(saved, tok, load_task(str(task_file)).split("test"), progress=False)
    assert metrics["accuracy"] == report["test"]["chosen"]["accuracy"]


def test_cli_impossible_budget_reports_the_closest_and_exits_1(dense_folder, task_file, tmp_path):
    out = tmp_path / "nofit"
    args = ["fit", dense_folder, "--task", task_file, "--budget", "latency=0.001ms,seq=16", "--budgets", "0.5",
            "--variants", "torch-fp32,ort-int8", "--calibration", "16", "--repeats", "2", "--out", out]  # fmt: skip
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 1, result.output
    assert "no candidate meets the budget: the closest" in result.stderr and "missed it by" in result.stderr
    report = json.loads((out / "fit.json").read_text())
    assert report["choice"] is None and not any(r["met"] for r in report["candidates"])
    closest = min(report["candidates"], key=lambda r: r["latency_ms"])
    assert report["closest"]["key"] == closest["key"] and report["closest"]["ratio"] > 1
    assert not (out / "model").exists()


def test_fit_refuses_bad_input_before_work(dense_folder, task_file, tmp_path, tiny_tokenizer):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    result = runner.invoke(
        app, ["fit", str(dense_folder), "--task", str(task_file), "-b", "macs=0.5", "-o", str(taken)]
    )
    assert result.exit_code == 2 and "--overwrite" in result.stderr
    result = runner.invoke(app, ["fit", str(dense_folder), "-b", "speed=2", "-o", str(tmp_path / "x")])
    assert result.exit_code == 2 and "speed" in result.stderr and not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="variants"):
        FitConfig(budget="macs=0.5", variants=("torch-fp16",))
    with pytest.raises(ValueError, match="seq=128 is longer"):
        fit(load_model(str(dense_folder))[0], FitConfig(budget="macs=0.5"), load_task(str(task_file)), tiny_tokenizer)
    with pytest.raises(NoFit) as info:
        model = load_model(str(dense_folder))[0]
        fit(model, FitConfig(budget="params=10,seq=16", variants=("torch-int8",), **SMALL), load_task(str(task_file)),
            tiny_tokenizer, progress=False)  # fmt: skip
    report = info.value.report
    assert report["closest"]["key"] and report["budget"] == "params=10,seq=16"
    assert [r["key"] for r in report["candidates"]][:2] == ["dense/torch-fp32", "dense/torch-int8"]  # the reference
    assert any("params=10" in s["what"] and "infeasible" in s["why"] for s in report["skipped"])


def test_relative_latency_budget_is_a_fraction_of_dense_measured_beside_it(dense_folder, task_file, tiny_tokenizer):
    model, _ = load_model(str(dense_folder))
    config = FitConfig(budget="latency=0.999,seq=16", variants=("torch-fp32", "torch-int8"), **SMALL)
    try:
        report = fit(model, config, load_task(str(task_file)), tiny_tokenizer, progress=False).report
    except NoFit as exc:  # on a busy machine every pruned tiny model may be as slow as dense
        report = exc.report
    rows = report["candidates"]
    assert report["limit"] == pytest.approx(0.999 * rows[0]["latency_ms"]) and rows[0]["key"] == "dense/torch-fp32"
    assert all(r["met"] == (r["latency_ms"] <= report["limit"]) for r in rows)
    assert {r["budget"] for r in rows} >= {"", "latency=0.999", "macs=0.4"}  # the table's structure and a MACs one


def test_demo_fit_budget_text_adds_batch_and_length_only_when_missing():
    from slimformer.demo_fit import fit_budget_text

    assert fit_budget_text("latency=0.5", 48) == "latency=0.5,seq=48,batch=1"
    assert fit_budget_text("latency=5ms,batch=32", 48) == "latency=5ms,batch=32,seq=48"
    assert fit_budget_text("latency=0.5,seq=64", 48) == "latency=0.5,seq=64,batch=1"
    assert fit_budget_text("memory=40MB", 48) == "memory=40MB,seq=48"


def test_demo_headline_without_a_fit_keeps_dense_and_the_peer(dense_folder, task_file, tiny_tokenizer, tmp_path):
    from types import SimpleNamespace

    from slimformer.demo_fit import PEER_NAME, add_fit_points, headline

    model, _ = load_model(str(dense_folder))
    task = load_task(str(task_file))
    config = SimpleNamespace(
        fit="params=10", fit_max_drop=1.0, fit_budgets=(0.5,), fit_calibration=16, fit_val_examples=None
    )
    dense = {"key": "dense", "name": "dense", "accuracy": 0.5, "params": 1, "macs": 1}
    points, models = [dense], {"dense": model}
    (tmp_path / "run").mkdir()
    facts = add_fit_points(config, model, tiny_tokenizer, task, seq_len=16, max_length=16, points=points,
                           models=models, out=tmp_path / "run", progress=False)  # fmt: skip
    assert facts["choice"] is None and "no candidate" in facts["message"]
    assert [p["key"] for p in points] == ["dense", PEER_NAME] and list(models) == ["dense", PEER_NAME]
    assert json.loads((tmp_path / "run" / "fit" / "fit.json").read_text())["choice"] is None
    rows = [{**dense, "latency_b1_ms": 2.0}, {"name": PEER_NAME, "accuracy": 0.5, "latency_b1_ms": 1.0}]
    head = headline(facts, rows)
    assert [r["name"] for r in head["rows"]] == ["dense", PEER_NAME] and "fit_vs_peer" not in head
