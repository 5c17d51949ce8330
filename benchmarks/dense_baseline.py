"""Dense baseline of the built-in MiniLM-L6 on both built-in tasks (docs/results/dense_baseline.md).

For each task: fine-tune (cached under $SLIMFORMER_CACHE, default ~/.cache/slimformer), then on the
TEST split measure accuracy / macro F1, and at the task's typical length (p90 of the training
texts, capped at the fine-tuning max length) the cost model's params and MACs and the wall-clock
latency at batch 1 and 32. Writes benchmarks/results/dense_baseline.{json,md}.

    .venv/bin/python benchmarks/dense_baseline.py [--tasks rotten_tomatoes,bbc_news] [--repeats 20]
"""

from __future__ import annotations

import harness

from slimformer.pipeline import RECIPES, add_latency, baseline
from slimformer.report import markdown_table


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__file__, __doc__, out="dense_baseline.json")
    parser.add_argument("--tasks", default=",".join(RECIPES), help="comma-separated built-in tasks")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per batch size")
    args = harness.start(parser, argv)
    if args.smoke:
        args.repeats = 2

    rows, details = [], {}
    for name in args.tasks.split(","):
        if name not in RECIPES:
            parser.error(f"unknown task {name!r}; choose from {', '.join(RECIPES)}")
        task = harness.load_task_for(name, args)
        base = baseline(args.model, task, harness.recipe(name, args))
        row, model = base.pop("row"), base.pop("model")
        row["name"] = f"{'smoke' if args.smoke else args.model} / {name}"
        environment = add_latency([row], [model], seq_len=base["seq_len"], repeats=args.repeats, progress=False)
        rows.append(row)
        details[name] = base

    environment.update(harness.environment())
    report = {"command": args.command, "rows": rows, "details": details, "environment": environment}
    md = "\n".join(
        [
            harness.header("Dense baseline: MiniLM-L6 fine-tuned on the built-in tasks", args, environment),
            "Test split; MACs and latency at the task's typical length (p90 of training texts, capped at the "
            f"fine-tuning max length); latency = median wall clock of {args.repeats} runs.",
            "",
            markdown_table(rows),
        ]
    )
    harness.write_results(args.out, report, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
