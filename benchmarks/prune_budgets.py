"""One-shot pruning of the fine-tuned MiniLM-L6 at MACs budgets: OPTIN against its baselines.

For each task: the dense model (fine-tuned with the built-in recipe, cached) is evaluated on the
TEST split and timed; then every method prunes it at every budget, for each calibration seed
(importance scored once per method and seed, reused across budgets). Reported per
(method, budget): test accuracy (mean, std, min, max over seeds), achieved MACs and params
relative to dense, the method's time (scoring + selection + surgery + repair), and for the first
seed the wall-clock latency at batch 1 and 32 x 128 tokens against dense measured in the same
run (all models timed in alternating calls), with the speedup and its ratio to the MACs reduction.
Writes benchmarks/results/<out>.{json,md} (updated after every task).

    .venv/bin/python benchmarks/prune_budgets.py [--tasks rotten_tomatoes,bbc_news] \
        [--methods optin,fisher,magnitude,random,torch-pruning] [--budgets 0.8,0.6,0.5,0.4,0.3] [--seeds 0,1,2] \
        [--calibration 1024] [--no-repair-row] [--threads 1 --skip-latency] [--out benchmarks/results/NAME.json]

On a shared machine, run the accuracy part with ``--threads 1 --skip-latency`` (several at once if
you like), then time the recorded shapes alone on the quiet machine at the default thread count:

    .venv/bin/python benchmarks/prune_budgets.py --latency-from benchmarks/results/<out>.json
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import time
from pathlib import Path

import harness
import torch

from slimformer.bench import BenchConfig, bench_models
from slimformer.budget import Budget
from slimformer.cost import cost_of
from slimformer.evaluate import evaluate
from slimformer.models import load_model
from slimformer.static import PruneConfig, calibration_batches, prune, score
from slimformer.structure import Structure

BENCH = dict(batch_sizes=(1, 32), seq_len=128, warmup=2)
OUTSIDE = "torch-pruning"  # outside baseline, from benchmarks/torch_pruning_baseline.py


def timed(models: dict[str, torch.nn.Module], repeats: int) -> dict[str, dict[int, float]]:
    """Median ms per batch size of every model, all timed interleaved (dense included)."""
    results = bench_models(models, BenchConfig(**BENCH, repeats=repeats), progress=False)
    return {name: {r["batch_size"]: r["median_ms"] for r in res["results"]} for name, res in results.items()}


def outside_prune(model, value: float, batches, seed: int):
    """Torch-Pruning at a MACs ratio; returns (model, report) shaped like ours."""
    sys.path.insert(0, str(Path(__file__).parent))
    from torch_pruning_baseline import torch_pruning_prune

    t0 = time.perf_counter()
    pruned, info = torch_pruning_prune(model, value, batches, seed=seed, seq_len=BENCH["seq_len"])
    dense, small = (cost_of(Structure.from_model(m), BENCH["seq_len"]) for m in (model, pruned))
    return pruned, {
        "relative": {"macs": small.macs / dense.macs, "params": small.params / dense.params},
        "seconds": {"total": time.perf_counter() - t0},
        "layers": [{"heads": x["heads"], "ffn": x["ffn"]} for x in small.layers],
        "info": info,
    }


def run_task(name: str, args, log, save=None) -> dict:
    """Prune, evaluate (and time) one task; ``save(partial_result)`` runs after every seed."""
    folder, task, recipe = harness.finetuned(name, args)
    model, tokenizer = load_model(str(folder))
    test = task.split("test")
    dense_metrics = evaluate(model, tokenizer, test, max_length=recipe.max_length, progress=False)
    dense_cost = cost_of(Structure.from_model(model), BENCH["seq_len"])
    log.info("%s dense: acc %.4f", name, dense_metrics["accuracy"])

    ours = [m for m in args.methods if m != OUTSIDE]
    variants = [(m, True) for m in ours]
    if not args.no_repair_row and "optin" in ours:
        variants.append(("optin", False))
    runs, timed_models = [], {"dense": model}
    for seed in args.seeds:
        batches = calibration_batches(
            task.split("train"), tokenizer, size=args.calibration, seed=seed, max_length=recipe.max_length
        )
        results = []  # (method label, budget, model, report)
        for method, repair in variants:
            base_cfg = PruneConfig.from_dict({"method": method, "budget": "macs=0.5", "seed": seed})
            importance = score(model, base_cfg, batches, progress=False)
            for value in args.budgets:
                budget = Budget(kind="macs", value=value, relative=True, seq_len=BENCH["seq_len"])
                cfg = PruneConfig.from_dict({"method": method, "budget": budget, "seed": seed, "repair": repair})
                result = prune(model, cfg, batches, importance=importance, progress=False)
                label = method if repair else f"{method} (no repair)"
                results.append((label, value, result.model, result.report))
        if OUTSIDE in args.methods:
            for value in args.budgets:
                pruned, report = outside_prune(model, value, batches, seed)
                results.append((OUTSIDE, value, pruned, report))
        for label, value, pruned, report in results:
            metrics = evaluate(pruned, tokenizer, test, max_length=recipe.max_length, progress=False)
            run = {
                "method": label,
                "budget": value,
                "seed": seed,
                "accuracy": metrics["accuracy"],
                "f1_macro": metrics["f1_macro"],
                "macs_rel": report["relative"]["macs"],
                "params_rel": report["relative"]["params"],
                "seconds": report["seconds"]["total"],
                "layers": report["layers"],
            }
            if seed == args.seeds[0]:
                timed_models[f"{label}@{value}"] = pruned
            runs.append(run)
            log.info(
                "%s %s %s seed %d: acc %.4f, MACs %.3f, %.1fs",
                name, label, value, seed, run["accuracy"], run["macs_rel"], run["seconds"],
            )  # fmt: skip
        result = {
            "task": name,
            "content_hash": task.content_hash,
            "dense": {"accuracy": dense_metrics["accuracy"], "macs": dense_cost.macs, "params": dense_cost.params},
            "runs": runs,
            "summary": summarize(runs),
        }
        if save is not None:  # a long run killed later still leaves every finished seed on disk
            save(result)
    if not args.skip_latency:
        # All models of the first seed and dense in alternating calls: a speedup is a ratio of two
        # medians taken under the same machine conditions.
        log.info("%s: timing %d models interleaved", name, len(timed_models))
        add_latency(result, timed(timed_models, args.repeats), args.seeds[0])
    result["summary"] = summarize(runs)
    return result


def add_latency(result: dict, ms: dict[str, dict[int, float]], seed: int) -> None:
    """Write dense latency and each timed run's latency, speedup and speedup x MACs ratio into ``result``."""
    dense_ms = result["dense"]["latency_ms"] = ms["dense"]
    for run in result["runs"]:
        key = f"{run['method']}@{run['budget']}"
        if run["seed"] == seed and key in ms:
            run["latency_ms"] = ms[key]
            run["speedup"] = {b: dense_ms[b] / ms[key][b] for b in ms[key]}
            run["speedup_vs_macs"] = {b: run["speedup"][b] * run["macs_rel"] for b in ms[key]}


