"""Differentiable slimming: train once per task, extract at 10 encoder-memory budgets, compare with OPTIN.

For each task: the dense fine-tuned model (built-in recipe, cached) is slimmed once (the run folder
is reused when finished, resumed when interrupted); then models are extracted from that one run at
each budget (a fraction of the dense encoder's fp32 bytes; embeddings and classifier unchanged) and
OPTIN one-shot pruning with least-squares repair is run at the same byte limits (an absolute memory
budget = non-encoder bytes + fraction x encoder bytes). Every model is scored on the TEST split;
params and bytes come from the cost model; latency (batch 1 and 32, ``--seq-len`` tokens) is the
median over rounds in which dense and every model are called in turn (``bench_models``). The whole
model with vocabulary pruning (tokens of the training texts seen >= min_count times) is extracted
at ``--whole`` of dense fp32 bytes. Writes benchmarks/results/slim_curve_<task>.{json,md,png}.

    flock /tmp/slimformer-cpu.lock env OMP_NUM_THREADS=2 .venv/bin/python benchmarks/slim_curve.py \
        --tasks rotten_tomatoes [--run DIR] [--threads 2] [--calibration 512]
    # smoke (seconds, tiny random model): --smoke --out /tmp/smoke/slim_curve.json
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import harness
import torch

from slimformer.bench import BenchConfig, bench_models
from slimformer.budget import Budget
from slimformer.evaluate import evaluate
from slimformer.models import load_model
from slimformer.pipeline import cache_dir
from slimformer.slim import SlimConfig, extract, load_run, slim
from slimformer.slim.gates import unit_costs
from slimformer.slim.run import is_run_folder
from slimformer.slim.vocab import unk_report
from slimformer.static import OptinConfig, calibration_batches, prune, score
from slimformer.structure import Structure

SHORT = {"rotten_tomatoes": "rotten", "bbc_news": "bbc"}
DEFAULT_BUDGETS = "0.9,0.8,0.7,0.6,0.5,0.45,0.4,0.3,0.25,0.2"


def run_task(name: str, args, log) -> dict:
    folder, task, recipe = harness.finetuned(name, args)
    dense, tok = load_model(str(folder))
    test = task.split("test")[: args.limit] if args.limit else task.split("test")
    validation = task.split("validation")[: args.limit] if args.limit else task.split("validation")
    evaluate_kw = dict(max_length=recipe.max_length, progress=False)

    # --- train once (or reuse / resume the run)
    run = Path(args.run) if args.run else cache_dir() / "slim" / f"{name}-v1"
    t0 = time.perf_counter()
    if is_run_folder(run):
        slimmed, _ = load_run(run)
        log.info("%s: reusing finished run %s", name, run)
    else:
        config = SlimConfig(max_length=recipe.max_length, eval_budgets=(0.5, 0.3), max_steps=args.max_steps)
        student, _ = load_model(str(folder))
        slimmed = slim(student, config, task, tokenizer=tok, teacher=dense, out_dir=run, resume=True)
    train_report = slimmed.info.get("report", {})
    log.info(
        "%s: run ready (%.0fs here; training wall time %s s)",
        name,
        time.perf_counter() - t0,
        train_report.get("wall_time_s"),
    )

    dense_acc = evaluate(dense, tok, test, **evaluate_kw)["accuracy"]
    dense_structure = Structure.from_model(dense)
    mem = Budget(kind="memory", value=1.0, relative=True)
    costs = unit_costs(dense_structure, mem)
    rows, models = [], {"dense": dense}
    rows.append(_row("dense", 1.0, dense, dense_acc, dense_structure, costs))

    # --- OPTIN importance once (scored on train calibration data), reused across budgets
    batches = calibration_batches(
        task.split("train"), tok, size=args.calibration, seed=args.seed, max_length=recipe.max_length
    )
    importance = None if args.skip_optin else score(dense, OptinConfig(budget=mem), batches, progress=False)

    for f in args.budgets:
        t = time.perf_counter()
        result = extract(slimmed, Budget(kind="memory", value=f, relative=True), of="encoder")
        seconds = time.perf_counter() - t
        acc = evaluate(result.model, tok, test, **evaluate_kw)["accuracy"]
        row = _row("slim", f, result.model, acc, dense_structure, costs)
        row["extract_s"] = round(seconds, 3)
        rows.append(row)
        models[f"slim@{f}"] = result.model
        log.info("%s slim @%.2f: acc %.4f, %.1f MB, extract %.2fs", name, f, acc, row["bytes_fp32"] / 1e6, seconds)
        if importance is not None:
            limit = costs.rest + f * costs.encoder  # the same bytes as the slim model may use
            cfg = OptinConfig(budget=Budget(kind="memory", value=limit, relative=False), repair=True)
            pruned = prune(dense, cfg, batches, importance=importance, progress=False)
            acc = evaluate(pruned.model, tok, test, **evaluate_kw)["accuracy"]
            row = _row("optin+repair", f, pruned.model, acc, dense_structure, costs)
            row["prune_s"] = pruned.report["seconds"]["total"]
            rows.append(row)
            models[f"optin@{f}"] = pruned.model
            log.info("%s optin @%.2f: acc %.4f", name, f, acc)

    # --- the whole model under a memory budget, with vocabulary pruning
    texts = [e.text for e in task.split("train")]
    for min_count in args.min_counts:
        t = time.perf_counter()
        result = extract(
            slimmed, Budget(kind="memory", value=args.whole, relative=True), prune_vocab=True, vocab_texts=texts,
            min_count=min_count, tokenizer=tok,
        )  # fmt: skip
        seconds = time.perf_counter() - t
        acc = evaluate(result.model, result.tokenizer, test, **evaluate_kw)["accuracy"]
        row = _row(f"slim+vocab(min_count={min_count})", args.whole, result.model, acc, dense_structure, costs)
        # the variant is chosen on validation, never on test
        val = evaluate(result.model, result.tokenizer, validation, **evaluate_kw)["accuracy"]
        row.update(
            validation_accuracy=val,
            extract_s=round(seconds, 3), of="model", vocab=result.report["vocab"],
            unk=unk_report(tok, result.tokenizer, [e.text for e in test], max_length=recipe.max_length),
        )  # fmt: skip
        rows.append(row)
        models[f"vocab{min_count}"] = result.model
        log.info(
            "%s whole @%.2f min_count %d: acc %.4f, %.1f%% bytes",
            name,
            args.whole,
            min_count,
            acc,
            100 * row["bytes_rel"],
        )

    env = harness.environment()
    if not args.skip_latency:
        log.info("%s: timing %d models interleaved", name, len(models))
        cfg = BenchConfig(batch_sizes=(1, 32), seq_len=args.seq_len, repeats=args.repeats, warmup=2)
        timed = bench_models(models, cfg, progress=False)
        env = {**env, **timed["dense"]["environment"]}
        keys = list(models)
        for row, key in zip(rows, keys, strict=True):
            ms = {r["batch_size"]: r["median_ms"] for r in timed[key]["results"]}
            row["latency_ms"] = ms
        base = rows[0]["latency_ms"]
        for row in rows:
            row["speedup"] = {b: base[b] / row["latency_ms"][b] for b in base}
    return {
        "task": name,
        "run": str(run),
        "train": train_report,
        "dense_accuracy": dense_acc,
        "test_examples": len(test),
        "rows": rows,
        "targets": targets(rows, dense_acc, args),
        "environment": env,
    }


def _row(method: str, budget: float, model, acc: float, dense_structure: Structure, costs) -> dict:
    from slimformer.cost import cost_of

    st = Structure.from_model(model)
    c, d = cost_of(st), cost_of(dense_structure)
    encoder_bytes = 4 * c.encoder_params
    return {
        "method": method,
        "budget": budget,
        "of": "encoder",
        "accuracy": acc,
        "params": c.params,
        "bytes_fp32": c.bytes_fp32,
        "bytes_rel": c.bytes_fp32 / d.bytes_fp32,
        "encoder_rel": encoder_bytes / costs.encoder,
        "layers": [(s.heads, s.ffn) for s in st.layers],
    }


def targets(rows: list[dict], dense: float, args) -> dict:
    """The issue's targets, checked on this run's numbers."""
    slim_at = {r["budget"]: r["accuracy"] for r in rows if r["method"] == "slim"}
    optin_at = {r["budget"]: r["accuracy"] for r in rows if r["method"] == "optin+repair"}
    whole = [r for r in rows if r["method"].startswith("slim+vocab")]
    out = {}
    if 0.5 in slim_at:
        out["<=0.5 pt below dense at 50%"] = {
            "drop_pt": 100 * (dense - slim_at[0.5]),
            "met": dense - slim_at[0.5] <= 0.005,
        }
    if 0.3 in slim_at:
        out["<=1.5 pt below dense at 30%"] = {
            "drop_pt": 100 * (dense - slim_at[0.3]),
            "met": dense - slim_at[0.3] <= 0.015,
        }
    low = [f for f in slim_at if f <= 0.6 and f in optin_at]
    if low:
        out[">= OPTIN+repair at every budget <= 60%"] = {
            "margins_pt": ", ".join(f"{f:g}: {100 * (slim_at[f] - optin_at[f]):+.2f}" for f in low),
            "met": all(slim_at[f] >= optin_at[f] for f in low),
        }
    if whole:
        best = max(whole, key=lambda r: r["validation_accuracy"])  # chosen on validation
        out["whole model <=35% bytes within 1.0 pt"] = {
            "bytes_rel": best["bytes_rel"], "drop_pt": 100 * (dense - best["accuracy"]),
            "variant (best on validation)": best["method"],
            "met": best["bytes_rel"] <= 0.35 + 1e-9 and dense - best["accuracy"] <= 0.01,
        }  # fmt: skip
    ext = [r["extract_s"] for r in rows if "extract_s" in r]
    if ext:
        out["extraction <= 5 s per budget"] = {"max_s": max(ext), "met": max(ext) <= 5.0}
    return out


def markdown(results: list[dict], args) -> str:
    title = "Differentiable slimming: one training run, models at 10 budgets (vs OPTIN one-shot + repair)"
    lines = [harness.header(title, args, results[0]["environment"])]
    for res in results:
        env, tr = res["environment"], res["train"]
        lines += [
            f"## {res['task']} (dense test accuracy {res['dense_accuracy']:.4f}, {res['test_examples']} test examples)",
            "",
            f"One slimming run: {tr.get('global_step')} steps, {tr.get('wall_time_s')} s wall clock "
            f"(run folder `{res['run']}`). Budget = fraction of the dense encoder's fp32 bytes (embeddings and "
            "classifier unchanged; OPTIN gets the same byte limit). Latency: median ms at batch 1 / 32 x "
            f"{args.seq_len} tokens, all models interleaved with dense in the same rounds; {env['processor']}, "
            f"{env['torch_threads']} threads, {env['datetime_utc']}.",
            "",
            "| method | budget | test acc | vs dense (pt) | params | MB fp32 | % dense bytes | encoder % "
            "| ms b1 | ms b32 | x b32 | extract s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in res["rows"]:
            ms = r.get("latency_ms") or {}
            sp = r.get("speedup") or {}
            lines.append(
                f"| {r['method']} | {r['budget']:.2f} | {r['accuracy']:.4f} "
                f"| {100 * (r['accuracy'] - res['dense_accuracy']):+.2f} | {r['params'] / 1e6:.2f}M "
                f"| {r['bytes_fp32'] / 1e6:.1f} | {100 * r['bytes_rel']:.1f} | {100 * r['encoder_rel']:.1f} "
                f"| {ms.get(1, float('nan')):.2f} | {ms.get(32, float('nan')):.1f} | {sp.get(32, float('nan')):.2f} "
                f"| {r.get('extract_s', '-')} |"
            )
        whole = [r for r in res["rows"] if "unk" in r]
        if whole:
            lines += ["", "Vocabulary pruning (test tokens that fell back to [UNK]):", ""]
            for r in whole:
                v, u = r["vocab"], r["unk"]
                lines.append(
                    f"- {r['method']}: vocabulary {v['vocab_before']} -> {v['vocab_after']} tokens, "
                    f"validation accuracy {r['validation_accuracy']:.4f}; "
                    f"{u['unk_added']} of {u['tokens']} test tokens ({100 * u['unk_added'] / u['tokens']:.2f}%) "
                    "became [UNK], "
                    f"{u['texts_changed']} of {u['texts']} test texts tokenized differently"
                )
        lines += ["", "Targets:", ""]
        for k, v in res["targets"].items():
            detail = ", ".join(
                f"{a}={b:.3f}" if isinstance(b, float) else f"{a}={b}" for a, b in v.items() if a != "met"
            )
            lines.append(f"- {k}: {'met' if v['met'] else 'MISSED'} ({detail})")
        lines.append("")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for method, style in (("slim", "o-"), ("optin+repair", "s--")):
        rs = [r for r in res["rows"] if r["method"] == method]
        ax.plot([100 * r["budget"] for r in rs], [100 * r["accuracy"] for r in rs], style, label=method)
    ax.axhline(100 * res["dense_accuracy"], color="gray", linestyle=":", label="dense")
    ax.set_xlabel("budget (% of dense encoder fp32 bytes)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{res['task']}: one slimming run vs OPTIN per budget")
    ax.invert_xaxis()
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__file__, __doc__, out="slim_curve.json")
    parser.add_argument("--tasks", default="rotten_tomatoes")
    parser.add_argument("--run", default=None, help="run folder (one task only); default: the cache")
    parser.add_argument("--budgets", default=DEFAULT_BUDGETS, help="fractions of dense encoder memory")
    parser.add_argument("--whole", type=float, default=0.35, help="whole-model budget (fraction of dense fp32 bytes)")
    parser.add_argument(
        "--min-counts", default="1,2,3", help="vocabulary pruning variants (keep tokens seen >= N times)"
    )
    parser.add_argument("--calibration", type=int, default=512, help="OPTIN calibration examples (train split)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per sequence when timing")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--limit", type=int, default=None, help="score only the first N test examples (smoke)")
    parser.add_argument("--max-steps", type=int, default=None, help="training steps when a run is trained (smoke)")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-optin", action="store_true")
    args = harness.start(parser, argv)
    if args.smoke:
        args.budgets, args.min_counts, args.calibration, args.max_steps = "0.5,0.3", "1", 16, 2
        args.repeats, args.seq_len = 2, 16
    args.budgets = [float(x) for x in args.budgets.split(",")]
    args.min_counts = [int(x) for x in args.min_counts.split(",") if x]
    tasks = args.tasks.split(",")
    if args.run and len(tasks) > 1:
        parser.error("--run names one run folder: give one task")
    for noisy in ("slimformer.surgery", "slimformer.static", "slimformer.slim.extraction", "slimformer.slim.vocab"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    log = logging.getLogger("slim_curve")
    torch.set_num_threads(args.threads)
    for name in tasks:
        t0 = time.perf_counter()
        res = run_task(name, args, log)
        report = {
            "command": args.command,
            "result": res,
            "wall_time_s": round(time.perf_counter() - t0, 1),
            "environment": res["environment"],
        }
        path = harness.sibling(args.out, SHORT.get(name, name))
        md = markdown([res], args)
        harness.write_results(path, report, md)
        plot(res, path.with_suffix(".png"))
        print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
