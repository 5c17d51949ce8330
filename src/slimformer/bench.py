"""Wall-clock latency and throughput measurement of encoder models on this CPU.

All numbers are wall-clock times (``time.perf_counter``) of full forward passes on the machine the
benchmark runs on; they are only comparable with numbers taken on the same machine, with the same
thread count. Noise is reduced by untimed warmup calls, ``torch.inference_mode``, a ``gc.collect()``
before each batch size, and reporting the median (plus spread) of many repeats.

:func:`time_callable` is the single timing primitive: dynamic methods (token skimming, early exit)
time their own callables with it so every speedup is measured the same way.
"""

from __future__ import annotations

import gc
import importlib.metadata
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from slimformer.config import ConfigBase, integer, non_negative, option, tuple_of

logger = logging.getLogger(__name__)

# Ids below this are usually special tokens ([PAD], [CLS], <s>, ...); random text avoids them.
_FIRST_SAFE_ID = 11


@dataclass(frozen=True, kw_only=True)
class BenchConfig(ConfigBase):
    """What to measure: batch sizes, sequence length and how many timed repeats."""

    batch_sizes: tuple[int, ...] = option(
        (1, 32), "batch sizes to time, each >= 1", tuple_of(integer(1), min_len=1, distinct=True)
    )
    seq_len: int = option(128, "tokens per sequence (>= 2), no padding", integer(2))
    warmup: int = option(3, "untimed calls before timing (>= 0)", integer(0))
    repeats: int = option(20, "timed calls per batch size (>= 1)", integer(1))
    min_time_s: float = option(
        0.0, "keep repeating until this many timed seconds are reached too (>= 0)", non_negative()
    )
    threads: int | None = option(
        None, "torch intra-op threads during the run (>= 1); None = torch default", integer(1, optional=True)
    )
    seed: int = option(0, "seed of the random input ids (>= 0)", integer(0))


def parse_int_list(text: str) -> tuple[int, ...]:
    """Parse ``"1,32"`` (spaces allowed) into ``(1, 32)``; raise ValueError naming the bad text."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        if not any(parts):
            raise ValueError
        return tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"expected comma-separated integers like '1,32', got {text!r}") from None


def time_callable(
    fn: Callable[[], Any],
    *,
    warmup: int,
    repeats: int,
    min_time_s: float = 0.0,
    on_call: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Call ``fn()`` ``warmup`` times untimed, then time each further call with ``perf_counter``.

    Timing stops once ``repeats`` calls are done and their total time reaches ``min_time_s``.
    ``on_call`` (e.g. a progress-bar update) runs after each call, outside the timed region.

    Returns:
        median/mean/min/max/p10/p90/iqr/std in milliseconds, ``repeats`` (calls timed) and the
        raw ``times_ms`` list.
    """
    for _ in range(warmup):
        fn()
        if on_call is not None:
            on_call()
    times: list[float] = []
    total = 0.0
    while len(times) < repeats or total < min_time_s:
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        times.append(elapsed * 1e3)
        total += elapsed
        if on_call is not None:
            on_call()
    return summarize_times(times)


def summarize_times(times_ms: list[float]) -> dict[str, Any]:
    """Robust summary of per-call times (ms); the median is the headline, spread shows the noise."""
    if not times_ms:
        raise ValueError("times_ms is empty: need at least one timed call")
    a = np.asarray(times_ms, dtype=np.float64)
    p10, p25, p50, p75, p90 = np.percentile(a, [10, 25, 50, 75, 90])
    return {
        "median_ms": float(p50),
        "mean_ms": float(a.mean()),
        "min_ms": float(a.min()),
        "max_ms": float(a.max()),
        "p10_ms": float(p10),
        "p90_ms": float(p90),
        "iqr_ms": float(p75 - p25),
        "std_ms": float(a.std(ddof=1)) if a.size > 1 else 0.0,
        "repeats": int(a.size),
        "times_ms": [float(t) for t in a],
    }


def max_seq_len(model: torch.nn.Module) -> int | None:
    """Longest sequence the model's position embeddings allow, or None when unknown."""
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None)
    if limit is None:
        return None
    adapter = _adapter(config)
    return int(limit - (adapter.position_offset(config) if adapter else 0))


def _adapter(config):
    from slimformer.arch import ADAPTERS  # the model's family knows its inputs and position offset

    return ADAPTERS.get(getattr(config, "model_type", None))


def _accepts_token_type_ids(model: torch.nn.Module) -> bool:
    config = getattr(model, "config", None)
    adapter = _adapter(config)
    return "token_type_ids" in adapter.input_names(config) if adapter else bool(getattr(config, "type_vocab_size", 0))


