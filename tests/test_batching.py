"""Length-grouped batches: every example once, less padding, deterministic per seed."""

import random

import pytest

from slimformer.batching import LengthGroupedBatches
from slimformer.data import Example, make_loader


def lengths(n=1000, seed=0):
    rng = random.Random(seed)
    return [rng.randint(3, 60) for _ in range(n)]


def padded(batches, ls):
    return sum(max(ls[i] for i in b) * len(b) for b in batches)


def test_each_index_once_and_padding_drops():
    ls = lengths()
    batches = list(LengthGroupedBatches(ls, 32, seed=1))
    assert sorted(i for b in batches for i in b) == list(range(len(ls)))
    assert len(batches) == len(LengthGroupedBatches(ls, 32)) == 32
    rng = random.Random(1)
    order = list(range(len(ls)))
    rng.shuffle(order)
    shuffled = [order[i : i + 32] for i in range(0, len(order), 32)]
    assert padded(batches, ls) < 0.7 * padded(shuffled, ls)


def test_deterministic_per_seed():
    ls = lengths()
    assert list(LengthGroupedBatches(ls, 16, seed=3)) == list(LengthGroupedBatches(ls, 16, seed=3))
    assert list(LengthGroupedBatches(ls, 16, seed=3)) != list(LengthGroupedBatches(ls, 16, seed=4))


@pytest.mark.parametrize("kwargs", [dict(batch_size=0), dict(batch_size=4, window=0)])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="must be >= 1"):
        LengthGroupedBatches([1, 2, 3], **kwargs)


def test_loader_groups_lengths(tiny_tokenizer):
    rng = random.Random(0)
    words = ["good", "bad", "movie", "fun"]
    examples = [Example(" ".join(rng.choices(words, k=rng.randint(1, 30))), i % 2) for i in range(200)]
    grouped = make_loader(examples, tiny_tokenizer, batch_size=10, shuffle=True, group_by_length=True)
    plain = make_loader(examples, tiny_tokenizer, batch_size=10, shuffle=True)
    cells = lambda loader: sum(b["input_ids"].numel() for b in loader)  # noqa: E731
    assert sum(len(b["labels"]) for b in grouped) == 200
    assert cells(grouped) < 0.8 * cells(plain)
