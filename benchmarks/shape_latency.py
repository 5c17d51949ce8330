"""Layer shape vs wall-clock latency on this CPU, and the accuracy of the latency lookup table.

On a MiniLM-L6 layer (hidden 384, 12 heads x 32, FFN 1536; the built-in model's own config and
attention implementation), at batch 1 and 32 x 128 tokens:

1. FFN widths from 1536 down to 0 (odd ones too) with no attention heads, so the FFN dominates:
   ms vs MACs; are small or odd widths slower per MAC?
2. Widths 512..1024 grouped by their largest power-of-two divisor: does rounding kept widths to a
   multiple of 8/16/32/64 pay?
3. Heads 12..0 with no FFN.
4. The latency table (:mod:`slimformer.latency`, default grid): predicted vs measured ms of real
   pruned MiniLM models (dense, uniform 50%, uneven shapes, ...), timed in interleaved rounds.

Writes benchmarks/results/shape_latency.{json,md}.

    .venv/bin/python benchmarks/shape_latency.py [--threads 1] [--batches 1,32] [--rounds 5] [--clock cpu]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import harness
import numpy as np
import torch

from slimformer.bench import make_bench_inputs, parse_int_list, time_callable
from slimformer.budget import Budget
from slimformer.cost import layer_macs
from slimformer.latency import LatencyTable, auto_stack, default_grid, measure_latency_table, time_layer_shapes
from slimformer.models import load_model
from slimformer.static.importance import Importance
from slimformer.static.select import select
from slimformer.structure import LayerShape, Structure
from slimformer.surgery import KeepPlan, apply_plan

#: FFN widths of the MiniLM sweep (a smaller model sweeps those up to its own width).
WIDTHS = (1536, 1535, 1024, 1023, 1000, 769, 768, 767, 512, 511, 500, 256, 255, 250, 128, 127, 100, 96, 64, 63)
WIDTHS += (48, 33, 32, 31, 24, 16, 15, 8, 7, 4, 1, 0)


def _spread(ws: list[int], n: int = 8) -> tuple[int, ...]:
    return tuple(ws[:: max(1, len(ws) // n)][:n])


def rounding_groups(ffn: int) -> dict[int, tuple[int, ...]]:
    """Widths in ffn/3..2ffn/3 (512..1024 for MiniLM) grouped by their largest power-of-two divisor.

    Keys 1, 2, 4, ..., 64 (1 = odd) and 128 (every multiple of 128); empty groups are left out.
    """
    lo, hi = ffn // 3, 2 * ffn // 3
    groups = {d: _spread([w for w in range(lo, hi + 1) if w & -w == d]) for d in (1, 2, 4, 8, 16, 32, 64)}
    groups[128] = tuple(w for w in range(lo, hi + 1) if w % 128 == 0)
    return {d: ws for d, ws in groups.items() if ws}


#: Real pruned models for the table check: (name, heads kept per layer, FFN width per layer).
MODELS = (
    ("dense", [12] * 6, [1536] * 6),
    ("uniform 50%", [6] * 6, [768] * 6),
    ("uniform 25%", [3] * 6, [384] * 6),
    ("uneven", [12, 3, 7, 0, 12, 9], [100, 1536, 1300, 36, 0, 536]),
    ("ffn only 30%", [12] * 6, [460] * 6),
    ("heads only 50%", [6] * 6, [1536] * 6),
    ("odd widths", [5, 11, 1, 12, 2, 7], [777, 1111, 333, 55, 1501, 999]),
)


def scaled_models(dims, layers: int) -> tuple[tuple[str, list[int], list[int]], ...]:
    """:data:`MODELS` for a model of other dims: heads and widths scaled, the first ``layers`` layers."""
    if (dims.num_heads, dims.ffn, layers) == (12, 1536, 6):
        return MODELS
    return tuple(
        (
            name,
            [round(h * dims.num_heads / 12) for h in heads[:layers]],
            [round(f * dims.ffn / 1536) for f in ffn[:layers]],
        )
        for name, heads, ffn in MODELS
    )


def ffn_sweep(model, batch: int, seq: int, rounds: int, clock: str) -> dict:
    dims = Structure.from_model(model).dims
    widths = [w for w in WIDTHS if w <= dims.ffn]
    widths = widths if dims.ffn in widths else [dims.ffn, *widths]
    t = time_layer_shapes(
        model, [(0, w) for w in widths], batch_size=batch, seq_len=seq, rounds=rounds, repeats=3, clock=clock
    )
    base = t["layers"][(0, 0)]
    top = t["layers"][(0, dims.ffn)] - base
    rows = []
    for w in widths:
        ms = t["layers"][(0, w)]
        macs = batch * layer_macs(dims, LayerShape(0, w, 0), seq)["ffn"]
        rows.append(
            {
                "ffn": w,
                "ms": ms,
                "iqr_ms": t["iqr"][(0, w)],
                "ffn_ms": ms - base,
                "gmacs": macs / 1e9,
                "gmac_per_s": macs / 1e6 / (ms - base) if ms > base else None,
                # > 1: this width costs more than its share of the full FFN's time
                "ms_vs_linear": (ms - base) / (top * w / dims.ffn) if w else None,
            }
        )
    return {"batch": batch, "clock": clock, "empty_layer_ms": base, "rows": rows}


def rounding_sweep(model, batch: int, seq: int, rounds: int, clock: str) -> dict:
    rounding = rounding_groups(Structure.from_model(model).dims.ffn)
    widths = sorted({w for ws in rounding.values() for w in ws})
    t = time_layer_shapes(
        model, [(0, w) for w in widths], batch_size=batch, seq_len=seq, rounds=rounds, repeats=3, clock=clock
    )
    ms = np.array([t["layers"][(0, w)] for w in widths])
    slope, icpt = np.polyfit(np.array(widths, dtype=float), ms, 1)
    excess = {w: float(m / (slope * w + icpt) - 1) for w, m in zip(widths, ms, strict=True)}
    groups = {}
    for d, ws in rounding.items():
        name = str(d) if d < 128 else ">=128"
        groups[name] = {"widths": list(ws), "mean_excess": float(np.mean([excess[w] for w in ws]))}
    return {
        "batch": batch,
        "clock": clock,
        "ms": {str(w): t["layers"][(0, w)] for w in widths},
        "fit_ms_per_neuron": float(slope),
        "excess_by_pow2_divisor": groups,
    }


def heads_sweep(model, batch: int, seq: int, rounds: int, clock: str) -> dict:
    dims = Structure.from_model(model).dims
    hs = list(range(dims.num_heads, -1, -1))
    t = time_layer_shapes(
        model, [(h, 0) for h in hs], batch_size=batch, seq_len=seq, rounds=rounds, repeats=3, clock=clock
    )
    base = t["layers"][(0, 0)]
    rows = []
    for h in hs:
        macs = batch * layer_macs(dims, LayerShape(h, 0, 0), seq)["attention"]
        ms = t["layers"][(h, 0)]
        rows.append({"heads": h, "ms": ms, "attn_ms": ms - base, "gmacs": macs / 1e9})
        rows[-1]["gmac_per_s"] = macs / 1e6 / (ms - base) if ms > base else None
    return {"batch": batch, "clock": clock, "rows": rows}


def cpu_table(model, batch: int, seq: int, rounds: int) -> LatencyTable:
    """The default-grid table, timed with this thread's CPU time instead of wall clock."""
    dims = Structure.from_model(model).dims
    heads, ffn = default_grid(dims)
    stack = auto_stack(dims, batch, seq)
    shapes = [(h, w) for h in heads for w in ffn]
    t = time_layer_shapes(model, shapes, batch_size=batch, seq_len=seq, stack=stack, rounds=3, repeats=2, clock="cpu")
    rows = tuple(tuple(t["layers"][(h, w)] for w in ffn) for h in heads)
    return LatencyTable(
        dims=dims, batch_size=batch, seq_len=seq, heads=heads, ffn=ffn, layer_ms=rows, fixed_ms=t["fixed_ms"]
    )


