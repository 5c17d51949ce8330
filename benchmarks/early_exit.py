"""Slenderized multi-exit MiniLM-L6: exit only, slender only and slender + exit, against dense.

For each task the fine-tuned MiniLM-L6 (built-in recipe, cached) is the dense model and the teacher.

* exit only: an exit after every layer, backbone and exits trained jointly for ``--epochs`` with
  distillation from dense (final logits to every exit, hidden states layer by layer);
* slender only: OPTIN one-shot width reduction (heads + FFN neurons, every layer kept) to
  ``--budget`` MACs at the task's typical length, with least-squares repair, no training;
* slender + exit: the slender model trained with exits the same way (teacher: dense).

Exit thresholds (entropy rule) are picked on the VALIDATION split for an accuracy loss against
dense's validation accuracy (``--exit-loss`` for exit only, ``--slender-loss`` for slender +
exit; plus a curve of other losses); accuracy and average exit layer are then measured on the
TEST split with real batched inference (finished rows leave the batch). MACs are the cost model's
at the task's typical length (p90 of the training texts), the exit heads included, averaged over
the test exit distribution. Latency is wall clock on real test sentences, all models interleaved
in the same rounds (:func:`slimformer.bench.bench_models`): batch 1 cycles through
``--b1-examples`` test sentences (no padding), batch 32 through ``--b32-batches`` consecutive
test batches (padded to their longest row); mean ms per call is the headline (the expected
latency over real inputs), the median is reported too.

Targets (rotten_tomatoes, from the issue): exit alone >= 2x faster at batch 1 and >= 1.5x at batch
32 with <= 1.0 point accuracy loss; slender + exit >= 4x at batch 1 with <= 2.0 points loss.

    flock /tmp/slimformer-cpu.lock env OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 .venv/bin/python \\
        benchmarks/early_exit.py --tasks rotten_tomatoes,bbc_news --threads 2

Smoke check (seconds, tiny random model, numbers meaningless):
    .venv/bin/python benchmarks/early_exit.py --smoke --out /tmp/smoke/early_exit.json
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import harness
import torch

from slimformer.bench import BenchConfig, bench_models
from slimformer.budget import Budget
from slimformer.cost import cost_of
from slimformer.data import make_loader, token_length_stats, typical_seq_len
from slimformer.evaluate import metrics_from_logits
from slimformer.exits import (
    CalibrateConfig,
    ExitConfig,
    ExitRule,
    SlenderConfig,
    candidates,
    choose,
    collect_exits,
    early_exit,
    exit_cost_table,
    simulate,
    slenderize,
    sweep,
    training_batches,
)
from slimformer.models import load_model
from slimformer.pipeline import RECIPES
from slimformer.static import calibration_batches
from slimformer.structure import Structure

SHORT = {"rotten_tomatoes": "rotten", "bbc_news": "bbc"}
CURVE_LOSSES = (0.0, 0.005, 0.01, 0.02, 0.04)
log = logging.getLogger("early_exit_bench")


class RealInputs:
    """A callable for :func:`bench_models` that ignores the random inputs and runs real batches in turn."""

    def __init__(self, model, batches: list[dict], rule: ExitRule | None = None):
        self.model, self.batches, self.rule, self.calls = model, batches, rule, 0
        self.config = model.config

    def eval(self):
        self.model.eval()
        return self

    def __call__(self, **_):
        batch = self.batches[self.calls % len(self.batches)]
        self.calls += 1
        if self.rule is None:
            return self.model(**batch)
        return self.model(**batch, exit_rule=self.rule)


def batches_of(examples, tokenizer, batch_size: int, max_length: int, *, labels: bool) -> list[dict]:
    out = list(make_loader(examples, tokenizer, batch_size=batch_size, max_length=max_length))
    return out if labels else [{k: v for k, v in b.items() if k != "labels"} for b in out]


@torch.inference_mode()
def run_model(model, batches: list[dict], rule: ExitRule | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits (and exit layers for multi-exit models) from real batched inference."""
    logits, layers = [], []
    for b in batches:
        x = {k: v for k, v in b.items() if k != "labels"}
        out = model(**x) if rule is None else model(**x, exit_rule=rule)
        logits.append(out.logits.float())
        if getattr(out, "exit_layers", None) is not None:
            layers.append(out.exit_layers)
    return torch.cat(logits), (torch.cat(layers) if layers else None)


