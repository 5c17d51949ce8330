"""Differentiable slimming: gates, training with checkpoints, extraction by surgery, vocabulary pruning, CLI."""

from __future__ import annotations

import json
import random

import pytest
import torch
from typer.testing import CliRunner

from conftest import WORDS, make_inputs, make_tiny_model
from slimformer.budget import Budget, InfeasibleBudget
from slimformer.data import Example
from slimformer.export import save_model
from slimformer.models import load_model
from slimformer.slim import SlimConfig, SlimmedModel, extract, load_run, slim
from slimformer.slim.vocab import kept_token_ids, prune_vocabulary, unk_report
from slimformer.structure import Structure

FAST = dict(epochs=2, batch_size=8, group_size=8, init_examples=16, max_length=16, eval_budgets=(1.0, 0.4))


def examples(n: int = 40, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    return [Example(" ".join(rng.choice(WORDS) for _ in range(6)), rng.randint(0, 1)) for _ in range(n)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_tokenizer):
    """A tiny BERT slimmed for two epochs into a run folder."""
    run = tmp_path_factory.mktemp("run")
    model = make_tiny_model("bert", num_labels=2)
    slimmed = slim(model, SlimConfig(**FAST), examples(), tokenizer=tiny_tokenizer, out_dir=run, progress=False)
    return slimmed, run


# --- config and budget text ---------------------------------------------------------------------


def test_config_validates_and_round_trips():
    cfg = SlimConfig(**FAST)
    assert SlimConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for bad in ({"epochs": 0}, {"min_budget": 0.0}, {"min_budget": 0.9, "max_budget": 0.5}, {"init": "guess"},
                {"eval_budgets": (1.5,)}, {"gate_lr": -1.0}, {"group_size": True}):  # fmt: skip
        with pytest.raises(ValueError, match=next(iter(bad))):
            SlimConfig(**bad)
    with pytest.raises(ValueError, match="SlimConfig: unknown field"):
        SlimConfig.from_dict({"epoch": 1})


def test_budget_accepts_percent():
    assert Budget.parse("memory=40%") == Budget(kind="memory", value=0.4, relative=True)
    for bad in ("memory=0%", "memory=140%", "memory=x%"):
        with pytest.raises(ValueError, match="cannot parse budget"):
            Budget.parse(bad)


# --- gates ------------------------------------------------------------------------------------


def test_selection_is_nested_fits_and_drops_empty_layers(family):
    net = SlimmedModel(make_tiny_model(family), group_size=8)
    torch.manual_seed(1)
    with torch.no_grad():
        net.gates.head_logits.normal_()
        net.gates.ffn_logits.normal_()
        net.gates.head_logits[0] = -10.0  # layer 0 last in the ranking
        net.gates.ffn_logits[0] = -10.0
    previous = None
    for f in (1.0, 0.8, 0.5, 0.3, 0.1):
        sel = net.select(f)
        assert sel.cost <= f * net.costs.encoder + 1e-6
        units = torch.cat([sel.heads.flatten(), sel.groups.flatten()])
        if previous is not None:
            assert not (units & ~previous).any()  # a smaller budget keeps a subset
        previous = units
    assert net.select(1.0).heads.all() and net.select(1.0).groups.all()
    small = net.select(0.3)
    assert not small.layers[0] and small.layers.any()


def test_ungated_and_full_budget_equal_the_base_model(family, tiny_inputs):
    model = make_tiny_model(family)
    net = SlimmedModel(model, group_size=8)
    with torch.no_grad():
        net.gates.head_logits.normal_()
        expected = model(**tiny_inputs).logits
        torch.testing.assert_close(net(**tiny_inputs).logits, expected, rtol=0, atol=0)
        with net.at(1.0):
            torch.testing.assert_close(net(**tiny_inputs).logits, expected, rtol=0, atol=0)
        with net.at(0.3):  # (ELECTRA's GELU head leaves random logits ~0.001: differences of ~1e-4)
            assert not torch.allclose(net(**tiny_inputs).logits, expected, atol=1e-5)


def test_straight_through_reaches_the_gates(tiny_inputs):
    net = SlimmedModel(make_tiny_model("bert"), group_size=8)
    out = net(**tiny_inputs, selection=net.select(0.5), straight_through=True)
    out.logits.sum().backward()
    assert net.gates.head_logits.grad.abs().sum() > 0 and net.gates.ffn_logits.grad.abs().sum() > 0


def test_pruned_model_is_refused():
    from slimformer.surgery import KeepPlan, apply_plan

    model = apply_plan(make_tiny_model("bert"), KeepPlan.removing(make_tiny_model("bert"), heads={0: [1]}))
    with pytest.raises(ValueError, match="unpruned model"):
        SlimmedModel(model)


# --- training -------------------------------------------------------------------------------------


def test_training_moves_gates_and_writes_a_run(trained):
    slimmed, run = trained
    hist = slimmed.info["report"]["history"]
    assert len(hist) == 2 and set(hist[0]) >= {"mean_task", "mean_budget", "mean_memory"}
    assert (run / "checkpoints" / "epoch-2" / "trainer_state.json").is_file()
    loaded, _ = load_run(run)
    torch.testing.assert_close(loaded.gates.head_logits, slimmed.gates.head_logits)
    inputs = make_inputs()
    with torch.no_grad(), loaded.at(0.5), slimmed.at(0.5):
        torch.testing.assert_close(loaded(**inputs).logits, slimmed(**inputs).logits)


def test_resume_continues_to_the_same_result(tmp_path, tiny_tokenizer):
    import shutil

    data, cfg = examples(24), SlimConfig(**FAST)
    full = slim(
        make_tiny_model("bert", num_labels=2),
        cfg,
        data,
        tokenizer=tiny_tokenizer,
        out_dir=tmp_path / "a",
        progress=False,
    )
    # an interrupted run: the same folder as it was after epoch 1
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "epoch-2")
    for name in ("slim_run.json", "gates.safetensors", "student"):
        path = tmp_path / "b" / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(FileExistsError, match="not empty"):
        slim(make_tiny_model("bert", num_labels=2), cfg, data, tokenizer=tiny_tokenizer, out_dir=tmp_path / "b")
    with pytest.raises(ValueError, match="lr"):
        slim(make_tiny_model("bert", num_labels=2), SlimConfig(**{**FAST, "lr": 1e-3}), data, tokenizer=tiny_tokenizer,
             out_dir=tmp_path / "b", resume=True)  # fmt: skip
    with pytest.raises(FileNotFoundError, match="--resume"):
        load_run(tmp_path / "b")
    resumed = slim(make_tiny_model("bert", num_labels=2), cfg, data, tokenizer=tiny_tokenizer, out_dir=tmp_path / "b",
                   resume=True, progress=False)  # fmt: skip
    assert resumed.info["report"]["resumed_from"].endswith("epoch-1")
    torch.testing.assert_close(resumed.gates.ffn_logits, full.gates.ffn_logits)
    torch.testing.assert_close(resumed.model.classifier.weight, full.model.classifier.weight)
    assert load_run(tmp_path / "b")[0].info["report"]["global_step"] == full.info["report"]["global_step"]