def latency_pass(path: Path, args, log) -> dict:
    """Time the first seed's pruned shapes of an earlier run, interleaved with dense, on this machine now.

    Latency depends only on the shapes (dense matrix products of the same sizes), so each pruned model
    is rebuilt from its recorded per-layer (heads, FFN width) by keeping that many leading units of the
    dense model: the same computation as the pruned model, without redoing the pruning.
    """
    import copy

    from slimformer.surgery import KeepPlan, apply_plan

    report = json.loads(path.read_text())
    for result in report["results"]:
        name = result["task"]
        args.model = report.get("model", args.model)
        folder, _, _ = harness.finetuned(name, args)
        model, _ = load_model(str(folder))
        seed = min(r["seed"] for r in result["runs"])
        models = {"dense": model}
        for run in result["runs"]:
            if run["seed"] != seed:
                continue
            layers = run["layers"]
            plan = KeepPlan(
                heads=tuple(tuple(range(x["heads"])) for x in layers),
                ffn=tuple(tuple(range(x["ffn"])) for x in layers),
                layers=(True,) * len(layers),
            )
            models[f"{run['method']}@{run['budget']}"] = apply_plan(copy.deepcopy(model), plan)
        log.info("%s: timing %d models interleaved", name, len(models))
        add_latency(result, timed(models, args.repeats), seed)
        result["summary"] = summarize(result["runs"])
    report["latency_environment"] = harness.environment()
    report["latency_command"] = args.command
    return report


def summarize(runs: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["method"], r["budget"]), []).append(r)
    out = []
    for (method, budget), rs in groups.items():
        accs = [r["accuracy"] for r in rs]
        timed_run = next((r for r in rs if "latency_ms" in r), {})
        out.append(
            {
                "method": method,
                "budget": budget,
                "seeds": len(rs),
                "acc_mean": statistics.mean(accs),
                "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "acc_min": min(accs),
                "acc_max": max(accs),
                "macs_rel": statistics.mean(r["macs_rel"] for r in rs),
                "params_rel": statistics.mean(r["params_rel"] for r in rs),
                "seconds": statistics.mean(r["seconds"] for r in rs),
                "speedup": timed_run.get("speedup"),
                "speedup_vs_macs": timed_run.get("speedup_vs_macs"),
            }
        )
    return out