def table_check(name: str, batch: int, seq: int, rounds: int, budgets: tuple[str, ...]) -> dict:
    """Predicted vs measured ms of real pruned models of ``name``, with wall-clock and with CPU-time tables.

    ``budgets`` are latency budgets (``"latency=0.5"``) under which selection picks from random scores.
    """
    model, _ = load_model(name)
    start = time.perf_counter()
    wall_table = measure_latency_table(model, batch_size=batch, seq_len=seq, cache=False, progress=False)
    measure_s = time.perf_counter() - start
    tables = {"wall": wall_table, "cpu": cpu_table(model, batch, seq, rounds)}
    dense = Structure.from_model(model)
    n = len(dense.layers)
    plans = {
        label: KeepPlan(tuple(tuple(range(h)) for h in heads), tuple(tuple(range(f)) for f in ffn), (True,) * n)
        for label, heads, ffn in scaled_models(dense.dims, n)
    }
    # What selection makes from random scores under a latency budget (default shape rounding).
    g = torch.Generator().manual_seed(0)
    scores = Importance(
        tuple(torch.rand(s.heads, generator=g) for s in dense.layers),
        tuple(torch.rand(s.ffn, generator=g) for s in dense.layers),
    )
    for text in budgets:
        plans[f"select {text}"] = select(
            dense, scores, Budget.parse(f"{text},batch={batch},seq={seq}"), latency_table=wall_table
        )
    pruned = {label: apply_plan(load_model(name)[0], plan).eval() for label, plan in plans.items()}
    times = {clock: {name: [] for name in pruned} for clock in tables}
    with torch.inference_mode():
        for r in range(rounds):  # interleaved, so load changes hit every model alike
            for name in list(pruned) if r % 2 == 0 else list(reversed(pruned)):
                inputs = make_bench_inputs(pruned[name], batch, seq, seed=0)
                fn = lambda m=pruned[name], x=inputs: m(**x)  # noqa: E731
                times["wall"][name] += time_callable(fn, warmup=1, repeats=3 if batch == 1 else 1)["times_ms"]
                for _ in range(3 if batch == 1 else 1):
                    c0 = time.thread_time()
                    fn()
                    times["cpu"][name].append((time.thread_time() - c0) * 1e3)
    rows = []
    for name, m in pruned.items():
        st = Structure.from_model(m)
        row = {"model": name, "shapes": [[s.heads, s.ffn] for s in st.layers]}
        for clock, table in tables.items():
            pred, meas = table.predict(st), float(np.median(times[clock][name]))
            row[clock] = {"predicted_ms": pred, "measured_ms": meas, "error": pred / meas - 1}
        rows.append(row)
    return {
        "batch": batch,
        "measure_s": measure_s,
        "tables": {k: t.to_dict() for k, t in tables.items()},
        "rows": rows,
    }