def exit_rows(label: str, model, val_b, test_b, dense_val_acc: float, main_loss: float, seq: int) -> dict:
    """Calibrate on validation for each loss of the curve; measure each chosen rule on test."""
    val_logits, val_labels = collect_exits(model, val_b, progress=False)
    test_logits, test_labels = collect_exits(model, test_b, progress=False)
    rules = [ExitRule(kind="none"), *candidates("entropy", val_logits, 200)]
    val_curve = sweep(model, rules, val_logits, val_labels, seq_len=seq)
    test_sweep = sweep(model, rules, test_logits, test_labels, seq_len=seq)  # every candidate, for the plot
    points = []
    for loss in sorted({*CURVE_LOSSES, main_loss}):
        cfg = CalibrateConfig(rule="entropy", target="accuracy_loss", value=loss)
        chosen = choose(val_curve, cfg, reference_accuracy=dense_val_acc)
        rule = ExitRule.from_dict(chosen["rule"])
        test_point = sweep(model, [rule], test_logits, test_labels, seq_len=seq)[0]
        points.append({"val_loss_target": loss, "rule": rule, "val": chosen, "test": test_point})
    main = next(p for p in points if p["val_loss_target"] == main_loss)
    model.set_rule(main["rule"])
    # the headline numbers come from real batched early exit, not from the replay
    logits, layers = run_model(model, test_b)
    metrics = metrics_from_logits(logits, test_labels, logits.shape[1])
    _, replay_layers = simulate(main["rule"], test_logits)
    table = exit_cost_table(model, seq)
    by_depth = torch.tensor(table["macs_by_depth"], dtype=torch.float64)
    full_logits, _ = run_model(model, test_b, ExitRule(kind="none"))
    return {
        "label": label,
        "rule": main["rule"],
        "test": {
            **metrics,
            "avg_exit_layer": float(layers.float().mean()),
            "exit_histogram": torch.bincount(layers - 1, minlength=model.num_layers).tolist(),
            "macs": float(by_depth[layers - 1].mean()),
            "replay_agreement": float((replay_layers == layers).float().mean()),
        },
        "full_depth_test": metrics_from_logits(full_logits, test_labels, full_logits.shape[1]),
        "val_full_depth_accuracy": val_curve[0]["accuracy"],
        "points": points,
        "test_sweep": [{k: r[k] for k in ("label", "accuracy", "avg_exit_layer", "macs_rel")} for r in test_sweep],
        "cost": table,
    }


