"""The CLI on a user's own files and folders: own splits, labels by the model's id2label, guarded outputs."""

import json

import pytest
from typer.testing import CliRunner

from conftest import make_tiny_model
from slimformer.cli import app
from slimformer.export import save_model

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _csv(path, n, start=0, pos="pos", neg="neg"):
    """Three positive rows to one negative: a model that always says one class still scores 0.25 or 0.75."""
    rows = ["text,label"] + [
        f"{'good fun' if i % 4 else 'bad dull'} movie {i},{pos if i % 4 else neg}" for i in range(start, start + n)
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


def _model(tmp_path, tiny_tokenizer, labels, name="model"):
    model = make_tiny_model("bert", num_labels=2)
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {v: k for k, v in enumerate(labels)}
    return save_model(model, tiny_tokenizer, tmp_path / name)


def _accuracy(*args):
    result = run("evaluate", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_own_split_files_are_used_as_given_and_split_all_scores_every_row(tmp_path, tiny_tokenizer):
    folder = _model(tmp_path, tiny_tokenizer, ("neg", "pos"))
    train, val, test = (
        _csv(tmp_path / "tr.csv", 20),
        _csv(tmp_path / "va.csv", 4, 100),
        _csv(tmp_path / "te.csv", 7, 200),
    )
    files = ("--task", train, "--validation-file", val, "--test-file", test)
    assert _accuracy(folder, *files)["n"] == 7  # the test file, not a tenth of a pool
    assert _accuracy(folder, *files, "--split", "validation")["n"] == 4
    assert _accuracy(folder, *files, "--split", "all")["n"] == 31


def test_labels_follow_the_models_id2label_not_their_sorted_names(tmp_path, tiny_tokenizer):
    task = _csv(tmp_path / "t.csv", 40)
    forward = _model(tmp_path, tiny_tokenizer, ("neg", "pos"), "forward")
    backward = _model(tmp_path, tiny_tokenizer, ("pos", "neg"), "backward")  # same weights, classes swapped
    a = _accuracy(forward, "--task", task, "--split", "all")["accuracy"]
    b = _accuracy(backward, "--task", task, "--split", "all")["accuracy"]
    # by name, each row's label index flips with the model: the two accuracies sum to 1 (sorted names: equal)
    assert a + b == pytest.approx(1.0) and a != pytest.approx(b)


def test_a_task_label_the_model_does_not_know_is_named(tmp_path, tiny_tokenizer):
    folder = _model(tmp_path, tiny_tokenizer, ("neg", "pos"))
    result = run("evaluate", folder, "--task", _csv(tmp_path / "t.csv", 20, pos="great"))
    assert result.exit_code == 2 and "'great'" in result.output and "does not know" in result.output


def test_overwrite_refuses_the_working_folder_and_leaves_the_model(tmp_path, tiny_tokenizer, monkeypatch):
    folder = _model(tmp_path, tiny_tokenizer, ("neg", "pos"))
    task = _csv(tmp_path / "t.csv", 40)
    before = sorted(p.name for p in folder.iterdir())
    monkeypatch.chdir(folder)
    for out in (".", "..", folder):
        result = run("prune", folder, "--task", task, "--out", out, "--overwrite", "--calibration", 8)
        assert result.exit_code == 2 and "refusing to replace" in result.output, result.output
    assert sorted(p.name for p in folder.iterdir()) == before


def test_an_infeasible_budget_fails_before_any_scoring(tmp_path, tiny_tokenizer):
    folder = _model(tmp_path, tiny_tokenizer, ("neg", "pos"))
    out = tmp_path / "out"
    result = run("prune", folder, "--task", _csv(tmp_path / "t.csv", 40), "--budget", "memory=1KB", "--out", out)
    assert result.exit_code == 2 and "smallest" in result.output and not out.exists()
