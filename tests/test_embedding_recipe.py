"""`slimformer compress` and `slimformer pareto` on sentence-embedding models (tiny random folders)."""

from __future__ import annotations

import json

import pytest

from slimformer.embedding import embed, folder_pooling, load_embedding_model
from slimformer.quantize import is_quantized
from test_embedding_cli import cli, write_labelled_csv, write_st_folder


@pytest.fixture
def st_folder(tmp_path, tiny_tokenizer):
    return write_st_folder(tmp_path / "st", tiny_tokenizer)


@pytest.fixture
def labelled_csv(tmp_path):
    return write_labelled_csv(tmp_path / "task.csv")


def recipe(tmp_path, *steps):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"steps": list(steps)}))
    return path


def test_compress_prune_int8_on_an_embedding_folder(st_folder, labelled_csv, tmp_path):
    out = tmp_path / "small"
    steps = recipe(tmp_path, {"step": "prune", "method": "optin", "budget": "macs=0.6"}, {"step": "int8"})
    args = ["compress", st_folder, "--recipe", steps, "--task", labelled_csv, "--out", out, "--calibration", 32]
    result = cli(*args, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["kind"] == "embedding" and report["split"] == "test" and report["examples"]["test"] == 20
    assert [s["step"] for s in report["steps"]] == ["prune", "int8"]
    assert report["steps"][0]["report"]["relative"]["macs"] <= 0.6
    assert 0 < report["agreement"]["mean_cosine"] < 1 and 0 <= report["agreement"]["recall_at_k"] <= 1
    assert set(report["compressed"]) >= {"knn_accuracy", "retrieval_precision"}
    # it loads back as an embedding model, int8, and embeds as the report measured
    assert folder_pooling(str(out)).mode == "mean"
    small, tok = load_embedding_model(str(out))
    assert is_quantized(small)
    assert sum(layer.attention.self.query.out_features for layer in small.bert.encoder.layer) < 3 * 32  # pruned
    assert embed(small, tok, ["good fun movie", "bad dull film at all"]).shape == (2, 32)
    evaluated = json.loads(cli("evaluate", out, "--task", labelled_csv, "--json").output)
    assert evaluated["knn_accuracy"] == pytest.approx(report["compressed"]["knn_accuracy"])
    text = cli(*args[:-2], "--calibration", 32, "--overwrite")  # the human-readable report
    assert text.exit_code == 0 and "recall@10" in text.output and "kNN accuracy" in text.output


def test_compress_embedding_recover_distils_and_saves_a_sentence_transformers_folder(
    st_folder,
    labelled_csv,
    tmp_path,
    monkeypatch,
):
    import slimformer.embedding_recover as er

    seen = []
    real = er.recover_embedding

    def spy(model, teacher, batches, config, **kwargs):
        seen.append(batches)
        return real(model, teacher, batches, config, **kwargs)

    monkeypatch.setattr(er, "recover_embedding", spy)
    out = tmp_path / "rec"
    steps = recipe(tmp_path, {"step": "magnitude", "budget": "macs=0.7"}, {"step": "recover", "max_steps": 2})
    result = cli("compress", st_folder, "-r", steps, "-t", labelled_csv, "-o", out, "--evaluate", "validation",
                 "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["split"] == "validation" and report["steps"][1]["report"]["steps"] == 2
    assert len(seen) == 1 and all("labels" not in b for b in seen[0])  # unlabelled train texts
    assert (out / "modules.json").is_file() and (out / "1_Pooling" / "config.json").is_file()


@pytest.mark.parametrize(
    ("step", "reason"),
    [
        ({"step": "prune", "method": "fisher", "budget": "macs=0.5"}, "needs a task loss with labels"),
        ({"step": "fisher", "budget": "macs=0.5"}, "needs a task loss with labels"),
        ({"step": "axformer", "budget": "macs=0.5"}, "validation accuracy of a classifier head"),
        ({"step": "slim", "budget": "macs=0.5"}, "labelled classification loss"),
        ({"step": "skim"}, "classification loss on labelled batches"),
        ({"step": "exits"}, "classifier heads"),
    ],
)
def test_compress_refuses_steps_an_embedding_model_cannot_run(st_folder, labelled_csv, tmp_path, step, reason):
    out = tmp_path / "o"
    steps = recipe(tmp_path, {"step": "magnitude", "budget": "macs=0.9"}, step)
    result = cli("compress", st_folder, "-r", steps, "-t", labelled_csv, "-o", out)
    assert result.exit_code == 2, result.output
    assert f"step 2 ({step['step']})" in result.output and "embedding models" in result.output
    assert reason in result.output and not out.exists()


def test_compress_embedding_refuses_the_train_split(st_folder, labelled_csv, tmp_path):
    steps = recipe(tmp_path, {"step": "magnitude", "budget": "macs=0.9"})
    result = cli("compress", st_folder, "-r", steps, "-t", labelled_csv, "-o", tmp_path / "o", "--evaluate", "train")
    assert result.exit_code == 2 and "validation or test" in result.output and not (tmp_path / "o").exists()


def test_pareto_sweeps_an_embedding_model_scored_by_knn_accuracy(st_folder, labelled_csv, tmp_path, monkeypatch):
    import slimformer.bench as bench_module
    from slimformer.embedding import EmbeddingForward

    timed = []
    real = bench_module.bench_models

    def spy(models, config, **kwargs):
        timed.extend(type(m) for m in models.values())
        return real(models, config, **kwargs)

    monkeypatch.setattr(bench_module, "bench_models", spy)
    out = tmp_path / "p"
    args = ["--budgets", "0.7,0.5", "--repeats", 1, "--seq-len", 8, "--batch-sizes", 1, "--calibration", 32]
    result = cli("pareto", st_folder, "--task", labelled_csv, "--out", out, *args, "--json")
    assert result.exit_code == 0, result.output
    points = {p["key"]: p for p in json.loads(result.output)["points"]}
    # the embedding default drops fisher (needs labels); every model timed as encoder + pooling, interleaved
    assert set(points) == {"dense", *(f"{m}@{b}" for m in ("optin", "magnitude", "optin+int8") for b in (0.7, 0.5)),
                           "dense+int8@1.0"}  # fmt: skip
    assert timed == [EmbeddingForward] * len(points)
    assert points["dense"]["recall_at_k"] == 1.0 and points["dense"]["mean_cosine"] == pytest.approx(1.0)
    assert points["optin@0.5"]["mean_cosine"] < 1 and points["optin@0.5"]["macs"] < points["optin@0.7"]["macs"]
    assert all(p["accuracy"] == p["knn_accuracy"] and "retrieval_precision" in p for p in points.values())
    assert "recall@10" in (out / "pareto.md").read_text() and (out / "frontier_latency.png").is_file()


def test_pareto_refuses_fisher_on_an_embedding_model(st_folder, labelled_csv, tmp_path):
    result = cli("pareto", st_folder, "--task", labelled_csv, "--out", tmp_path / "p", "--methods", "optin,fisher")
    assert result.exit_code == 2, result.output
    assert "fisher is not available for embedding models" in result.output and not (tmp_path / "p").exists()
