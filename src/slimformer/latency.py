"""Measured latency lookup table: wall-clock ms of one encoder layer as a function of its shape.

Latency budgets need to know what a pruned model will cost before it exists. The table holds the
median wall-clock time per layer of fresh layers of the model's own architecture and config
(attention implementation included) on a grid of (heads kept, FFN width) at a fixed
(batch, seq_len), plus the fixed cost of everything else (a forward pass of the model with no
layers: embeddings, mask, pooler and classifier). Between grid points times are interpolated
bilinearly; a structure's prediction is the sum of its layers' times plus the fixed cost.

With few tokens, layers are timed as a chain of as many distinct layers as the model has, so their
weights are as cold in cache as inside the real model (see :func:`auto_stack`). The default grid's
widths are multiples of 8 (given a full width that is): other widths ran up to ~15-25% slower at
batch 32 (``benchmarks/results/shape_latency.md``), which the table does not model, and which
:func:`slimformer.static.select.select` avoids by rounding widths to multiples of 8.

Timings depend on the machine, so tables are cached per (dims, batch, seq, torch threads, CPU
model, torch version, grid and measurement settings) under ``$SLIMFORMER_CACHE/latency/``
(default ``~/.cache/slimformer/latency/``). Points are measured in several interleaved rounds
(each visiting the grid in alternating order) and the median of all calls is kept, so a burst of
background load spreads over many points instead of biasing a few.
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import dataclasses
import gc
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slimformer.arch import ModelDims, get_adapter
from slimformer.bench import environment, make_bench_inputs, time_callable
from slimformer.config import Check, ConfigBase, integer, mapping, number, option, tuple_of
from slimformer.fsutil import atomic_write_text, file_lock
from slimformer.hf_remote.modeling_slimformer import SLIM_KEY, reshape_layer
from slimformer.structure import Structure

logger = logging.getLogger(__name__)
FORMAT = 1


def _dims(v: Any) -> ModelDims:
    if isinstance(v, dict):
        return ModelDims(**v)
    if not isinstance(v, ModelDims):
        raise ValueError("")
    return v


#: The architecture of a table: a ModelDims, or its dict form as saved.
DIMS = Check("a ModelDims or its dict form", _dims, encode=dataclasses.asdict)
MS = number(0)  # milliseconds


@dataclass(frozen=True, kw_only=True)
class LatencyTable(ConfigBase):
    """Median ms of one layer per (heads, ffn) grid point, plus the fixed (non-layer) cost."""

    dims: ModelDims = option(help="the architecture the table was measured for", check=DIMS)
    batch_size: int = option(help="sequences per forward pass", check=integer(1))
    seq_len: int = option(help="tokens per sequence (no padding)", check=integer(1))
    heads: tuple[int, ...] = option(
        help="grid of kept heads, increasing, from 0 to dims.num_heads", check=tuple_of(integer(0))
    )
    ffn: tuple[int, ...] = option(help="grid of FFN widths, increasing, from 0 to dims.ffn", check=tuple_of(integer(0)))
    layer_ms: tuple[tuple[float, ...], ...] = option(
        help="layer_ms[i][j]: heads[i] x ffn[j] layer", check=tuple_of(tuple_of(MS))
    )
    fixed_ms: float = option(help="model with no layers: embeddings, mask, pooler, classifier", check=MS)
    environment: dict = option(help="where it was measured (bench.environment)", check=mapping(), factory=dict)
    info: dict = option(help="how it was measured (repeats, rounds, time)", check=mapping(), factory=dict)

    def _check(self) -> None:
        for name, grid, top in (("heads", self.heads, self.dims.num_heads), ("ffn", self.ffn, self.dims.ffn)):
            if len(grid) < 2 or grid[0] != 0 or grid[-1] != top or list(grid) != sorted(set(grid)):
                self._fail(name, f"{name} grid must increase strictly from 0 to {top}")
        rows = self.layer_ms
        if len(rows) != len(self.heads) or any(len(r) != len(self.ffn) for r in rows):
            self._fail("layer_ms", f"must be {len(self.heads)} x {len(self.ffn)} (heads x ffn grid)")

    def layer_time(self, heads: int, ffn: int) -> float:
        """Predicted ms of one layer keeping ``heads`` heads and ``ffn`` neurons (bilinear).

        Raises:
            ValueError: a shape outside the grid.
        """
        if not (0 <= heads <= self.heads[-1] and 0 <= ffn <= self.ffn[-1]):
            raise ValueError(f"layer shape heads={heads}, ffn={ffn} outside 0..{self.heads[-1]} x 0..{self.ffn[-1]}")
        i, a = _cell(self.heads, heads)
        j, b = _cell(self.ffn, ffn)
        v = self.layer_ms
        return (1 - a) * ((1 - b) * v[i][j] + b * v[i][j + 1]) + a * ((1 - b) * v[i + 1][j] + b * v[i + 1][j + 1])

    def predict(self, structure: Structure) -> float:
        """Predicted ms of a forward pass of ``structure`` at this table's batch and seq_len."""
        self.check(structure.dims)
        return self.fixed_ms + sum(self.layer_time(s.heads, s.ffn) for s in structure.layers)

    def check(self, dims: ModelDims, *, batch_size: int | None = None, seq_len: int | None = None) -> None:
        """Raise ValueError unless this table applies to ``dims`` (and the given batch / seq_len)."""
        keys = ("family", "hidden", "num_heads", "head_size", "ffn")
        mine, theirs = ({k: getattr(d, k) for k in keys} for d in (self.dims, dims))
        if mine != theirs:
            raise ValueError(f"latency table was measured for {mine}, not {theirs}")
        for name, want in (("batch_size", batch_size), ("seq_len", seq_len)):
            if want is not None and want != getattr(self, name):
                raise ValueError(f"latency table was measured at {name}={getattr(self, name)}, the budget needs {want}")

    # --- persistence ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every field (dims as a dict, grids as lists) and the file format's version."""
        return {**super().to_dict(), "format": FORMAT}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyTable:
        """Inverse of :meth:`to_dict`; another format version or unknown keys raise ``ValueError``."""
        data = dict(data)
        if data.pop("format", FORMAT) != FORMAT:
            raise ValueError(f"latency table format must be {FORMAT}")
        return super().from_dict(data)

    def save(self, path: str | Path) -> Path:
        # a per-process temporary name and an atomic rename: concurrent writers never clash
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _cell(grid: tuple[int, ...], x: float) -> tuple[int, float]:
    """Index ``i`` with ``grid[i] <= x <= grid[i + 1]`` and the weight of ``grid[i + 1]``."""
    i = min(max(bisect.bisect_right(grid, x) - 1, 0), len(grid) - 2)
    return i, (x - grid[i]) / (grid[i + 1] - grid[i])


