"""Where batch-1 time goes: matrix products (which pruning shrinks) against everything else.

Pruning removes MACs, and MACs are matrix products. At batch 1 x 128 tokens MiniLM-L6 also spends a
fixed time per layer on work pruning cannot remove (LayerNorms, residual adds, bias copies, the
Python and dispatch cost of each module call), which caps the batch-1 speedup below the MACs ratio.
This script profiles the dense fine-tuned model and OPTIN-shaped pruned models (shapes from
``benchmarks/results/prune_budgets_rotten.json``, first seed) with ``torch.profiler`` and splits each
forward into time in ``aten::addmm``/``aten::mm``/attention kernels and the rest, then predicts the
speedup ceiling that this fixed part leaves. Writes benchmarks/results/batch1_overhead.{json,md}.

    .venv/bin/python benchmarks/batch1_overhead.py [--calls 30]
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import harness
import torch
from torch.profiler import ProfilerActivity, profile

from slimformer.bench import make_bench_inputs
from slimformer.cost import cost_of
from slimformer.models import load_model
from slimformer.structure import Structure
from slimformer.surgery import KeepPlan, apply_plan

MATMUL_OPS = {"aten::addmm", "aten::mm", "aten::bmm", "aten::_scaled_dot_product_flash_attention_for_cpu"}


def profile_share(model, inputs: dict, calls: int) -> tuple[float, dict]:
    """Share of the forward's op time spent in matrix-product kernels, and the largest other ops (ms)."""
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            model(**inputs)
    per_op = {e.key: e.self_cpu_time_total / calls / 1e3 for e in prof.key_averages()}
    total = sum(per_op.values())
    matmul = sum(v for k, v in per_op.items() if k in MATMUL_OPS)
    top = sorted(((k, v) for k, v in per_op.items() if k not in MATMUL_OPS), key=lambda kv: -kv[1])[:6]
    return matmul / total, dict(top)


def interleaved_walls(models: list, inputs: dict, calls: int) -> list[float]:
    """Median wall ms of each model, timed in alternating calls so drift hits all alike."""
    times: list[list[float]] = [[] for _ in models]
    with torch.inference_mode():
        for m in models:
            for _ in range(3):
                m(**inputs)
        for _ in range(calls):
            for i, m in enumerate(models):
                t0 = time.perf_counter()
                m(**inputs)
                times[i].append((time.perf_counter() - t0) * 1e3)
    return [sorted(t)[len(t) // 2] for t in times]


def smoke_runs(model) -> list[dict]:
    """Stand-ins for prune_budgets' OPTIN runs on the smoke model: half the heads and neurons per layer."""
    layers = [{"heads": max(1, x.heads // 2), "ffn": max(1, x.ffn // 2)} for x in Structure.from_model(model).layers]
    return [{"method": "optin", "seed": 0, "budget": 0.5, "layers": layers}]


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__file__, __doc__, out="batch1_overhead.json")
    parser.add_argument("--calls", type=int, default=60)
    parser.add_argument("--shapes", type=Path, default=harness.RESULTS / "prune_budgets_rotten.json")
    args = harness.start(parser, argv)
    if args.smoke:
        args.calls = 3

    folder, _, _ = harness.finetuned("rotten_tomatoes", args)
    dense, _ = load_model(str(folder))
    runs = smoke_runs(dense) if args.smoke else json.loads(args.shapes.read_text())["results"][0]["runs"]
    seed = min(r["seed"] for r in runs)
    rows = []
    dense_macs = cost_of(Structure.from_model(dense), 128).macs
    models = [("dense", 1.0, dense)]
    for r in runs:
        if r["method"] == "optin" and r["seed"] == seed:
            plan = KeepPlan(
                heads=tuple(tuple(range(x["heads"])) for x in r["layers"]),
                ffn=tuple(tuple(range(x["ffn"])) for x in r["layers"]),
                layers=(True,) * len(r["layers"]),
            )
            models.append((f"optin {r['budget']}", r["budget"], apply_plan(copy.deepcopy(dense), plan)))
    inputs = make_bench_inputs(dense, 1, 128, 0)
    walls = interleaved_walls([m.eval() for _, _, m in models], inputs, args.calls)
    for (name, _, model), wall in zip(models, walls, strict=True):
        share, top = profile_share(model, inputs, min(10, args.calls))
        b = {"name": name, "wall_ms": wall, "matmul_ms": wall * share, "other_ms": wall * (1 - share)}
        b["top_other"] = top
        b["macs_rel"] = cost_of(Structure.from_model(model), 128).macs / dense_macs
        rows.append(b)
        print(f"{name}: wall {b['wall_ms']:.2f} ms, matmul {b['matmul_ms']:.2f}, other {b['other_ms']:.2f}", flush=True)
    d = rows[0]
    for r in rows:
        r["speedup"] = d["wall_ms"] / r["wall_ms"]
        r["speedup_x_macs"] = r["speedup"] * r["macs_rel"]
        # If matrix products shrank exactly with MACs and the rest stayed as in dense:
        r["ceiling_x_macs"] = d["wall_ms"] / (d["other_ms"] + d["matmul_ms"] * r["macs_rel"]) * r["macs_rel"]
    env = harness.environment()
    report = {"rows": rows, "environment": env, "command": args.command}
    lines = [
        harness.header("Batch-1 time: matrix products vs the rest (MiniLM-L6, 1 x 128 tokens)", args, env),
        f"Median wall clock of {args.calls} calls per model, all models in alternating calls; matmul = wall x the "
        "share of profiled op time in addmm/mm/bmm and the SDPA kernel; other = the rest. "
        "'ceiling' = the speedup x MACs ratio reachable if matrix products shrank exactly "
        "with MACs and everything else stayed as in dense.",
        "",
        "| model | MACs | wall ms | matmul ms | other ms | speedup | x MACs | ceiling x MACs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['macs_rel']:.2f} | {r['wall_ms']:.2f} | {r['matmul_ms']:.2f} | {r['other_ms']:.2f} | "
            f"{r['speedup']:.2f} | {r['speedup_x_macs']:.2f} | {r['ceiling_x_macs']:.2f} |"
        )
    lines += ["", "Largest non-matmul ops in dense (ms per forward): "
              + ", ".join(f"{k} {v:.2f}" for k, v in d["top_other"].items())]  # fmt: skip
    harness.write_results(args.out, report, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
