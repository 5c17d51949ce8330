"""The embedding case from the command line: embed-compress, info and evaluate on embedding folders."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import WORDS, make_tiny_model
from slimformer.commands import app
from slimformer.embedding import embed, folder_pooling, load_embedding_model

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def write_st_folder(folder, tokenizer):
    """A base encoder with sentence-transformers files and no classifier: what all-MiniLM-L6-v2 ships as."""
    make_tiny_model("bert", num_labels=1).bert.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
            ]
        )
    )
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    (folder / "sentence_bert_config.json").write_text('{"max_seq_length": 32}')
    return folder


def write_labelled_csv(path):
    """200 labelled texts (two classes, pos/neg) in a CSV."""
    rows = ["text,label"]
    for i in range(200):
        words = " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(3 + i % 6))
        rows.append(f"{'good fun' if i % 2 else 'bad dull'} {words} {i},{'pos' if i % 2 else 'neg'}")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture
def st_folder(tmp_path, tiny_tokenizer):
    return write_st_folder(tmp_path / "st", tiny_tokenizer)


@pytest.fixture
def labelled_csv(tmp_path):
    return write_labelled_csv(tmp_path / "task.csv")


def test_embed_compress_end_to_end(st_folder, labelled_csv, tmp_path):
    out = tmp_path / "small"
    args = ["embed-compress", st_folder, "--corpus", labelled_csv, "--budget", "macs=0.6", "--out", out]
    small_run = ["--recover-texts", 64, "--calibration", 32, "--repeats", 1, "--seq-len", 16]
    result = cli(*args, "--recover", *small_run, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["prune"]["relative"]["macs"] <= 0.6 and report["recover"]["steps"] == 4  # 2 epochs of 2 batches
    assert 0 < report["agreement"]["mean_cosine"] < 1  # pruned, so not identical to dense
    assert set(report["dense"]) >= {"knn_accuracy", "retrieval_precision"}
    assert set(report["latency"]["speedup"]) == {"32", "1"}
    assert report["examples"]["test"] == 20
    # the folder is an embedding model everywhere: slimformer, sentence-transformers files, evaluate, info
    pooling = folder_pooling(str(out))
    assert pooling is not None and pooling.mode == "mean" and pooling.max_seq_length == 32
    small, tok = load_embedding_model(str(out))
    assert sum(layer.attention.self.query.out_features for layer in small.bert.encoder.layer) < 3 * 32
    texts = ["good fun movie", "bad dull film at all"]
    assert embed(small, tok, texts).shape == (2, 32)
    evaluated = cli("evaluate", out, "--task", labelled_csv, "--json")
    assert evaluated.exit_code == 0, evaluated.output
    scores = json.loads(evaluated.output)
    assert scores["kind"] == "embedding" and scores["test_examples"] == 20
    assert scores["knn_accuracy"] == pytest.approx(report["compressed"]["knn_accuracy"])
    info = cli("info", out, "--json")
    assert info.exit_code == 0, info.output
    assert json.loads(info.output)["kind"] == "embedding"
    assert "kind         sentence embedding (mean pooling, normalised" in cli("info", out).output


def test_embed_compress_text_output_and_bad_inputs(st_folder, labelled_csv, tmp_path):
    out = tmp_path / "o"
    result = cli("embed-compress", st_folder, "-c", labelled_csv, "--out", out, "--calibration", 16, "--no-bench")
    assert result.exit_code == 0, result.output
    assert "recall@10" in result.output and "kNN accuracy" in result.output and "saved to" in result.output
    again = cli("embed-compress", st_folder, "-c", labelled_csv, "--out", out)
    assert again.exit_code == 2 and "not empty" in again.output
    bad = cli("embed-compress", st_folder, "-c", labelled_csv, "-o", tmp_path / "b", "--budget", "macs=2", "--no-bench")
    assert bad.exit_code == 2 and "macs" in bad.output
    long = cli("embed-compress", st_folder, "-c", labelled_csv, "--out", tmp_path / "l", "--seq-len", 1000)
    assert long.exit_code == 2 and "seq_len=1000" in long.output and not (tmp_path / "l").exists()
    train = cli("evaluate", out, "--task", labelled_csv, "--split", "train")
    assert train.exit_code == 2 and "validation or test" in train.output


def test_info_and_evaluate_keep_classifiers_as_they_were(tmp_path, tiny_tokenizer, labelled_csv):
    from slimformer.export import save_model

    folder = save_model(make_tiny_model("bert", num_labels=2), tiny_tokenizer, tmp_path / "clf")
    assert folder_pooling(str(folder)) is None
    info = json.loads(cli("info", folder, "--json").output)
    assert info["kind"] == "sequence" and info["kind_description"].startswith("sequence classification (2 classes")
    result = cli("evaluate", folder, "--task", labelled_csv, "--json")
    assert result.exit_code == 0 and "accuracy" in json.loads(result.output)


def test_export_puts_the_pooling_of_an_embedding_folder_in_the_graph(st_folder, tmp_path, tiny_tokenizer):
    pytest.importorskip("onnxruntime")
    from slimformer.embedding_onnx import OnnxEmbedder

    out = tmp_path / "onnx"
    result = cli("export", st_folder, "--onnx", out, "--int8", "--batch-sizes", "1", "--seq-len", 8, "--repeats", 1)
    assert result.exit_code == 0, result.output
    assert "min cosine" in result.output and "model.int8.onnx" in result.output
    report = json.loads((out / "slimformer_onnx.json").read_text())
    assert report["kind"] == "embedding" and report["outputs"] == ["sentence_embedding"]
    dense, tok = load_embedding_model(str(st_folder))
    texts = ["good fun movie", "bad dull film at all and more", "fun"]
    got = OnnxEmbedder(out / "model.onnx", threads=1).embed(tok, texts)
    torch.testing.assert_close(got, embed(dense, tok, texts), rtol=1e-4, atol=1e-5)


def test_bench_times_an_embedding_folder_as_encoder_plus_pooling(st_folder, monkeypatch):
    from slimformer.embedding import EmbeddingForward

    seen = []
    import slimformer.bench as bench_module

    real = bench_module.bench_models

    def spy(models, config, **kwargs):
        seen.extend(type(m) for m in models.values())
        return real(models, config, **kwargs)

    monkeypatch.setattr(bench_module, "bench_models", spy)
    args = ["--batch-sizes", "1", "--seq-len", 8, "--repeats", 1, "--warmup", 0, "--json"]
    result = cli("bench", st_folder, "--vs", st_folder, *args)
    assert result.exit_code == 0, result.output
    assert seen == [EmbeddingForward, EmbeddingForward]
    assert json.loads(result.output)["comparison"]


def test_folder_pooling_reads_files_and_never_guesses(st_folder, tmp_path):
    assert folder_pooling(str(st_folder)).source == "sentence-transformers"
    config = json.loads((st_folder / "config.json").read_text())
    config["architectures"] = ["BertForSequenceClassification"]  # a fine-tuned classifier that kept ST files
    (st_folder / "config.json").write_text(json.dumps(config))
    assert folder_pooling(str(st_folder)) is None
    assert folder_pooling(str(tmp_path / "missing")) is None and folder_pooling("some/hub-id") is None
