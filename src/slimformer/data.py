"""Tasks: built-in labelled text from installed packages, user CSV/TSV/JSONL files, HF datasets.

Every task becomes a :class:`TaskData` with deterministic, stratified, seeded train / validation /
test splits. Batches are padded to the longest sequence in the batch, not to a fixed length.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Example:
    """One labelled example; ``text_pair`` is set for sentence-pair tasks."""

    text: str
    label: int
    text_pair: str | None = None


@dataclass
class TaskData:
    """A task with its splits.

    Attributes:
        name: task name (built-in name, file path or dataset id).
        label_names: class names; ``Example.label`` indexes this list.
        splits: ``{"train": [...], "validation": [...], "test": [...]}``.
        content_hash: sha256 (hex, first 16 chars) of the examples and split assignment, so two runs
            can tell whether they saw the same data.
    """

    name: str
    label_names: list[str]
    splits: dict[str, list[Example]]
    content_hash: str
    info: dict = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def sizes(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.splits.items()}

    def split(self, name: str) -> list[Example]:
        """Return one split, raising ``ValueError`` naming the allowed splits if unknown."""
        if name not in self.splits:
            raise ValueError(f"unknown split {name!r}; allowed: {', '.join(self.splits)}")
        return self.splits[name]


def make_loader(
    examples: list[Example],
    tokenizer,
    *,
    batch_size: int = 32,
    max_length: int = 128,
    shuffle: bool = False,
    seed: int = 0,
):
    """A ``torch.utils.data.DataLoader`` of tokenized batches padded per batch.

    Each batch is a dict with ``input_ids``, ``attention_mask`` (``token_type_ids`` when the
    tokenizer makes them) and ``labels``; all are ``LongTensor`` of shape ``(B, T)`` / ``(B,)``,
    with ``T`` the longest sequence in the batch (at most ``max_length``).
    """
    import torch
    from torch.utils.data import DataLoader

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")

    def collate(batch: list[Example]) -> dict:
        texts = [e.text for e in batch]
        pairs = [e.text_pair for e in batch]
        enc = tokenizer(
            texts,
            pairs if any(p is not None for p in pairs) else None,
            padding="longest",
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        enc = dict(enc)
        enc["labels"] = torch.tensor([e.label for e in batch], dtype=torch.long)
        return enc

    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        examples, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=generator
    )
