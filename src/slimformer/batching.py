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


def batches(
    source,
    tokenizer,
    *,
    split: str = "train",
    size: int | None = None,
    limit: int | None = None,
    batch_size: int = 32,
    max_length: int = 128,
    seed: int = 0,
    grouped: bool = True,
) -> list[dict]:
    """The one batch builder: examples (or a task's split, or plain texts) -> padded tokenized batches.

    Args:
        source: a :class:`~slimformer.data.TaskData` (``split`` of it is used), a sequence of
            :class:`~slimformer.data.Example`, or a sequence of ``str`` (unlabelled: no ``labels``).
        tokenizer: the model's tokenizer.
        split: which split of a TaskData (ignored for a list).
        size: a seeded random sample of this many examples (calibration); ``None`` keeps all.
        limit: or only the first ``limit`` examples (smoke runs); not together with ``size``.
        batch_size: examples per batch.
        max_length: truncation length.
        seed: seed of the sample and of the batch order.
        grouped: batches of similar lengths in a seeded random order (see :class:`LengthGroupedBatches`);
            ``False`` keeps the examples' order.

    Returns:
        A list of dicts of ``LongTensor``: ``input_ids``, ``attention_mask`` (``token_type_ids`` when
        the tokenizer makes them) ``(B, T)``, and ``labels`` ``(B,)`` for labelled examples.

    Raises:
        ValueError: no examples, an unknown split, ``size`` or ``limit`` < 1, or both given.
    """
    from slimformer.data import Example, TaskData, make_loader

    if isinstance(source, TaskData):
        if split not in source.splits:
            raise ValueError(f"split={split!r}: task {source.name!r} has the splits {', '.join(source.splits)}")
        examples, where = list(source.split(split)), f"split {split!r} of {source.name!r}"
    else:
        examples, where = list(source), "the given examples"
    for name, value in (("size", size), ("limit", limit)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name}={value!r}: must be None or an integer >= 1")
    if size is not None and limit is not None:
        raise ValueError(f"give size={size} (a random sample) or limit={limit} (the first ones), not both")
    if not examples:
        raise ValueError(f"no examples in {where}")
    texts_only = all(isinstance(e, str) for e in examples)
    if texts_only:
        examples = [Example(text=t, label=0) for t in examples]  # labels dropped again below
    if limit is not None:
        examples = examples[:limit]
    if size is not None:
        examples = random.Random(seed).sample(examples, min(size, len(examples)))
    loader = make_loader(
        examples, tokenizer, batch_size=batch_size, max_length=max_length, group_by_length=grouped, seed=seed
    )
    out = [dict(b) for b in loader]
    if texts_only:
        for b in out:
            del b["labels"]
    return out
