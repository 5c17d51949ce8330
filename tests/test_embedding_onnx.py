"""ONNX export of embedding models: pooling inside the graph, verified against PyTorch, int8."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_tiny_model
from slimformer.budget import Budget
from slimformer.embedding import Pooling, as_embedding_model, embed, text_batches
from slimformer.static.prune import OptinConfig, prune
from test_embedding import TEXTS

pytest.importorskip("onnxruntime")

from slimformer.embedding_onnx import OUTPUT, OnnxEmbedder, export_embedding_onnx  # noqa: E402
from slimformer.onnx_export import ExportConfig  # noqa: E402


def _pruned(family: str, tokenizer, mode: str = "mean", normalize: bool = True):
    model = as_embedding_model(make_tiny_model(family, num_labels=1), Pooling(mode=mode, normalize=normalize))
    batches = [{k: v for k, v in b.items() if k != "index"} for b in text_batches(TEXTS, tokenizer, batch_size=8)]
    return prune(model, OptinConfig(budget=Budget.parse("macs=0.6")), batches, progress=False).model


@pytest.mark.parametrize(
    ("mode", "normalize"), [("mean", True), ("cls", False), ("max", True), ("mean_sqrt_len", False)]
)
def test_onnx_embeddings_match_pytorch_for_every_pooling(tmp_path, tiny_tokenizer, mode, normalize):
    model = _pruned("bert", tiny_tokenizer, mode, normalize)
    report = export_embedding_onnx(
        model, tiny_tokenizer, tmp_path / "onnx", ExportConfig(int8=True), texts=TEXTS, bench=None, progress=False
    )
    assert report["passed"] and report["kind"] == "embedding" and report["outputs"] == [OUTPUT]
    assert report["verification"]["fp32"]["min_cosine"] >= 0.9999
    assert set(report["files"]) == {"fp32", "int8"}
    onnx = OnnxEmbedder(tmp_path / "onnx" / "model.onnx", threads=1)
    # padded batches of mixed lengths: the pooling must ignore padding exactly as PyTorch does
    got = onnx.embed(tiny_tokenizer, TEXTS, batch_size=5)
    want = embed(model, tiny_tokenizer, TEXTS)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    norms = got.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5) == normalize
    saved = json.loads((tmp_path / "onnx" / "slimformer_onnx.json").read_text())
    assert saved["pooling"]["mode"] == mode


def test_onnx_embedding_export_every_family_and_timing(tmp_path, tiny_tokenizer, family):
    from slimformer.bench import BenchConfig

    model = _pruned(family, tiny_tokenizer)
    bench = BenchConfig(batch_sizes=(1, 2), seq_len=8, repeats=2, warmup=1, threads=1)
    report = export_embedding_onnx(model, tiny_tokenizer, tmp_path / "o", texts=TEXTS, bench=bench, progress=False)
    assert report["passed"], report["verification"]
    assert [r["batch_size"] for r in report["latency"]["results"]] == [1, 2]


def test_onnx_embedding_export_refuses_a_classifier_and_catches_a_wrong_graph(tmp_path, tiny_tokenizer, monkeypatch):
    from slimformer import embedding_onnx
    from slimformer.onnx_export import OnnxVerificationError

    with pytest.raises(ValueError, match="not an embedding model"):
        export_embedding_onnx(make_tiny_model("bert"), tiny_tokenizer, tmp_path / "c", bench=None)
    model = _pruned("bert", tiny_tokenizer)
    # a graph whose pooling ignores the attention mask must fail verification on padded batches
    monkeypatch.setattr(embedding_onnx, "encode", _unmasked_encode)
    with pytest.raises(OnnxVerificationError, match="cosine"):
        export_embedding_onnx(model, tiny_tokenizer, tmp_path / "w", texts=TEXTS, bench=None, progress=False)
    assert (tmp_path / "w" / "model.onnx").is_file()  # kept for inspection


def _unmasked_encode(model, batch, **kwargs):
    from slimformer.embedding import encode

    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        batch = {**batch, "attention_mask": torch.ones_like(batch["attention_mask"])}
    return encode(model, batch, **kwargs)
