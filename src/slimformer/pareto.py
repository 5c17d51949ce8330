"""Accuracy-latency and accuracy-memory frontiers: every available method over a sweep of budgets.

:func:`sweep` compresses one fine-tuned model with each method at each budget (importance scored
once per method), evaluates every result on the test split, measures its memory (fp32 bytes from
the cost model, or the real bytes of an int8 model's weights) and times all of them *interleaved*
with the dense model (:func:`slimformer.bench.bench_models`), so latencies are comparable.
:func:`pareto_front` marks the points no other point beats on both axes; :func:`plot_frontier`
draws them. The methods come from :mod:`slimformer.methods`: every static method whose config has
a budget (the one-shot pruners, scored once per method and reused across budgets; axformer;
slim), each with the registry's precision methods as suffixes (``optin+int8``: the pruned model,
then dynamic int8; ``optin+bf16``: the pruned model cast to bfloat16).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimformer.config import ConfigBase, fraction, integer, one_of, option, text, tuple_of

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ParetoConfig(ConfigBase):
    """Which methods and budgets to sweep, and how to measure the results."""

    methods: tuple[str, ...] = option(
        ("optin", "fisher", "magnitude"),
        "methods with a budget (pruners, axformer, slim); append +int8 or +bf16 (e.g. optin+int8)"
        " for that version of each",
        tuple_of(text(), min_len=1, from_text=str),
    )
    budgets: tuple[float, ...] = option(
        (0.8, 0.6, 0.5, 0.4, 0.3),
        "relative budgets in (0, 1], one result per method each",
        tuple_of(fraction(open_low=True), min_len=1, from_text=float),
    )
    kind: str = option("macs", "budget kind of the sweep: macs, params or memory", one_of("macs", "params", "memory"))
    seq_len: int = option(128, "tokens per sequence for MACs and latency", integer(1))
    batch_sizes: tuple[int, ...] = option(
        (1,),
        "batch sizes to time; the first is the latency axis of the frontier",
        tuple_of(integer(1), min_len=1, from_text=int),
    )
    repeats: int = option(10, "timed calls per model (interleaved)", integer(1))
    calibration: int = option(1024, "calibration examples from the train split", integer(1))
    max_length: int = option(128, "truncation length for evaluation and calibration", integer(1))
    seed: int = option(0, "calibration sample seed", integer(0))

    def _check(self) -> None:
        names, suffixes = available_methods(), ", ".join(f"+{p}" for p in precisions())
        for m in self.methods:
            if _split(m)[0] not in names:
                self._fail("methods", f"unknown method {m!r}; available: {', '.join(names)} (each also {suffixes})")


def available_methods() -> list[str]:
    """Methods :func:`sweep` can run: the registered static methods whose config takes a budget."""
    from slimformer.methods import methods

    return [
        name
        for name, m in methods().items()
        if m.kind == "static" and "budget" in {f.name for f in dataclasses.fields(m.config)}
    ]


def precisions() -> list[str]:
    """Suffixes a method may carry (``optin+int8``): the registered precision methods."""
    from slimformer.methods import available

    return available("precision")


def pareto_front(points: Sequence[dict], x: str, y: str) -> list[bool]:
    """For each point, whether no other point has ``x`` <= and ``y`` >= with one strictly better.

    Lower ``x`` (latency, bytes) and higher ``y`` (accuracy) are better.
    """
    flags = []
    for p in points:
        dominated = any(q is not p and q[x] <= p[x] and q[y] >= p[y] and (q[x] < p[x] or q[y] > p[y]) for q in points)
        flags.append(not dominated)
    return flags


def _convert(precision: str, model, data):
    """A copy of ``model`` converted by the precision method ``precision`` (default config)."""
    from slimformer.methods import apply, get_method

    method = get_method(precision)
    return apply(method, model, method.config_from({}), data).model


def _split(method: str) -> tuple[str, str | None]:
    """``"optin+int8"`` -> ``("optin", "int8")``; ``"optin"`` -> ``("optin", None)``."""
    base, plus, suffix = method.rpartition("+")
    return (base, suffix) if plus and suffix in precisions() else (method, None)


def weight_bytes(model) -> int:
    """Bytes of the weights as stored: the real size of int8 packed weights, not the fp32 shapes."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def sweep(
    model,
    tokenizer,
    task,
    config: ParetoConfig,
    *,
    name: str = "dense",
    progress: bool = True,
    on_point: Callable[[dict], None] | None = None,
) -> dict[str, Any]:
    """Run every method at every budget; return the points (dense first) with frontier flags.

    Each point: method, budget, accuracy, params, macs, bytes (serialized weights), ``latency_b{B}_ms``
    per batch size and ``latency_ms`` at the first, seconds (compression time), and ``front_latency`` /
    ``front_memory``; plus ``models``: every model by point key (dense included), for export or reuse.
    """
    points, models = compress_points(model, tokenizer, task, config, name=name, progress=progress, on_point=on_point)
    environment = time_points(points, models, config, progress=progress)
    mark_fronts(points)
    return {"points": points, "config": _config_dict(config), "environment": environment, "models": models}


