"""Shared fixtures: tiny random-weight models of every supported family, and a tiny tokenizer."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertTokenizerFast

from slimformer.arch import FAMILIES as ADAPTER_FAMILIES

# Tiny models gain nothing from intra-op threads, and on a busy 2-core machine oversubscribed
# OpenMP threads slow them down by orders of magnitude.
torch.set_num_threads(1)

#: Every registered text family: a family is tested by registering its adapter. The image
#: families (ViT, DeiT) take pixel values, not token ids: tests/test_vit.py runs their suite.
FAMILIES = tuple(f for f, a in ADAPTER_FAMILIES.items() if a.modality == "text")
IMAGE_FAMILIES = tuple(f for f, a in ADAPTER_FAMILIES.items() if a.modality == "image")
WORDS = (
    "the a an movie film good bad great awful plot actor scene story funny boring love hate "
    "fun dull best worst and but not very too was is it this that of to in".split()
)


def make_tiny_model(family: str, *, num_labels: int = 3, layers: int = 3, seed: int = 0):
    """A seeded, random-weight sequence classifier from the adapter's ``tiny_config``.

    Hidden 32, 4 heads (head size 8), FFN 37, vocabulary 99.
    """
    if family not in ADAPTER_FAMILIES:
        raise ValueError(f"family {family!r} has no adapter; registered: {', '.join(ADAPTER_FAMILIES)}")
    config = ADAPTER_FAMILIES[family].tiny_config(layers=layers, num_labels=num_labels)
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config).eval()


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
