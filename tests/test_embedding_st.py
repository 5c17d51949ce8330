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