def make_bench_inputs(model: torch.nn.Module, batch_size: int, seq_len: int, seed: int) -> dict:
    """Random, unpadded inputs the model accepts: ids avoid special tokens, full attention mask.

    Raises:
        ValueError: ``seq_len`` exceeds the model's position embeddings, or bad sizes.
    """
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size={batch_size} and seq_len={seq_len} must both be >= 1")
    adapter = _adapter(getattr(model, "config", None))
    if adapter is not None and adapter.modality == "image":  # random pixels; the image size fixes the tokens
        inputs = adapter.random_inputs(model.config, batch=batch_size, seed=seed)
        param = next(model.parameters(), None)
        return {k: v.to(param.device) for k, v in inputs.items()} if param is not None else inputs
    limit = max_seq_len(model)
    if limit is not None and seq_len > limit:
        pos = getattr(model.config, "max_position_embeddings", limit)
        raise ValueError(f"seq_len={seq_len} is longer than the model allows: {limit} (max_position_embeddings={pos})")
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 1000)
    low = _FIRST_SAFE_ID if vocab > 2 * _FIRST_SAFE_ID else 0
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(low, vocab, (batch_size, seq_len), generator=g)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if _accepts_token_type_ids(model):
        inputs["token_type_ids"] = torch.zeros_like(ids)
    param = next(model.parameters(), None) if hasattr(model, "parameters") else None
    if param is not None:
        inputs = {k: v.to(param.device) for k, v in inputs.items()}
    return inputs


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    # platform.processor() is often empty or just "x86_64" on Linux; /proc/cpuinfo names the CPU.
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """Where the timings were taken: without this, numbers from two machines look comparable."""
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "numpy": _version("numpy"),
        "slimformer": _version("slimformer"),
        "datetime_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def bench_model(model: torch.nn.Module, config: BenchConfig, *, progress: bool = True) -> dict[str, Any]:
    """Time ``model(**inputs)`` for each batch size of ``config``; see the module docstring.

    Returns:
        ``{"config", "results": [per batch size stats + throughput_seq_per_s, ms_per_seq],
        "environment", "model": {"params", "class"}}`` (JSON-ready).
    """
    from tqdm.auto import tqdm

    old_threads = torch.get_num_threads()
    was_training = model.training
    calls_per_size = config.warmup + config.repeats
    bar = tqdm(total=len(config.batch_sizes) * calls_per_size, desc="bench", disable=not progress, leave=False)
    results = []
    try:
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        env = environment()  # inside the try: records the thread count actually used
        model.eval()
        with torch.inference_mode():
            for batch_size in config.batch_sizes:
                inputs = make_bench_inputs(model, batch_size, config.seq_len, config.seed)
                bar.set_postfix(batch=batch_size)
                gc.collect()  # a collection during timing would land on one unlucky repeat
                stats = time_callable(
                    lambda inputs=inputs: model(**inputs),
                    warmup=config.warmup,
                    repeats=config.repeats,
                    min_time_s=config.min_time_s,
                    on_call=bar.update,
                )
                median_s = stats["median_ms"] / 1e3
                row = {"batch_size": batch_size, "seq_len": config.seq_len, **stats}
                row["throughput_seq_per_s"] = batch_size / median_s if median_s > 0 else float("inf")
                row["ms_per_seq"] = stats["median_ms"] / batch_size
                results.append(row)
                logger.info(
                    "batch %d x %d: median %.3f ms, %.1f seq/s",
                    batch_size, config.seq_len, stats["median_ms"], row["throughput_seq_per_s"],
                )  # fmt: skip
    finally:
        bar.close()
        torch.set_num_threads(old_threads)
        model.train(was_training)
    return {
        "config": config.to_dict(),
        "results": results,
        "environment": env,
        "model": {
            "params": sum(p.numel() for p in model.parameters()),
            "class": f"{type(model).__module__}.{type(model).__qualname__}",
        },
    }