def markdown(results: list[dict], args, env: dict, prune_env: dict) -> str:
    """``env``: where latency was measured; ``prune_env``: where pruning and evaluation ran."""
    lines = [
        harness.header("One-shot pruning of MiniLM-L6 at MACs budgets (no retraining)", args, prune_env),
        f"Test split; {args.calibration} calibration examples from train; calibration seeds "
        f"{sorted({r['seed'] for res in results for r in res['runs']})}. Pruning and "
        f"evaluation: {prune_env['torch_threads']} torch thread(s), {prune_env['datetime_utc']}; 'time' is the "
        "method's wall clock there (scoring, selection, surgery, repair) on a machine shared with other jobs.",
        "",
        f"MACs and latency at {BENCH['seq_len']} tokens; latency = median of {args.repeats} runs, dense and "
        f"every pruned model of the first seed timed in alternating calls, {env['processor']}, "
        f"{env['torch_threads']} threads, torch {env['torch']}, {env['datetime_utc']}. Speedup = dense / pruned "
        "wall clock; 'x MACs' = speedup x (pruned MACs / dense MACs), 1.0 is the physical limit.",
    ]
    for res in results:
        d = res["dense"]
        lines += [
            "",
            f"## {res['task']} (dense test accuracy {d['accuracy']:.4f}"
            + (f", {d['latency_ms'][1]:.1f} ms @b1, {d['latency_ms'][32]:.0f} ms @b32)" if "latency_ms" in d else ")"),
            "",
            "| method | MACs budget | test acc (mean ± std) | min-max | MACs | params | speedup b1 / b32 "
            "| x MACs b1 / b32 | time (s) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for s in sorted(res["summary"], key=lambda s: (-s["budget"], s["method"])):
            sp, ef = s["speedup"] or {}, s["speedup_vs_macs"] or {}
            lines.append(
                f"| {s['method']} | {s['budget']:.1f} | {s['acc_mean']:.4f} ± {s['acc_std']:.4f} | "
                f"{s['acc_min']:.4f}-{s['acc_max']:.4f} | {s['macs_rel']:.3f} | {s['params_rel']:.3f} | "
                f"{sp.get(1, float('nan')):.2f} / {sp.get(32, float('nan')):.2f} | "
                f"{ef.get(1, float('nan')):.2f} / {ef.get(32, float('nan')):.2f} | {s['seconds']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__file__, __doc__, out="prune_budgets.json")
    parser.add_argument("--tasks", default="rotten_tomatoes,bbc_news")
    parser.add_argument(
        "--methods",
        default="optin,fisher,magnitude,random",
        help=f"ours, plus '{OUTSIDE}' (Torch-Pruning, needs `pip install torch-pruning`)",
    )
    parser.add_argument("--budgets", default="0.8,0.6,0.5,0.4,0.3")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--calibration", type=int, default=1024)
    parser.add_argument("--no-repair-row", action="store_true", help="skip the optin-without-repair rows")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per batch size")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for pruning and evaluation")
    parser.add_argument("--skip-latency", action="store_true", help="no timing (run --latency-from later)")
    parser.add_argument(
        "--latency-from", type=Path, default=None, help="only time the shapes of this earlier run's JSON, in place"
    )
    args = harness.start(parser, argv)
    if args.smoke:
        args.methods, args.budgets, args.seeds, args.calibration, args.repeats = "optin,magnitude", "0.5", "0", 16, 2
    args.methods = args.methods.split(",")
    args.budgets = [float(x) for x in args.budgets.split(",")]
    args.seeds = [int(x) for x in args.seeds.split(",")]
    log = logging.getLogger("prune_budgets")

    if args.latency_from is not None:
        report = latency_pass(args.latency_from, args, log)
        env = report["latency_environment"]
        args.calibration, args.seeds = report.get("calibration", args.calibration), report.get("seeds", args.seeds)
        md = markdown(report["results"], args, env, report["environment"])
        harness.write_results(args.latency_from, report, md)
        print(md)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    t0, results = time.perf_counter(), []

    def save(done: list[dict]) -> str:
        env = harness.environment()
        report = {
            "command": args.command,
            "model": args.model,
            "calibration": args.calibration,
            "seeds": sorted({r["seed"] for res in done for r in res["runs"]}),
            "results": done,
            "environment": env,
            "wall_time_s": round(time.perf_counter() - t0, 1),
        }
        md = markdown(done, args, env, env)
        harness.write_results(args.out, report, md)
        return md

    for name in args.tasks.split(","):
        results.append(run_task(name, args, log, save=lambda partial: save([*results, partial])))
        md = save(results)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
