"""Choose the built-in fine-tuning learning rate on the VALIDATION split (test reported, not used).

The main job must stay under 10 minutes on 2 CPU cores, which allows 2 epochs over rotten_tomatoes;
this script fine-tunes MiniLM-L6 with each learning rate (cached), and records validation and test
accuracy. Writes benchmarks/results/finetune_sweep.{json,md}.

    .venv/bin/python benchmarks/finetune_sweep.py [--lrs 5e-5,1e-4,2e-4] [--task rotten_tomatoes]
"""

from __future__ import annotations

import json
import logging

import harness

from slimformer.evaluate import evaluate
from slimformer.models import load_model
from slimformer.pipeline import finetune_cached
from slimformer.train import FinetuneConfig


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__file__, __doc__, out="finetune_sweep.json")
    parser.add_argument("--lrs", default="5e-5,1e-4,2e-4", help="comma-separated learning rates")
    parser.add_argument("--task", default="rotten_tomatoes")
    parser.add_argument("--epochs", type=int, default=2)
    args = harness.start(parser, argv)

    task = harness.load_task_for(args.task, args)
    rows = []
    for lr in (float(x) for x in args.lrs.split(",")):
        config = FinetuneConfig(epochs=args.epochs, lr=lr, max_steps=2 if args.smoke else None)
        folder, _ = finetune_cached(args.model, task, config, progress=False)
        report = json.loads((folder / "finetune_report.json").read_text())
        model, tokenizer = load_model(str(folder))
        test = evaluate(model, tokenizer, task.split("test"), max_length=config.max_length, progress=False)
        rows.append(
            {
                "lr": lr,
                "epochs": args.epochs,
                "validation_accuracy": report["validation"]["accuracy"],
                "test_accuracy": test["accuracy"],
                "train_time_s": report["wall_time_s"],
            }
        )
        logging.info("lr %g: %s", lr, rows[-1])
    best = max(rows, key=lambda r: r["validation_accuracy"])
    report = {
        "command": args.command,
        "task": args.task,
        "content_hash": task.content_hash,
        "rows": rows,
        "chosen_by_validation": best,
        "environment": harness.environment(),
    }
    lines = [harness.header("Fine-tuning learning rate, chosen on validation", args, report["environment"])]
    lines += ["| lr | epochs | validation acc | test acc | train time (s) |", "|---|---|---|---|---|"]
    lines += [
        f"| {r['lr']:g} | {r['epochs']} | {r['validation_accuracy']:.4f} | {r['test_accuracy']:.4f} | "
        f"{r['train_time_s']:.0f} |"
        for r in rows
    ]
    lines += ["", f"Chosen by validation accuracy: lr {best['lr']:g}."]
    harness.write_results(args.out, report, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