def bench_models(
    models: dict[str, torch.nn.Module], config: BenchConfig, *, progress: bool = True
) -> dict[str, dict[str, Any]]:
    """Time several models interleaved: each round calls every model once, in turn.

    Timing models one after another lets drift (CPU frequency, a background job starting) land on
    one model and not the others; a speedup of a pruned model over dense measured that way can be
    off by 10% or more on a shared machine. Interleaving spreads any drift over all models, so the
    ratios of their medians are what to report. The order alternates between rounds so no model is
    always first after another. Each model gets ``config.warmup`` untimed calls per batch size.

    A "model" may be anything called as ``model(**inputs)`` with a transformers ``config`` (e.g. an
    ONNX Runtime session wrapper), so other runtimes are timed in the same rounds as PyTorch.

    Returns:
        ``{name: result}`` with each result shaped like :func:`bench_model`'s.
    """
    from tqdm.auto import tqdm

    if not models:
        raise ValueError("models is empty: need at least one model to time")
    old_threads = torch.get_num_threads()
    modes = {name: getattr(m, "training", None) for name, m in models.items()}
    names = list(models)
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    total = len(config.batch_sizes) * len(names) * (config.warmup + config.repeats)
    bar = tqdm(total=total, desc="bench", disable=not progress, leave=False)
    try:
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        env = environment()
        with torch.inference_mode():
            for batch_size in config.batch_sizes:
                inputs = {}
                for name in names:
                    if hasattr(models[name], "eval"):
                        models[name].eval()
                    inputs[name] = make_bench_inputs(models[name], batch_size, config.seq_len, config.seed)
                    for _ in range(config.warmup):
                        models[name](**inputs[name])
                        bar.update()
                gc.collect()
                times: dict[str, list[float]] = {name: [] for name in names}
                spent = 0.0
                rnd = 0
                while rnd < config.repeats or spent < config.min_time_s * len(names):
                    order = names if rnd % 2 == 0 else names[::-1]
                    for name in order:
                        start = time.perf_counter()
                        models[name](**inputs[name])
                        elapsed = time.perf_counter() - start
                        times[name].append(elapsed * 1e3)
                        spent += elapsed
                        bar.update()
                    rnd += 1
                for name in names:
                    stats = summarize_times(times[name])
                    median_s = stats["median_ms"] / 1e3
                    row = {"batch_size": batch_size, "seq_len": config.seq_len, **stats}
                    row["throughput_seq_per_s"] = batch_size / median_s if median_s > 0 else float("inf")
                    row["ms_per_seq"] = stats["median_ms"] / batch_size
                    rows[name].append(row)
    finally:
        bar.close()
        torch.set_num_threads(old_threads)
        for name, mode in modes.items():
            if mode is not None:
                models[name].train(mode)
    return {
        name: {
            "config": config.to_dict(),
            "results": rows[name],
            "environment": env,
            "interleaved_with": [n for n in names if n != name],
            "model": {
                "params": sum(p.numel() for p in models[name].parameters())
                if hasattr(models[name], "parameters")
                else None,
                "class": f"{type(models[name]).__module__}.{type(models[name]).__qualname__}",
            },
        }
        for name in names
    }


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Speedup of candidate ``a`` over reference ``b`` (the ``--vs`` run), per batch size.

    ``speedup = b_median_ms / a_median_ms``: above 1 means ``a`` is that many times faster than
    ``b``; below 1 means ``a`` is slower.

    Raises:
        ValueError: the two runs do not cover the same batch sizes and sequence lengths.
    """
    a_rows = {(r["batch_size"], r["seq_len"]): r for r in a["results"]}
    b_rows = {(r["batch_size"], r["seq_len"]): r for r in b["results"]}
    if set(a_rows) != set(b_rows):
        raise ValueError(
            "cannot compare runs with different (batch_size, seq_len): "
            f"candidate has {sorted(a_rows)}, reference has {sorted(b_rows)}"
        )
    out = []
    for key, ra in a_rows.items():  # keeps the candidate's order
        a_ms, b_ms = ra["median_ms"], b_rows[key]["median_ms"]
        out.append(
            {
                "batch_size": key[0],
                "seq_len": key[1],
                "a_median_ms": a_ms,
                "b_median_ms": b_ms,
                "speedup": b_ms / a_ms if a_ms > 0 else float("inf"),
            }
        )
    return out


def format_table(result: dict[str, Any], other: dict[str, Any] | None = None) -> str:
    """Aligned plain-text table of ``result``; with ``other`` (the reference) adds speedup columns."""
    header = ["batch", "seq_len", "median ms", "p10 ms", "p90 ms", "iqr ms", "ms/seq", "seq/s"]
    speedups: dict[tuple[int, int], dict[str, Any]] = {}
    if other is not None:
        header += ["ref median ms", "speedup"]
        speedups = {(c["batch_size"], c["seq_len"]): c for c in compare(result, other)}
    rows = []
    for r in result["results"]:
        row = [
            str(r["batch_size"]),
            str(r["seq_len"]),
            *(f"{r[k]:.3f}" for k in ("median_ms", "p10_ms", "p90_ms", "iqr_ms", "ms_per_seq")),
            f"{r['throughput_seq_per_s']:.1f}",
        ]
        if other is not None:
            c = speedups[(r["batch_size"], r["seq_len"])]
            row += [f"{c['b_median_ms']:.3f}", f"{c['speedup']:.2f}x"]
        rows.append(row)
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    env = result.get("environment", {})
    if env:
        lines.append(
            f"wall clock on {env.get('processor')}, {env.get('torch_threads')} torch threads "
            f"of {env.get('logical_cores')} cores, torch {env.get('torch')}, {env.get('datetime_utc')}"
        )
    if other is not None:
        lines.append("speedup = reference median / candidate median (> 1: candidate is faster)")
    return "\n".join(lines)
