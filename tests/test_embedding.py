"""Sentence-embedding models: pooling, OPTIN with the embedding loss, saving, and the eval metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from conftest import WORDS, make_inputs, make_tiny_model
from slimformer.budget import Budget
from slimformer.embedding import (
    Pooling,
    as_embedding_model,
    embed,
    embedding_loss,
    embedding_pooling,
    encode,
    load_embedding_model,
    read_texts,
    save_embedding_model,
    text_batches,
)
from slimformer.embedding_eval import (
    agreement,
    knn_accuracy,
    labelled_scores,
    mean_cosine,
    nearest,
    neighbour_recall,
    retrieval_precision,
)
from slimformer.static.optin import score_optin
from slimformer.static.prune import FisherConfig, OptinConfig, prune, score

TEXTS = [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(3 + i % 9)) for i in range(24)]


def tiny_embedder(family: str, **kwargs):
    return as_embedding_model(make_tiny_model(family, num_labels=1, **kwargs))


def calibration(tokenizer) -> list[dict]:
    batches = text_batches(TEXTS, tokenizer, batch_size=8)
    return [{k: v for k, v in b.items() if k != "index"} for b in batches]


def test_mean_pooling_matches_hand_computation(family):
    model = tiny_embedder(family)
    inputs = make_inputs(batch=3, seq=9, pad_last=4)
    with torch.no_grad():
        got = encode(model, inputs)
        hidden = model.base_model(**inputs).last_hidden_state  # (B, T, d)
    keep = inputs["attention_mask"][..., None].float()
    want = F.normalize((hidden * keep).sum(1) / keep.sum(1), dim=-1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert got.shape == (3, model.config.hidden_size)


def test_other_pooling_modes_by_hand():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, -1.0], [9.0, 9.0]]])  # (1, 3, 2), last token padding
    mask = torch.tensor([[1, 1, 0]])
    assert Pooling("cls", False)(hidden, mask).tolist() == [[1.0, 2.0]]
    assert Pooling("max", False)(hidden, mask).tolist() == [[3.0, 2.0]]
    assert Pooling("mean", False)(hidden, mask).tolist() == [[2.0, 0.5]]
    torch.testing.assert_close(Pooling("mean_sqrt_len", False)(hidden, mask), torch.tensor([[4.0, 1.0]]) / 2**0.5)
    with pytest.raises(ValueError, match="pooling mode 'sum'"):
        Pooling("sum")


def test_pooling_from_sentence_transformers_folder(tmp_path):
    assert Pooling.from_folder(tmp_path) == Pooling()  # no files: mean + normalise
    (tmp_path / "1_Pooling").mkdir()
    flags = {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(flags))
    (tmp_path / "modules.json").write_text(json.dumps([{"type": "sentence_transformers.models.Pooling"}]))
    (tmp_path / "sentence_bert_config.json").write_text('{"max_seq_length": 64}')
    assert Pooling.from_folder(tmp_path) == Pooling("cls", False, 64, "sentence-transformers")
    flags["pooling_mode_mean_tokens"] = True
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(flags))
    with pytest.raises(ValueError, match="exactly one pooling mode"):
        Pooling.from_folder(tmp_path)


def test_embed_keeps_text_order_and_needs_an_embedding_model(tiny_tokenizer):
    model = tiny_embedder("bert")
    all_at_once = embed(model, tiny_tokenizer, TEXTS, batch_size=5)
    one_by_one = torch.cat([embed(model, tiny_tokenizer, [t], batch_size=1) for t in TEXTS[:6]])
    torch.testing.assert_close(all_at_once[:6], one_by_one, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(all_at_once.norm(dim=-1), torch.ones(len(TEXTS)))
    with pytest.raises(ValueError, match="not an embedding model"):
        embed(make_tiny_model("bert"), tiny_tokenizer, TEXTS)


def test_embedding_loss():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert float(embedding_loss(a, a)) == pytest.approx(0.0, abs=1e-6)
    assert float(embedding_loss(a, b)) == pytest.approx(0.5)  # cos 0 and 1
    assert float(embedding_loss(a, b, "mse")) == pytest.approx((1 + 1 + 0 + 1) / 4)
    assert float(embedding_loss(a, b, "both")) == pytest.approx(1.25)
    with pytest.raises(ValueError, match="'kl' is not supported"):
        embedding_loss(a, b, "kl")
    with pytest.raises(ValueError, match="differ"):
        embedding_loss(a, b[:1])


def test_optin_scores_the_embedding_not_the_head(tiny_tokenizer, family):
    model = tiny_embedder(family)
    batches = calibration(tiny_tokenizer)
    first = score_optin(model, batches, progress=False, head_examples=None)
    for p in model.classifier.parameters():  # the unused head: scores must not move
        torch.nn.init.normal_(p)
    second = score_optin(model, batches, progress=False, head_examples=None)
    for a, b in zip(first.heads + first.ffn, second.heads + second.ffn, strict=True):
        torch.testing.assert_close(a, b)
    assert all(float(h.sum()) > 0 for h in first.heads)
    with pytest.raises(ValueError, match="embedding model with optin"):
        score(model, FisherConfig(budget=Budget.parse("macs=0.5")), batches, progress=False)


def test_pruning_changes_the_embedding_and_zero_pruning_does_not(tiny_tokenizer, family):
    model = tiny_embedder(family)
    batches = calibration(tiny_tokenizer)
    dense = embed(model, tiny_tokenizer, TEXTS)
    kept = prune(model, OptinConfig(budget=Budget.parse("macs=1.0"), repair=False), batches, progress=False)
    torch.testing.assert_close(embed(kept.model, tiny_tokenizer, TEXTS), dense, rtol=1e-5, atol=1e-5)
    cut = prune(model, OptinConfig(budget=Budget.parse("macs=0.5")), batches, progress=False)
    assert cut.report["relative"]["macs"] <= 0.5
    assert embedding_pooling(cut.model) == embedding_pooling(model)
    pruned = embed(cut.model, tiny_tokenizer, TEXTS)
    assert (pruned - dense).abs().max() > 1e-3
    assert mean_cosine(pruned, dense) > 0.0  # still related to dense


def test_save_load_gives_identical_embeddings(tmp_path, tiny_tokenizer, family):
    from transformers import AutoModel

    model = tiny_embedder(family)
    cut = prune(model, OptinConfig(budget=Budget.parse("macs=0.6")), calibration(tiny_tokenizer), progress=False)
    folder = save_embedding_model(cut.model, tiny_tokenizer, tmp_path / "emb")
    want = embed(cut.model, tiny_tokenizer, TEXTS)
    config = json.loads((folder / "config.json").read_text())
    assert config["slimformer"] and config["auto_map"]["AutoModel"].startswith("modeling_slimformer.Slim")
    loaded, tokenizer = load_embedding_model(str(folder))
    torch.testing.assert_close(embed(loaded, tokenizer, TEXTS), want, rtol=1e-6, atol=1e-6)
    # plain transformers, base model through the remote-code file; mean pooling by hand
    base = AutoModel.from_pretrained(str(folder), trust_remote_code=True).eval()
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    if family == "distilbert":
        enc.pop("token_type_ids", None)
    with torch.no_grad():
        hidden = base(**enc).last_hidden_state
    keep = enc["attention_mask"][..., None].float()
    torch.testing.assert_close(F.normalize((hidden * keep).sum(1) / keep.sum(1), dim=-1), want, rtol=1e-5, atol=1e-5)


def test_saved_folder_has_sentence_transformers_layout(tmp_path, tiny_tokenizer):
    source = tmp_path / "src"
    (source / "1_Pooling").mkdir(parents=True)
    (source / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true, "include_prompt": true}')
    (source / "modules.json").write_text('[{"type": "sentence_transformers.models.Normalize"}]')
    (source / "sentence_bert_config.json").write_text('{"max_seq_length": 48, "do_lower_case": true}')
    (source / "config_sentence_transformers.json").write_text('{"__version__": {"sentence_transformers": "2.0.0"}}')
    model = as_embedding_model(make_tiny_model("bert", num_labels=1), Pooling.from_folder(source))
    folder = save_embedding_model(model, tiny_tokenizer, tmp_path / "out", source=source)
    modules = json.loads((folder / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Pooling", "2_Normalize"]
    assert (folder / "2_Normalize").is_dir()
    pool = json.loads((folder / "1_Pooling" / "config.json").read_text())
    assert pool["word_embedding_dimension"] == 32 and pool["pooling_mode_mean_tokens"] and pool["include_prompt"]
    assert not pool["pooling_mode_cls_token"]
    assert json.loads((folder / "sentence_bert_config.json").read_text()) == {
        "max_seq_length": 48,
        "do_lower_case": True,
    }
    assert (folder / "config_sentence_transformers.json").is_file()
    assert Pooling.from_folder(folder) == embedding_pooling(model)
    with pytest.raises(ValueError, match="not an embedding model"):
        save_embedding_model(make_tiny_model("bert"), tiny_tokenizer, tmp_path / "no")


def test_neighbours_and_agreement_on_a_toy_case():
    x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.0]])
    assert nearest(x, 1)[:, 0].tolist() == [1, 0, 3, 2, 2]
    assert neighbour_recall(x, x, 2) == 1.0
    moved = x.copy()
    moved[4] = [1.0, 0.05]  # now rows 0 and 4 are each other's nearest
    assert nearest(moved, 1)[:, 0].tolist() == [4, 4, 3, 2, 0]
    assert neighbour_recall(moved, x, 1) == pytest.approx(2 / 5)
    result = agreement(x * 3.0, x, k=2)  # scale does not matter for cosine
    assert result["mean_cosine"] == pytest.approx(1.0) and result["recall_at_k"] == 1.0
    with pytest.raises(ValueError, match="k=5"):
        nearest(x, 5)


def test_labelled_proxies_on_a_toy_case():
    rng = np.random.default_rng(0)
    centres = np.eye(3) * 5
    labels = np.repeat(np.arange(3), 10)
    points = centres[labels] + rng.normal(scale=0.3, size=(30, 3))
    test_labels = np.array([0, 1, 2, 2])
    test = centres[test_labels] + 0.1
    assert knn_accuracy(points, labels, test, test_labels, k=3) == 1.0
    assert knn_accuracy(points, labels, test, [1, 1, 2, 2], k=3) == 0.75
    assert retrieval_precision(points, labels, k=9) == 1.0
    # two classes of two: each row's nearest other row is the other class
    assert retrieval_precision(np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1]]), [0, 1, 0, 1], k=1) == 0.0
    scores = labelled_scores(points, labels, test, test_labels, k=3)
    assert scores["knn_accuracy"] == 1.0 and scores["k"] == 3
    with pytest.raises(ValueError, match="one label per row"):
        knn_accuracy(points, labels[:5], test, test_labels)


def test_read_texts_from_files(tmp_path):
    (tmp_path / "a.csv").write_text("text,other\nhello world,1\nsecond line,2\n")
    (tmp_path / "a.jsonl").write_text('{"body": "one"}\n\n{"body": "two"}\n')
    assert read_texts(str(tmp_path / "a.csv")) == ["hello world", "second line"]
    assert read_texts(str(tmp_path / "a.jsonl"), column="body", limit=1) == ["one"]
    with pytest.raises(ValueError, match="no column 'body'"):
        read_texts(str(tmp_path / "a.csv"), column="body")
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_texts(str(tmp_path / "missing.csv"))
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="unsupported file type"):
        read_texts(str(tmp_path / "a.txt"))


def test_recover_embedding_moves_towards_the_teacher(tiny_tokenizer):
    from slimformer.embedding import EmbeddingForward
    from slimformer.embedding_recover import recover_embedding
    from slimformer.recover import RecoverConfig
    from slimformer.structure import Structure

    model = tiny_embedder("bert")
    for m in model.modules():  # dropout would blur a small effect on a tiny model
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    batches = calibration(tiny_tokenizer)
    cut = prune(model, OptinConfig(budget=Budget.parse("macs=0.5"), repair=False), batches, progress=False).model
    with torch.no_grad():  # pruning a random model barely moves it: knock it off the teacher first
        for p in cut.bert.encoder.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    dense = embed(model, tiny_tokenizer, TEXTS)
    before = mean_cosine(embed(cut, tiny_tokenizer, TEXTS), dense)
    config = RecoverConfig(epochs=20, lr=1e-3, warmup_ratio=0.0, hidden_weight=0.5)
    result = recover_embedding(cut, model, batches, config, progress=False)
    assert Structure.from_model(result.model) == Structure.from_model(cut)
    after = mean_cosine(embed(result.model, tiny_tokenizer, TEXTS), dense)
    assert 1 - after < 0.5 * (1 - before)
    assert result.report["steps"] == 20 * len(batches) and result.report["hidden_pairs"] == 3
    torch.testing.assert_close(EmbeddingForward(result.model)(**batches[0]), encode(result.model, batches[0]))
    with pytest.raises(ValueError, match="teacher is not an embedding model"):
        recover_embedding(cut, make_tiny_model("bert"), batches, config)
    with pytest.raises(ValueError, match="loss='kl'"):
        recover_embedding(cut, model, batches, config, loss="kl")