def markdown(report: dict, args) -> str:
    env = report["environment"]
    out = [
        harness.header("Layer shape vs latency (MiniLM-L6 layer: hidden 384, 12 heads x 32, FFN 1536)", args, env),
        f"Shape sweeps: one standalone layer of the built-in MiniLM's architecture at a time (the latency "
        f"table chains layers, see its section), {report['seq_len']} tokens per sequence, "
        f"{report['rounds']} interleaved rounds x 3 calls, medians. The machine is "
        "shared with other jobs, so the shape sweeps use this thread's CPU time (`clock=cpu`: leaves out time spent "
        "waiting for a core); the latency-table check reports both CPU time and wall clock.",
        "",
    ]
    for sweep in report["ffn"]:
        out += [
            f"## FFN width, no heads, batch {sweep['batch']} ({sweep['clock']} clock; "
            f"empty layer {sweep['empty_layer_ms']:.3f} ms)",
            "",
            "| ffn | ms | FFN ms | GMACs | GMAC/s | time / linear share |",
            "|---|---|---|---|---|---|",
        ]
        for r in sweep["rows"]:
            gps = "-" if r["gmac_per_s"] is None else f"{r['gmac_per_s']:.1f}"
            lin = "-" if r["ms_vs_linear"] is None else f"{r['ms_vs_linear']:.2f}"
            out.append(f"| {r['ffn']} | {r['ms']:.3f} | {r['ffn_ms']:.3f} | {r['gmacs']:.4f} | {gps} | {lin} |")
        out.append("")
    for sweep in report["rounding"]:
        out += [
            f"## Rounding: widths 512..1024 by largest power-of-2 divisor, batch {sweep['batch']} "
            f"({sweep['clock']} clock)",
            "",
            "Excess = time over a straight line fitted through all these widths (negative: faster than the trend).",
            "",
            "| divisor | widths | mean excess |",
            "|---|---|---|",
        ]
        for k, g in sweep["excess_by_pow2_divisor"].items():
            out.append(f"| {k} | {', '.join(map(str, g['widths']))} | {g['mean_excess']:+.1%} |")
        out.append("")
    for sweep in report["heads"]:
        out += [f"## Heads, no FFN, batch {sweep['batch']} ({sweep['clock']} clock)", ""]
        out += ["| heads | ms | attention ms | GMACs | GMAC/s |", "|---|---|---|---|---|"]
        for r in sweep["rows"]:
            gps = "-" if r["gmac_per_s"] is None else f"{r['gmac_per_s']:.1f}"
            out.append(f"| {r['heads']} | {r['ms']:.3f} | {r['attn_ms']:.3f} | {r['gmacs']:.4f} | {gps} |")
        out.append("")
    for check in report["table_check"]:
        out += [
            f"## Latency table vs real pruned MiniLM-L6, batch {check['batch']}",
            "",
            f"Default grid; the wall-clock table took {check['measure_s']:.0f} s to measure.",
            "",
            "| model | cpu: predicted | measured | error | wall: predicted | measured | error |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in check["rows"]:
            c, w = r["cpu"], r["wall"]
            out.append(
                f"| {r['model']} | {c['predicted_ms']:.2f} | {c['measured_ms']:.2f} | {c['error']:+.1%} "
                f"| {w['predicted_ms']:.2f} | {w['measured_ms']:.2f} | {w['error']:+.1%} |"
            )
        out.append("")
    if report.get("conclusion"):
        out += ["## Conclusion", "", report["conclusion"], ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__file__, __doc__, out="shape_latency.json")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared machine)")
    parser.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per sweep")
    parser.add_argument("--parts", default="ffn,rounding,heads,table", help="which parts to run")
    parser.add_argument("--clock", default="cpu", choices=("cpu", "wall"), help="clock of the shape sweeps")
    parser.add_argument("--conclusion", default=None, help="file whose text ends the markdown report")
    parser.add_argument("--render", action="store_true", help="only rewrite the markdown from the saved JSON")
    args = harness.start(parser, argv)
    if args.smoke:
        args.batches, args.seq, args.rounds = "1", 16, 1
    if args.render:
        report = json.loads(args.out.read_text())
        if args.conclusion:
            report["conclusion"] = Path(args.conclusion).read_text().strip()
        harness.write_results(args.out, report, markdown(report, args))
        return 0
    torch.set_num_threads(args.threads)
    model, _ = load_model(args.model)
    parts = set(args.parts.split(","))
    report = {
        "command": args.command,
        "seq_len": args.seq,
        "rounds": args.rounds,
        "ffn": [],
        "rounding": [],
        "heads": [],
        "table_check": [],
    }
    for batch in parse_int_list(args.batches):
        if "ffn" in parts:
            report["ffn"].append(ffn_sweep(model, batch, args.seq, args.rounds, args.clock))
        if "rounding" in parts:
            report["rounding"].append(rounding_sweep(model, batch, args.seq, args.rounds, args.clock))
        if "heads" in parts:
            report["heads"].append(heads_sweep(model, batch, args.seq, args.rounds, args.clock))
        if "table" in parts:
            budgets = ("latency=0.95",) if args.smoke else ("latency=0.5", "latency=0.3")
            report["table_check"].append(table_check(args.model, batch, args.seq, args.rounds, budgets))
    report["environment"] = harness.environment()
    if args.conclusion:
        report["conclusion"] = Path(args.conclusion).read_text().strip()
    md = markdown(report, args)
    harness.write_results(args.out, report, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