def default_grid(dims: ModelDims) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Grid of (heads, ffn): heads 0, 1 and every ~1/6 of H; FFN 0, 32, 64, 128 and every ~1/8 of F.

    The points at 1 head and at small widths catch the step from "sublayer absent" to "sublayer
    present" (fixed work per sublayer: 32 neurons cost 1.2-1.3x their share of the MACs), which a
    straight line from 0 would smear out. MiniLM-L6 (12 heads, FFN 1536): 8 x 12 = 96 points.
    """
    h, f = dims.num_heads, dims.ffn
    step_h = max(1, -(-h // 6))
    heads = sorted({0, 1, h, *range(0, h, step_h)})
    step_f = max(1, -(-f // 8))
    small = [w for w in (32, 64, 128) if w < step_f]
    ffn = sorted({0, f, *small, *range(0, f, step_f)})
    return tuple(heads), tuple(ffn)


def cache_dir() -> Path:
    return Path(os.environ.get("SLIMFORMER_CACHE", Path.home() / ".cache" / "slimformer")) / "latency"


def _cache_path(dims: ModelDims, batch: int, seq: int, heads, ffn, setup: dict) -> Path:
    env = environment()
    key = {
        "dims": dataclasses.asdict(dims),
        "batch_size": batch,
        "seq_len": seq,
        "threads": torch.get_num_threads(),
        "cpu": env["processor"],
        "torch": env["torch"],
        "setup": setup,
        "heads": list(heads),
        "ffn": list(ffn),
        "format": FORMAT,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"{dims.family}-d{dims.hidden}-b{batch}-s{seq}-{digest}.json"


def _dense_one_layer(model: torch.nn.Module) -> torch.nn.Module:
    """A fresh, dense, one-layer model of the same class and config (whatever ``model`` was pruned to)."""
    adapter = get_adapter(model)
    config = copy.deepcopy(model.config)
    if hasattr(config, SLIM_KEY):
        delattr(config, SLIM_KEY)
    setattr(config, adapter.paths["n_layers"], 1)
    small = type(model)(config).eval()
    return small.to(dtype=next(model.parameters()).dtype)


def auto_stack(dims: ModelDims, batch_size: int, seq_len: int) -> int:
    """How many distinct layers to chain per timed call (see :func:`time_layer_shapes`).

    With few tokens a layer's time is dominated by streaming its weights: one layer timed alone
    keeps them in cache and ran 6-11% faster than the same layer inside MiniLM-L6 at batch 1 x 128.
    Chaining as many distinct layers as the model has took the table's errors on real pruned MiniLMs
    from -3..-15% to -4..+2% (``benchmarks/shape_latency.py``). With many tokens activations
    dominate and chaining changed nothing measurable (32 x 128), at 6x the measuring time.
    """
    return dims.num_layers if batch_size * seq_len <= 2048 else 1


def measure_latency_table(
    model: torch.nn.Module,
    *,
    batch_size: int = 1,
    seq_len: int = 128,
    heads: tuple[int, ...] | None = None,
    ffn: tuple[int, ...] | None = None,
    stack: int | None = None,
    rounds: int = 3,
    repeats: int = 2,
    warmup: int = 1,
    threads: int | None = None,
    cache: bool = True,
    progress: bool = True,
) -> LatencyTable:
    """Measure (or load from the cache) the latency table of ``model``'s architecture on this machine.

    Args:
        model: a supported sequence classifier (pruned or not; only its architecture matters).
        batch_size, seq_len: the input the times are for (random ids, no padding).
        heads, ffn: the grid (must include 0 and the full size); default :func:`default_grid`.
        stack: distinct layers chained per timed call; default :func:`auto_stack`.
        rounds: interleaved passes over the grid; each point's value is the median of all its calls.
        repeats, warmup: timed and untimed calls per point and round.
        threads: torch intra-op threads while measuring (None = current); use the count you will run
            the model with. On a shared, busy machine 1 thread gives far steadier times.
        cache: read and write ``$SLIMFORMER_CACHE/latency/``.
        progress: show a progress bar.

    Returns:
        the :class:`LatencyTable`.
    """
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        adapter = get_adapter(model)
        dims = adapter.dims(model.config)
        g_heads, g_ffn = default_grid(dims)
        heads = tuple(heads) if heads is not None else g_heads
        ffn = tuple(ffn) if ffn is not None else g_ffn
        stack = auto_stack(dims, batch_size, seq_len) if stack is None else stack
        attn = str(getattr(model.config, "_attn_implementation", None))
        setup = {"stack": stack, "rounds": rounds, "repeats": repeats, "warmup": warmup, "attn_implementation": attn}
        path = _cache_path(dims, batch_size, seq_len, heads, ffn, setup)
        # one process measures a table at a time: a second waits and reads the first one's result,
        # instead of both measuring while competing for the cores (which would cache slow times)
        with file_lock(path.with_suffix(".lock")) if cache else contextlib.nullcontext():
            table = _cached_table(path) if cache else None
            if table is None:
                table = _measure_table(model, dims, batch_size, seq_len, heads, ffn, setup, progress)
                if cache:
                    _cache_if_steady(table, path)
    finally:
        torch.set_num_threads(old_threads)
    return table


#: Largest median relative spread (IQR / median over a point's repeat timings) a cached table may
#: have: above it the machine was busy while measuring, and the table would mislead every later run.
MAX_CACHED_SPREAD = 0.35


def _cached_table(path: Path) -> LatencyTable | None:
    if not path.exists():
        return None
    try:
        table = LatencyTable.load(path)
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
        logger.warning("ignoring unreadable latency cache %s: %s", path, e)
        return None
    logger.info("latency table from cache %s", path)
    return table


def _cache_if_steady(table: LatencyTable, path: Path) -> bool:
    """Save ``table`` to the cache unless its repeat timings disagreed widely; returns whether saved."""
    spread = table.info.get("spread")
    if spread is not None and spread > MAX_CACHED_SPREAD:
        logger.warning(
            "latency table not cached: repeat timings disagree (median spread %.0f%% > %.0f%%); "
            "the machine looks busy, so the next run measures again",
            100 * spread,
            100 * MAX_CACHED_SPREAD,
        )
        return False
    table.save(path)
    return True


def _measure_table(model, dims, batch_size, seq_len, heads, ffn, setup: dict, progress: bool) -> LatencyTable:
    """Time the grid (see :func:`time_layer_shapes`) and build the table."""
    start = time.perf_counter()
    timed = time_layer_shapes(
        model, [(h, w) for h in heads for w in ffn], batch_size=batch_size, seq_len=seq_len, stack=setup["stack"],
        rounds=setup["rounds"], repeats=setup["repeats"], warmup=setup["warmup"], progress=progress,
    )  # fmt: skip
    table = LatencyTable(
        dims=dims,
        batch_size=batch_size,
        seq_len=seq_len,
        heads=heads,
        ffn=ffn,
        layer_ms=tuple(tuple(timed["layers"][(h, w)] for w in ffn) for h in heads),
        fixed_ms=timed["fixed_ms"],
        environment=environment(),
        info={
            **setup,
            "measure_s": round(time.perf_counter() - start, 2),
            "spread": _spread(timed),
            "what": "median wall-clock ms per layer of a chain of `stack` layers of each grid shape; "
            "fixed = the model with no layers (embeddings, mask, pooler, classifier)",
        },
    )
    logger.info(
        "latency table for %s (batch %d x %d, %d threads): %d points in %.1f s; dense %.2f ms predicted",
        dims.family, batch_size, seq_len, table.environment["torch_threads"], len(heads) * len(ffn) + 1,
        table.info["measure_s"], table.predict(Structure.dense(dims)),
    )  # fmt: skip
    return table


def _spread(timed: dict[str, Any]) -> float:
    """Median over points of IQR / median of their repeat timings (0: perfectly steady)."""
    rel = [timed["iqr"][p] / ms for p, ms in timed["layers"].items() if ms > 0]
    if timed["fixed_ms"] > 0:
        rel.append(timed["fixed_iqr"] / timed["fixed_ms"])
    return round(float(np.median(rel)), 4) if rel else 0.0


def _cpu_times(fn, warmup: int, repeats: int) -> list[float]:
    """CPU time (ms) of this thread for each of ``repeats`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.thread_time()
        fn()
        out.append((time.thread_time() - start) * 1e3)
    return out


@torch.inference_mode()
def time_layer_shapes(
    model: torch.nn.Module,
    shapes: list[tuple[int, int]],
    *,
    batch_size: int,
    seq_len: int,
    stack: int = 1,
    rounds: int = 3,
    repeats: int = 3,
    warmup: int = 1,
    clock: str = "wall",
    progress: bool = True,
) -> dict[str, Any]:
    """Time layers of ``model``'s architecture with the given (heads, ffn) shapes.

    Each visit of a shape builds ``stack`` fresh layers of that shape (reshaped by the same code that
    loads pruned models) and times them chained on ``(batch_size, seq_len, hidden)`` hidden states,
    with the model's own attention-mask path; the time per layer is the call's time / ``stack``.
    Shapes are visited ``rounds`` times in alternating order (slow drift cancels out).
    ``clock="wall"`` times with :func:`slimformer.bench.time_callable` (what budgets use);
    ``clock="cpu"`` uses this thread's CPU time instead, which leaves out the time the thread waited
    for a core: for comparing shapes on a busy machine, with 1 torch thread only.

    Returns:
        ``{"layers": {(h, w): median ms per layer}, "iqr": {(h, w): ms}, "fixed_ms": median ms of the
        model with no layers, "fixed_iqr": ms}``.

    Raises:
        ValueError: an unknown clock, or ``clock="cpu"`` with more than one torch thread.
    """
    from tqdm.auto import tqdm

    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock={clock!r}: must be 'wall' or 'cpu'")
    if clock == "cpu" and torch.get_num_threads() != 1:
        raise ValueError("clock='cpu' measures one thread: call torch.set_num_threads(1) first")
    adapter = get_adapter(model)
    dims = adapter.dims(model.config)
    small = _dense_one_layer(model)
    template = adapter.layers(small)[0]
    inputs = make_bench_inputs(small, batch_size, seq_len, seed=0)
    hidden = adapter.embed(small, inputs["input_ids"], inputs.get("token_type_ids"))  # (B, T, d)
    mask = adapter.layer_mask(small, hidden, inputs["attention_mask"])
    layerless = copy.deepcopy(small)
    layerless.set_submodule(adapter.paths["layers"], torch.nn.ModuleList())
    setattr(layerless.config, adapter.paths["n_layers"], 0)

    def build(h: int, w: int) -> torch.nn.Module:
        layer = copy.deepcopy(template)
        reshape_layer(layer, adapter.paths, heads=h, ffn=w, head_size=dims.head_size, hidden=dims.hidden)
        return layer.eval()

    def chain(layers: list[torch.nn.Module]) -> torch.Tensor:
        x = hidden
        for layer in layers:
            x = adapter.run_layer(layer, x, mask)
        return x

    points: list[Any] = list(dict.fromkeys((int(h), int(w)) for h, w in shapes))
    times: dict[Any, list[float]] = {p: [] for p in [*points, "fixed"]}
    bar = tqdm(total=rounds * len(times), desc="layer latency", disable=not progress, leave=False)
    was_enabled = gc.isenabled()
    try:
        for r in range(rounds):
            gc.collect()
            gc.disable()  # a collection inside a timed call would land on one unlucky point
            for p in [*points, "fixed"] if r % 2 == 0 else ["fixed", *reversed(points)]:
                if p == "fixed":
                    fn, per = (lambda: adapter.forward_without_layers(layerless, inputs)), 1
                else:
                    built = [build(*p) for _ in range(stack)]
                    fn, per = (lambda built=built: chain(built)), stack
                if clock == "cpu":
                    calls = _cpu_times(fn, warmup, repeats)
                else:
                    calls = time_callable(fn, warmup=warmup, repeats=repeats)["times_ms"]
                times[p] += [t / per for t in calls]
                bar.update()
            gc.enable()
    finally:
        if was_enabled:
            gc.enable()
        bar.close()

    def iqr(t: list[float]) -> float:
        q1, q3 = np.percentile(t, [25, 75])
        return float(q3 - q1)

    return {
        "layers": {p: float(np.median(times[p])) for p in points},
        "iqr": {p: iqr(times[p]) for p in points},
        "fixed_ms": float(np.median(times["fixed"])),
        "fixed_iqr": iqr(times["fixed"]),
    }