def run_task(name: str, args) -> dict:
    folder, task, recipe = harness.finetuned(name, args)
    dense, tok = load_model(str(folder))
    length = recipe.max_length
    seq = min(length, typical_seq_len(token_length_stats(task.split("train"), tok)))
    train = task.split("train")[: args.limit_train] if args.limit_train else task.split("train")
    val = task.split("validation")[: args.limit_val] if args.limit_val else task.split("validation")
    test = task.split("test")[: args.limit_test] if args.limit_test else task.split("test")
    train_b = training_batches(train, tok, batch_size=recipe.batch_size, max_length=length, seed=0)
    val_b = batches_of(val, tok, 64, length, labels=True)
    test_b = batches_of(test, tok, 64, length, labels=True)
    config = ExitConfig(epochs=args.epochs, max_steps=args.max_steps)
    seconds: dict[str, float] = {}

    val_labels = torch.cat([b["labels"] for b in val_b])
    dense_val_acc = metrics_from_logits(run_model(dense, val_b)[0], val_labels, task.num_labels)["accuracy"]
    test_labels = torch.cat([b["labels"] for b in test_b])
    dense_test = metrics_from_logits(run_model(dense, test_b)[0], test_labels, task.num_labels)
    log.info(
        "%s: dense validation %.4f, test %.4f; typical length %d", name, dense_val_acc, dense_test["accuracy"], seq
    )

    t0 = time.perf_counter()
    exit_only = early_exit(dense, config, train_b, progress=args.progress)
    seconds["exit_training"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    cal = calibration_batches(train, tok, size=args.calibration_size, max_length=length)
    budget = Budget.parse(f"{args.budget},seq={seq}")
    thin = slenderize(dense, SlenderConfig(budget=budget, method=args.method), cal, progress=args.progress)
    seconds["slenderize"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    both = early_exit(thin.model, config, train_b, teacher=dense, progress=args.progress)
    seconds["slender_exit_training"] = round(time.perf_counter() - t0, 1)
    log.info("%s: trained (%s)", name, seconds)

    ex = exit_rows("exit", exit_only.model, val_b, test_b, dense_val_acc, args.exit_loss, seq)
    sx = exit_rows("slender + exit", both.model, val_b, test_b, dense_val_acc, args.slender_loss, seq)
    slender_test = metrics_from_logits(run_model(thin.model, test_b)[0], test_labels, task.num_labels)

    # --- timing: every model and every curve point in the same interleaved rounds, on real test text
    rng = random.Random(0)
    singles = batches_of(rng.sample(test, min(args.b1_examples, len(test))), tok, 1, length, labels=False)
    full = (len(test) // 32) * 32
    b32 = batches_of(test[: min(full, 32 * args.b32_batches)], tok, 32, length, labels=False)
    models_b1 = {"dense": RealInputs(dense, singles), "slender": RealInputs(thin.model, singles)}
    models_b32 = {"dense": RealInputs(dense, b32), "slender": RealInputs(thin.model, b32)}
    for res, model in ((ex, exit_only.model), (sx, both.model)):
        for p in res["points"]:
            key = f"{res['label']} @ {p['val_loss_target']}"
            models_b1[key] = RealInputs(model, singles, p["rule"])
            models_b32[key] = RealInputs(model, b32, p["rule"])
    bench = {}
    for batch, models, inputs in ((1, models_b1, singles), (32, models_b32, b32)):
        cfg = BenchConfig(batch_sizes=(batch,), repeats=len(inputs) * args.passes, warmup=2,
                          threads=args.threads)  # fmt: skip
        result = bench_models(models, cfg, progress=args.progress)
        bench[batch] = {k: v["results"][0] for k, v in result.items()}
        env = result["dense"]["environment"]

    def timing(key: str) -> dict:
        out = {}
        for b in (1, 32):
            r, d = bench[b][key], bench[b]["dense"]
            out[f"b{b}"] = {
                "mean_ms": r["mean_ms"],
                "median_ms": r["median_ms"],
                "iqr_ms": r["iqr_ms"],
                "speedup_mean": d["mean_ms"] / r["mean_ms"],
                "speedup_median": d["median_ms"] / r["median_ms"],
            }
        return out

    dense_cost = cost_of(Structure.from_model(dense), seq)
    dense_macs, depth = dense_cost.macs, float(len(dense_cost.layers))
    slender_cost = cost_of(Structure.from_model(thin.model), seq)
    rows = [
        {"name": "dense", "test": dense_test, "macs": dense_macs, "params": dense_cost.params,
         "avg_exit_layer": depth, "timing": timing("dense")},
        {"name": f"slender ({args.method} {budget}, no training)", "test": slender_test, "macs": slender_cost.macs,
         "params": slender_cost.params, "avg_exit_layer": depth, "timing": timing("slender")},
    ]  # fmt: skip
    for res in (ex, sx):
        main = next(p for p in res["points"] if p["rule"] == res["rule"])
        key = f"{res['label']} @ {main['val_loss_target']}"
        rows.append({"name": f"{res['label']} ({res['rule']})", "test": res["test"], "macs": res["test"]["macs"],
                     "params": res["cost"]["params"], "avg_exit_layer": res["test"]["avg_exit_layer"],
                     "timing": timing(key)})  # fmt: skip
        for p in res["points"]:
            p["timing"] = timing(f"{res['label']} @ {p['val_loss_target']}")
            p["rule"] = str(p["rule"])
        res["rule"] = str(res["rule"])
    for r in rows:
        r["accuracy_delta_points"] = 100 * (r["test"]["accuracy"] - dense_test["accuracy"])
        r["macs_rel"] = r["macs"] / dense_macs
    by = {r["name"].split(" (")[0]: r for r in rows}
    targets = {
        "exit_b1_2x": by["exit"]["timing"]["b1"]["speedup_mean"] >= 2.0,
        "exit_b32_1.5x": by["exit"]["timing"]["b32"]["speedup_mean"] >= 1.5,
        "exit_loss_le_1pt": by["exit"]["accuracy_delta_points"] >= -1.0,
        "slender_exit_b1_4x": by["slender + exit"]["timing"]["b1"]["speedup_mean"] >= 4.0,
        "slender_exit_loss_le_2pt": by["slender + exit"]["accuracy_delta_points"] >= -2.0,
    }
    return {
        "task": name,
        "content_hash": task.content_hash,
        "seq_len": seq,
        "max_length": length,
        "sizes": {
            "train": len(train),
            "validation": len(val),
            "test": len(test),
            "b1_sentences": len(singles),
            "b32_batches": len(b32),
        },  # fmt: skip
        "dense_validation_accuracy": dense_val_acc,
        "rows": rows,
        "exit": ex,
        "slender_exit": sx,
        "slenderize": {k: thin.report[k] for k in ("budget", "relative", "layers", "seconds")},
        "training": {"exit": exit_only.report, "slender_exit": both.report},
        "seconds": seconds,
        "targets": targets,
        "environment": env,
    }


def markdown(results: list[dict], args) -> str:
    env = results[0]["environment"]
    lines = [
        harness.header("Slenderized multi-exit MiniLM-L6: exit only, slender only, slender + exit vs dense", args, env),
        f"Thresholds (entropy rule) picked on the validation split; accuracy, average exit layer and MACs on the TEST "
        f"split with real batched early exit. MACs: cost model at the task's typical length (exit heads included, "
        f"averaged over the test exits). Latency: wall clock on real test sentences, every model interleaved in the "
        f"same rounds; mean ms per call (x = dense mean / model mean; medians in the JSON). Batch 1: one sentence per "
        f"call, no padding; batch 32: consecutive test batches padded to their longest row. Training: {args.epochs} "
        f"epoch(s) {'(max ' + str(args.max_steps) + ' steps) ' if args.max_steps else ''}of joint exit training "
        f"with distillation from dense; slender = {args.method} one-shot (heads + FFN neurons, all layers kept, "
        "hidden size unchanged).",
    ]
    if args.limit_train or args.limit_val or args.limit_test:
        lines += [
            "",
            f"**Reduced run**: train {args.limit_train}, validation {args.limit_val}, test {args.limit_test}.",
        ]
    for res in results:
        n = res["sizes"]
        lines += [
            "",
            f"## {res['task']} ({n['train']} train / {n['validation']} validation / {n['test']} test; typical length "
            f"{res['seq_len']} tokens; timing on {n['b1_sentences']} sentences and {n['b32_batches']} batches of 32)",
            "",
            "| model | test acc | Δ pts | avg exit layer | MACs | MACs rel | params | ms @b1 | x @b1 | ms @b32 "
            "| x @b32 |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in res["rows"]:
            t1, t32 = r["timing"]["b1"], r["timing"]["b32"]
            lines.append(
                f"| {r['name']} | {r['test']['accuracy']:.4f} | {r['accuracy_delta_points']:+.2f} | "
                f"{r['avg_exit_layer']:.2f} | {r['macs'] / 1e6:.1f}M | {r['macs_rel']:.3f} | "
                f"{r['params'] / 1e6:.2f}M | "
                f"{t1['mean_ms']:.2f} | {t1['speedup_mean']:.2f} | {t32['mean_ms']:.1f} | {t32['speedup_mean']:.2f} |"
            )
        for key in ("exit", "slender_exit"):
            e = res[key]
            lines.append(
                f"\n{e['label']}: full depth (rule none) test accuracy {e['full_depth_test']['accuracy']:.4f}; "
                f"test exit histogram (layers 1..6) {e['test']['exit_histogram']}; replayed decisions agree with "
                f"real batched inference on {e['test']['replay_agreement']:.1%} of test rows."
            )
        lines += [
            "",
            "Curve over thresholds (validation accuracy-loss target vs dense -> rule; test measurements):",
            "",
            "| model | val loss target | rule | test acc | Δ pts | avg exit layer | MACs rel | ms @b1 | x @b1 | "
            "ms @b32 | x @b32 |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        dense_acc = res["rows"][0]["test"]["accuracy"]
        for key in ("exit", "slender_exit"):
            for p in res[key]["points"]:
                t, t1, t32 = p["test"], p["timing"]["b1"], p["timing"]["b32"]
                lines.append(
                    f"| {res[key]['label']} | {p['val_loss_target']:.3f} | {p['rule']} | {t['accuracy']:.4f} | "
                    f"{100 * (t['accuracy'] - dense_acc):+.2f} | {t['avg_exit_layer']:.2f} | "
                    f"{t['macs'] / res['rows'][0]['macs']:.3f} | {t1['mean_ms']:.2f} | {t1['speedup_mean']:.2f} | "
                    f"{t32['mean_ms']:.1f} | {t32['speedup_mean']:.2f} |"
                )
        lines += ["", "Targets: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in res["targets"].items())]
        lines += ["", f"Time: {res['seconds']}"]
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(len(results), 2, figsize=(11, 4 * len(results)), squeeze=False)
    for row, res in zip(axes, results, strict=True):
        dense = res["rows"][0]
        for key, color in (("exit", "tab:blue"), ("slender_exit", "tab:orange")):
            e = res[key]
            pts = sorted(e["test_sweep"], key=lambda r: r["avg_exit_layer"])
            row[0].plot([p["avg_exit_layer"] for p in pts], [p["accuracy"] for p in pts], color=color, label=e["label"])
            ms = [p["timing"]["b1"]["mean_ms"] for p in e["points"]]
            row[1].plot(ms, [p["test"]["accuracy"] for p in e["points"]], "o-", color=color, label=e["label"])
        row[0].axhline(dense["test"]["accuracy"], color="gray", ls="--", label="dense")
        row[1].plot([dense["timing"]["b1"]["mean_ms"]], [dense["test"]["accuracy"]], "ks", label="dense")
        row[0].set(
            xlabel="average exit layer (test)", ylabel="test accuracy", title=f"{res['task']}: accuracy vs depth"
        )
        row[1].set(
            xlabel="ms per sentence at batch 1", ylabel="test accuracy", title=f"{res['task']}: accuracy vs latency"
        )
        for ax in row:
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__file__, __doc__, out="early_exit.json")
    parser.add_argument("--tasks", default="rotten_tomatoes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=None, help="smoke runs: training steps per model")
    parser.add_argument("--budget", default="macs=0.3", help="slender budget (seq= is set to the typical length)")
    parser.add_argument("--method", default="optin", choices=("optin", "fisher"))
    parser.add_argument("--calibration-size", type=int, default=1024, help="examples scored when slenderizing")
    parser.add_argument("--exit-loss", type=float, default=0.005, help="validation loss target of exit only")
    parser.add_argument("--slender-loss", type=float, default=0.01, help="validation loss target of slender + exit")
    parser.add_argument("--b1-examples", type=int, default=200, help="test sentences timed at batch 1")
    parser.add_argument("--b32-batches", type=int, default=12, help="test batches of 32 timed")
    parser.add_argument("--passes", type=int, default=1, help="timed passes over the timing inputs")
    parser.add_argument("--limit-train", type=int, default=None)
    parser.add_argument("--limit-val", type=int, default=None)
    parser.add_argument("--limit-test", type=int, default=None)
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    args = harness.start(parser, argv)
    if args.smoke:
        args.max_steps, args.calibration_size, args.b1_examples, args.b32_batches = 2, 16, 4, 1
    for name in args.tasks.split(","):
        if name not in RECIPES:
            parser.error(f"unknown task {name!r}; choose from {', '.join(RECIPES)}")
    torch.set_num_threads(args.threads)
    for name in args.tasks.split(","):
        t0 = time.perf_counter()
        results = [run_task(name, args)]
        report = {
            "command": args.command,
            "results": results,
            "environment": harness.environment(),
            "wall_time_s": round(time.perf_counter() - t0, 1),
        }
        path = harness.sibling(args.out, SHORT.get(name, name))
        md = markdown(results, args)
        harness.write_results(path, report, md)
        plot(results, path.with_suffix(".png"))
        print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