# --- extraction -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [1.0, 0.6, 0.25])
def test_extracted_model_equals_the_gated_model_and_reloads(trained, tmp_path, fraction):
    from slimformer.bench import BenchConfig, bench_model
    from slimformer.evaluate import evaluate

    slimmed, run = trained
    result = extract(run, Budget(kind="memory", value=fraction, relative=True), of="encoder")
    inputs = make_inputs()
    with torch.no_grad(), slimmed.at(fraction):
        gated = slimmed(**inputs).logits
    with torch.no_grad():
        torch.testing.assert_close(result.model(**inputs).logits, gated, rtol=1e-5, atol=1e-6)
    assert result.report["encoder_fraction"] <= fraction + 1e-9
    assert not any("gate" in n for n, _ in result.model.named_parameters())
    if fraction < 1:
        assert sum(p.numel() for p in result.model.parameters()) < sum(p.numel() for p in slimmed.model.parameters())
    folder = result.save(tmp_path / "m")
    loaded, tok = load_model(str(folder))
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, result.model(**inputs).logits, rtol=0, atol=0)
    assert 0 <= evaluate(loaded, tok, examples(8), max_length=16, progress=False)["accuracy"] <= 1
    bench = bench_model(loaded, BenchConfig(batch_sizes=(1,), seq_len=8, warmup=0, repeats=1), progress=False)
    assert bench["results"][0]["median_ms"] > 0


def test_extract_errors(trained):
    slimmed, run = trained
    with pytest.raises(ValueError, match="latency"):
        extract(slimmed, "latency=5ms")
    with pytest.raises(ValueError, match="of="):
        extract(slimmed, "memory=0.5", of="layers")
    with pytest.raises(InfeasibleBudget, match="vocabulary pruning"):
        extract(slimmed, "memory=100B")
    with pytest.raises(ValueError, match="tokenizer"):
        extract(slimmed, "memory=0.9", prune_vocab=True)
    with pytest.raises(FileNotFoundError, match="not a finished slimming run"):
        load_run(run / "checkpoints")