def compress_points(
    model,
    tokenizer,
    task,
    config: ParetoConfig,
    *,
    name: str = "dense",
    progress: bool = True,
    on_point: Callable[[dict], None] | None = None,
) -> tuple[list[dict], dict[str, Any]]:
    """The sweep without timing: compress, evaluate on test, measure sizes. Returns (points, models by key)."""
    from tqdm.auto import tqdm

    from slimformer.cost import cost_of
    from slimformer.structure import Structure

    data, score = _data_and_scorer(model, tokenizer, task, config)
    models: dict[str, Any] = {}
    dense_cost = cost_of(Structure.from_model(model), config.seq_len)
    points: list[dict] = []

    def add(key: str, label: str, budget: float, m, cost, seconds: float) -> None:
        points.append(_point(key, label, budget, m, score, cost, seconds))
        models[key] = m
        if on_point:
            on_point(points[-1])

    add(name, "dense", 1.0, model, dense_cost, 0.0)
    bases = list(dict.fromkeys(_split(m)[0] for m in config.methods))
    bar = tqdm(total=len(bases) * len(config.budgets), desc="sweep", disable=not progress, leave=False)
    for method in bases:
        wanted = [p for p in precisions() if f"{method}+{p}" in config.methods]
        bar.set_postfix(method=method)
        for value, compressed, seconds in _compressed(method, model, config, data):
            cost = cost_of(Structure.from_model(compressed), config.seq_len)
            if method in config.methods:
                add(f"{method}@{value}", method, value, compressed, cost, seconds)
            for p in wanted:
                add(f"{method}+{p}@{value}", f"{method}+{p}", value, _convert(p, compressed, data), cost, seconds)
            bar.update()
        for p in wanted:
            if f"dense+{p}@1.0" not in models:
                add(f"dense+{p}@1.0", f"dense+{p}", 1.0, _convert(p, model, data), dense_cost, 0.0)
    bar.close()
    return points, models


def _data_and_scorer(model, tokenizer, task, config: ParetoConfig):
    """``(MethodData, score)``: what the methods read and ``score(model) -> {"accuracy", ...}`` on test.

    A classifier: its test accuracy. An embedding model (:mod:`slimformer.embedding`): unlabelled
    train texts for the methods, and kNN accuracy as ``accuracy`` with precision@10 and agreement with
    dense (:class:`slimformer.embedding_compress.EmbeddingScorer`); methods it cannot run are refused first.
    """
    from slimformer.embedding import embedding_pooling
    from slimformer.methods import MethodData

    options = {"max_length": config.max_length, "calibration": config.calibration, "seed": config.seed}
    if embedding_pooling(model) is None:
        from slimformer.evaluate import evaluate

        test = task.split("test")
        data = MethodData(tokenizer=tokenizer, task=task, progress=False, **options)
        return data, lambda m: {"accuracy": evaluate(m, tokenizer, test, max_length=config.max_length,
                                                     progress=False)["accuracy"]}  # fmt: skip
    from slimformer.embedding_compress import EmbeddingData, EmbeddingScorer
    from slimformer.tasks import require_kind

    for method in dict.fromkeys(_split(m)[0] for m in config.methods):
        require_kind(model, method)
    data = EmbeddingData(tokenizer=tokenizer, task=task, progress=False, **options)
    return data, EmbeddingScorer(model, tokenizer, task, max_length=config.max_length, seed=config.seed)


def _compressed(method: str, model, config: ParetoConfig, data):
    """Yield ``(budget, compressed model, seconds)`` for every budget of the sweep.

    One-shot pruners score importance once and reuse it for every budget (scoring time is counted
    in each point); other methods run once per budget through the registry.
    """
    from slimformer.budget import Budget
    from slimformer.methods import apply, get_method
    from slimformer.static import PruneConfig, prune, score

    registered = get_method(method)
    first = Budget(kind=config.kind, value=config.budgets[0], relative=True, seq_len=config.seq_len)
    importance, score_s = None, 0.0
    if issubclass(registered.config, PruneConfig):
        t0 = time.perf_counter()
        batches = data.calibration_batches()
        importance = score(model, registered.config_from({"budget": first}), batches, progress=False)
        score_s = time.perf_counter() - t0
    for value in config.budgets:
        budget = dataclasses.replace(first, value=value)
        t1 = time.perf_counter()
        if importance is not None:
            cfg = registered.config_from({"budget": budget, "seed": config.seed})
            compressed = prune(model, cfg, batches, importance=importance, progress=False).model
        else:
            compressed = apply(registered, model, registered.config_from({"budget": budget}), data).model
        yield value, compressed, score_s + time.perf_counter() - t1


