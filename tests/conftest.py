"""Shared fixtures: tiny random-weight models of every supported family, and a tiny tokenizer."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertTokenizerFast,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

# Tiny models gain nothing from intra-op threads, and on a busy 2-core machine oversubscribed
# OpenMP threads slow them down by orders of magnitude.
torch.set_num_threads(1)

FAMILIES = ("bert", "roberta", "distilbert")
WORDS = (
    "the a an movie film good bad great awful plot actor scene story funny boring love hate "
    "fun dull best worst and but not very too was is it this that of to in".split()
)


def make_tiny_model(family: str, *, num_labels: int = 3, layers: int = 3, seed: int = 0):
    """A seeded, random-weight sequence classifier: hidden 32, 4 heads (head size 8), FFN 37."""
    torch.manual_seed(seed)
    if family == "bert":
        cfg = BertConfig(
            vocab_size=99,
            hidden_size=32,
            num_hidden_layers=layers,
            num_attention_heads=4,
            intermediate_size=37,
            max_position_embeddings=64,
            num_labels=num_labels,
        )
        model = BertForSequenceClassification(cfg)
    elif family == "roberta":
        cfg = RobertaConfig(
            vocab_size=99,
            hidden_size=32,
            num_hidden_layers=layers,
            num_attention_heads=4,
            intermediate_size=37,
            max_position_embeddings=70,
            num_labels=num_labels,
            pad_token_id=1,
        )
        model = RobertaForSequenceClassification(cfg)
    elif family == "distilbert":
        cfg = DistilBertConfig(
            vocab_size=99,
            dim=32,
            n_layers=layers,
            n_heads=4,
            hidden_dim=37,
            max_position_embeddings=64,
            num_labels=num_labels,
        )
        model = DistilBertForSequenceClassification(cfg)
    else:
        raise ValueError(family)
    return model.eval()


def make_inputs(batch: int = 2, seq: int = 7, *, seed: int = 0, pad_last: int = 2) -> dict:
    """Random ids in [5, 99) with the last ``pad_last`` positions of row 0 padded out."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 99, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if pad_last:
        mask[0, -pad_last:] = 0
        ids[0, -pad_last:] = 1
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def tiny_model(family):
    return make_tiny_model(family)


@pytest.fixture
def tiny_inputs() -> dict:
    return make_inputs()


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """A WordPiece tokenizer over a 40-word vocabulary (ids < 99, so it fits the tiny models)."""
    folder = tmp_path_factory.mktemp("tok")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True)