def test_whole_model_budget_with_vocabulary_pruning(trained, tmp_path):
    slimmed, run = trained
    texts = [e.text for e in examples()]
    result = extract(run, "memory=0.7", prune_vocab=True, vocab_texts=texts)
    assert result.report["relative"]["bytes_fp32"] <= 0.7
    assert result.report["vocab"]["vocab_after"] < result.report["vocab"]["vocab_before"]
    assert result.model.config.vocab_size == result.report["vocab"]["vocab_after"]
    folder = result.save(tmp_path / "whole")
    loaded, tok = load_model(str(folder))
    batch = tok(texts[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, result.model(**batch).logits, rtol=0, atol=0)


# --- vocabulary pruning -------------------------------------------------------------------------------


def test_vocabulary_pruning_keeps_outputs_and_tokenizes_unseen_words(tiny_tokenizer, tmp_path):
    model = make_tiny_model("bert")
    seen = ["the movie was good", "a bad plot"]
    keep = kept_token_ids(tiny_tokenizer, seen)
    assert set(tiny_tokenizer.all_special_ids) <= set(keep)
    before = model(**tiny_tokenizer(seen, padding=True, return_tensors="pt")).logits
    pruned, tok, report = prune_vocabulary(model, tiny_tokenizer, keep)
    assert report["vocab_after"] == len(keep) == pruned.get_input_embeddings().num_embeddings
    after = pruned(**tok(seen, padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(after, before)
    unseen = tok("the awful film")["input_ids"]
    assert tok.unk_token_id in unseen and len(unseen) == 5  # [CLS] the [UNK] [UNK] [SEP]
    counts = unk_report(tiny_tokenizer, tok, ["the awful film", "a good movie"])
    assert counts["unk_added"] == 2 and counts["texts_changed"] == 1
    save_model(pruned, tok, tmp_path / "v")
    loaded, tok2 = load_model(str(tmp_path / "v"))
    torch.testing.assert_close(loaded(**tok2(seen, padding=True, return_tensors="pt")).logits, before)
    with pytest.raises(ValueError, match="special token"):
        prune_vocabulary(make_tiny_model("bert"), tiny_tokenizer, [5, 6])
    with pytest.raises(ValueError, match="min_count"):
        kept_token_ids(tiny_tokenizer, seen, min_count=0)


# --- CLI -----------------------------------------------------------------------------------------------


def test_cli_train_extract_curve(tmp_path, tiny_tokenizer):
    from slimformer.cli import app

    rng = random.Random(0)
    rows = ["text,label"] + [f"{' '.join(rng.choice(WORDS) for _ in range(5))},{i % 2}" for i in range(60)]
    (tmp_path / "task.csv").write_text("\n".join(rows) + "\n")
    save_model(make_tiny_model("bert", num_labels=2), tiny_tokenizer, tmp_path / "model")
    runner = CliRunner()
    sets = [
        x for k, v in FAST.items() if k not in ("epochs", "max_length", "eval_budgets") for x in ("--set", f"{k}={v}")
    ]
    task = ["--task", str(tmp_path / "task.csv")]
    res = runner.invoke(app, ["slim", "train", str(tmp_path / "model"), *task, "--out", str(tmp_path / "run"),
                              "--epochs", "1", "--max-length", "16", *sets])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "slimming run saved" in res.output
    res = runner.invoke(app, ["slim", "extract", str(tmp_path / "run"), "--budget", "memory=50%", "--of", "encoder",
                              "--out", str(tmp_path / "x"), "--evaluate", "test", "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["encoder_fraction"] <= 0.5 and 0 <= report["metrics"]["accuracy"] <= 1
    assert Structure.from_model(load_model(str(tmp_path / "x"))[0]).total_heads < 12
    res = runner.invoke(
        app, ["slim", "extract", str(tmp_path / "run"), "--budget", "memory=1B", "--out", str(tmp_path / "y")]
    )
    assert res.exit_code == 2 and "infeasible" in res.output
    res = runner.invoke(app, ["slim", "curve", str(tmp_path / "run"), "--task", str(tmp_path / "task.csv"),
                              "--budgets", "0.9,0.4", "--plot", str(tmp_path / "c.png")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "90%" in res.output and (tmp_path / "c.png").stat().st_size > 0
    res = runner.invoke(app, ["slim", "curve", str(tmp_path / "model"), "--task", str(tmp_path / "task.csv")])
    assert res.exit_code == 2 and "not a finished slimming run" in res.output
