"""Wall-clock timing of skimming against the dense model on real inputs, interleaved.

How many tokens a skimming model keeps depends on the text, so random token ids (what
:func:`slimformer.bench.make_bench_inputs` feeds) say little about its speed. :func:`time_on_batches`
still times through :func:`slimformer.bench.bench_models` (same rounds, alternating order, median)
but each model is wrapped so that every call runs it on the next real batch of that batch size,
in the same sequence for every model: in round ``r`` all models run the same text.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

logger = logging.getLogger(__name__)


class OnRealBatches:
    """Looks like a model to ``bench_models``; each call runs ``model`` on the next real batch of that size.

    ``bench_models`` makes random inputs only to pick the batch size (``input_ids.shape[0]``);
    they are not used.
    """

    def __init__(self, model, batches: dict[int, list[dict]]):
        for size, items in batches.items():
            if not items:
                raise ValueError(f"no real batches of size {size} to time on")
            bad = [b["input_ids"].shape[0] for b in items if b["input_ids"].shape[0] != size]
            if bad:
                raise ValueError(f"batches listed under size {size} have {bad[0]} rows")
        self.model = model
        self.config = model.config
        self.batches = {
            size: [{k: v for k, v in b.items() if k != "labels"} for b in items] for size, items in batches.items()
        }
        self.calls = dict.fromkeys(batches, 0)

    @property
    def training(self) -> bool:
        return self.model.training

    def train(self, mode: bool = True):
        self.model.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def parameters(self):
        return self.model.parameters()

    def __call__(self, **inputs):
        size = inputs["input_ids"].shape[0]
        if size not in self.batches:
            raise ValueError(f"no real batches of size {size}; have {sorted(self.batches)}")
        i = self.calls[size]
        self.calls[size] = i + 1
        items = self.batches[size]
        return self.model(**items[i % len(items)])


def real_batches(
    examples: Sequence, tokenizer, *, batch_sizes: Sequence[int], max_length: int, per_size: int = 8
) -> dict[int, list[dict]]:
    """Up to ``per_size`` consecutive full batches of ``examples`` per batch size (padded per batch)."""
    from slimformer.skim.measure import tokenized_batches

    out = {}
    for size in batch_sizes:
        n = min(len(examples) // size, per_size) * size
        if n == 0:
            raise ValueError(f"{len(examples)} examples cannot fill one batch of {size}")
        out[size] = tokenized_batches(examples[:n], tokenizer, batch_size=size, max_length=max_length)
    return out


def time_on_batches(
    models: dict, batches: dict[int, list[dict]], *, repeats: int = 10, warmup: int = 2, threads=None, progress=True
) -> dict[str, dict]:
    """Interleaved wall clock of ``models`` (name -> model) on real ``batches``; see the module doc.

    Returns:
        ``bench_models``' result per name; each row's ``seq_len`` is the longest padded batch.
    """
    from slimformer.bench import BenchConfig, bench_models

    seq_len = max(int(b["input_ids"].shape[1]) for items in batches.values() for b in items)
    config = BenchConfig(batch_sizes=tuple(batches), seq_len=seq_len, repeats=repeats, warmup=warmup, threads=threads)
    wrapped = {name: OnRealBatches(m, batches) for name, m in models.items()}
    results = bench_models(wrapped, config, progress=progress)
    for name, res in results.items():
        res["inputs"] = {str(size): len(items) for size, items in batches.items()}
        res["model"]["class"] = f"{type(models[name]).__module__}.{type(models[name]).__qualname__}"
    return results


def speedups(results: dict[str, dict], *, reference: str) -> dict[str, dict[int, float]]:
    """``{name: {batch_size: reference median / name median}}``."""
    ref = {r["batch_size"]: r["median_ms"] for r in results[reference]["results"]}
    return {
        name: {r["batch_size"]: ref[r["batch_size"]] / r["median_ms"] for r in res["results"]}
        for name, res in results.items()
    }
