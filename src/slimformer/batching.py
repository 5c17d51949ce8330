"""Length-grouped batches: each batch holds texts of similar length, so per-batch padding is short.

Training cost on a CPU is proportional to the padded batch length. Shuffled batches of short
review snippets pad to roughly twice the mean length; grouping by length brings that close to the
mean. Order stays random: examples are shuffled, cut into windows of ``window`` batches, sorted by
length inside a window, cut into batches, and the batches shuffled again (deterministic per seed).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence


class LengthGroupedBatches:
    """A batch sampler (iterable of index lists) grouping indices of similar ``lengths``."""

    def __init__(self, lengths: Sequence[int], batch_size: int, *, seed: int = 0, window: int = 50):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.window = window

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        span = self.batch_size * self.window
        batches = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start : start + span], key=lambda i: self.lengths[i])
            batches += [chunk[j : j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
        rng.shuffle(batches)
        return iter(batches)