def time_points(points: list[dict], models: dict[str, Any], config: ParetoConfig, *, progress: bool = True) -> dict:
    """Time every model interleaved; fill ``latency_b{B}_ms`` and ``latency_ms``. Returns the environment."""
    from slimformer.bench import BenchConfig, bench_models

    logger.info("timing %d models interleaved at batch sizes %s", len(models), list(config.batch_sizes))
    bench = BenchConfig(batch_sizes=config.batch_sizes, seq_len=config.seq_len, repeats=config.repeats)
    timed = bench_models({k: _timed(m) for k, m in models.items()}, bench, progress=progress)
    for p in points:
        for r in timed[p["key"]]["results"]:
            p[f"latency_b{r['batch_size']}_ms"] = r["median_ms"]
        p["latency_ms"] = p[f"latency_b{config.batch_sizes[0]}_ms"]
    return next(iter(timed.values()))["environment"]


def _timed(model):
    """What a user of ``model`` runs: an embedding model's encoder + pooling, else the model itself."""
    from slimformer.embedding import EmbeddingForward, embedding_pooling

    return EmbeddingForward(model) if embedding_pooling(model) is not None else model


def mark_fronts(points: list[dict]) -> None:
    """Set ``front_latency`` and ``front_memory`` on every point (see :func:`pareto_front`)."""
    for axis, x in (("front_latency", "latency_ms"), ("front_memory", "bytes")):
        for p, flag in zip(points, pareto_front(points, x, "accuracy"), strict=True):
            p[axis] = flag


def _config_dict(config: ParetoConfig) -> dict[str, Any]:
    return config.to_dict()


def _point(key, method, budget, model, score, cost, seconds) -> dict[str, Any]:
    point = {
        "key": key,
        "method": method,
        "budget": budget,
        **score(model),
        "params": cost.params,
        "macs": cost.macs,
        "bytes": weight_bytes(model),
        "seconds": round(seconds, 2),
    }
    logger.info("%s: accuracy %.4f, %.1f MB", key, point["accuracy"], point["bytes"] / 1e6)
    return point


def plot_frontier(
    points: Sequence[dict], x: str, path: str | Path, *, xlabel: str, title: str = "", ylabel: str = "test accuracy"
) -> Path:
    """PNG of accuracy against ``x`` per method; Pareto-optimal points ringed and joined by a step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    scale = 1e6 if x == "bytes" else 1.0
    flags = pareto_front(points, x, "accuracy")
    fig, ax = plt.subplots(figsize=(6.8, 4.4), dpi=120)
    groups: dict[str, list[dict]] = {}
    for p in points:
        groups.setdefault(p["method"], []).append(p)
    for method, ps in groups.items():
        ps = sorted(ps, key=lambda p: p[x])
        style = {"marker": "*", "s": 140, "color": "black"} if method == "dense" else {"marker": "o", "s": 28}
        ax.scatter([p[x] / scale for p in ps], [p["accuracy"] for p in ps], label=method, zorder=3, **style)
        if method != "dense":
            ax.plot([p[x] / scale for p in ps], [p["accuracy"] for p in ps], alpha=0.5, linewidth=1)
    front = sorted((p for p, f in zip(points, flags, strict=True) if f), key=lambda p: p[x])
    ax.step([p[x] / scale for p in front], [p["accuracy"] for p in front], where="post", color="red", linewidth=1.2)
    ax.scatter(
        [p[x] / scale for p in front], [p["accuracy"] for p in front], s=110, facecolors="none", edgecolors="red",
        label="Pareto-optimal", zorder=4,
    )  # fmt: skip
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def markdown(points: Sequence[dict], *, batch_sizes: Sequence[int]) -> str:
    """Table of every point; * marks the latency frontier (first batch size), † the memory frontier."""
    lat = [f"b{b} ms (x dense)" for b in batch_sizes]
    agree = "recall_at_k" in points[0]  # an embedding model: kNN accuracy, then recall@10 of dense's neighbours
    acc = "test kNN acc | recall@10" if agree else "test acc"
    lines = [
        f"| method | budget | {acc} | params | MACs | weights MB | {' | '.join(lat)} | frontier | time (s) |",
        "|---|---|---|---|---|---|" + "---|" * (len(lat) + agree) + "---|---|",
    ]
    dense = points[0]
    for p in points:
        marks = ("*" if p.get("front_latency") else "") + ("†" if p.get("front_memory") else "")
        cells = [
            f"{p[f'latency_b{b}_ms']:.2f} ({dense[f'latency_b{b}_ms'] / p[f'latency_b{b}_ms']:.2f}x)"
            for b in batch_sizes
        ]
        score = f"{p['accuracy']:.4f}" + (f" | {p['recall_at_k']:.4f}" if agree else "")
        lines.append(
            f"| {p['method']} | {p['budget']:.2f} | {score} | {p['params'] / 1e6:.2f}M | "
            f"{p['macs'] / 1e6:.0f}M | {p['bytes'] / 1e6:.1f} | {' | '.join(cells)} | {marks} | {p['seconds']:.1f} |"
        )
    return "\n".join(lines)
