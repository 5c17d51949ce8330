"""sentence-transformers loads slimformer's saved embedding folders (pruned, uneven shapes) unchanged.

Skipped when the optional ``st`` extra (sentence-transformers) is not installed.
"""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_model
from slimformer.budget import Budget
from slimformer.embedding import Pooling, as_embedding_model, embed, save_embedding_model, text_batches
from slimformer.static.prune import OptinConfig, prune
from slimformer.structure import Structure
from test_embedding import TEXTS

st = pytest.importorskip("sentence_transformers", reason="the optional st extra (sentence-transformers) is absent")


@pytest.mark.parametrize("mode", ["mean", "cls"])
def test_sentence_transformers_loads_a_pruned_folder(tmp_path, tiny_tokenizer, mode):
    model = as_embedding_model(make_tiny_model("bert", num_labels=1), Pooling(mode=mode, max_seq_length=64))
    batches = [{k: v for k, v in b.items() if k != "index"} for b in text_batches(TEXTS, tiny_tokenizer, batch_size=8)]
    cut = prune(model, OptinConfig(budget=Budget.parse("macs=0.6")), batches, progress=False).model
    heads = [layer.heads for layer in Structure.from_model(cut).layers]
    assert len(set(heads)) > 1, f"the test needs uneven per-layer heads, got {heads}"
    folder = save_embedding_model(cut, tiny_tokenizer, tmp_path / "emb")
    want = embed(cut, tiny_tokenizer, TEXTS)
    loaded = st.SentenceTransformer(str(folder), device="cpu", trust_remote_code=True, local_files_only=True)
    got = torch.as_tensor(loaded.encode(TEXTS, batch_size=5, convert_to_numpy=True))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    dense = embed(model, tiny_tokenizer, TEXTS)
    assert (got - dense).abs().max() > 1e-3  # the folder holds the pruned model, not the dense one


@pytest.mark.real
def test_real_minilm_pooling_and_a_pruned_folder_agree_with_sentence_transformers(tmp_path):
    from slimformer.embedding import load_embedding_model
    from slimformer.models import resolve_model_path
    from slimformer.surgery import KeepPlan, apply_plan

    texts = ["A gripping, beautifully acted film.", "Dull.", "Shares fell sharply after the bank's report."]
    model, tok = load_embedding_model("minilm-l6")
    reference = st.SentenceTransformer(resolve_model_path("minilm-l6"), device="cpu", local_files_only=True)
    want = torch.as_tensor(reference.encode(texts, convert_to_numpy=True))
    torch.testing.assert_close(embed(model, tok, texts), want, rtol=1e-4, atol=1e-5)
    apply_plan(model, KeepPlan.removing(model, heads={0: [1, 5], 3: list(range(6))}, neurons={2: range(0, 1536, 2)}))
    folder = save_embedding_model(model, tok, tmp_path / "cut", source=resolve_model_path("minilm-l6"))
    loaded = st.SentenceTransformer(str(folder), device="cpu", trust_remote_code=True, local_files_only=True)
    got = torch.as_tensor(loaded.encode(texts, convert_to_numpy=True))
    torch.testing.assert_close(got, embed(model, tok, texts), rtol=1e-4, atol=1e-5)
