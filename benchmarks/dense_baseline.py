"""Dense baseline of the built-in MiniLM-L6 on both built-in tasks (the README's baseline table).

For each task: fine-tune (cached under $SLIMFORMER_CACHE, default ~/.cache/slimformer), then on the
TEST split measure accuracy / macro F1, and at the task's typical length (p90 of the training
texts, capped at the fine-tuning max length) the cost model's params and MACs and the wall-clock
latency at batch 1 and 32. Writes benchmarks/results/dense_baseline.{json,md}.

    .venv/bin/python benchmarks/dense_baseline.py [--tasks rotten_tomatoes,bbc_news] [--repeats 20]
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path

from slimformer.data import load_task
from slimformer.pipeline import RECIPES, add_latency, baseline
from slimformer.report import markdown_table, write_json

OUT = Path(__file__).parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(RECIPES), help="comma-separated built-in tasks")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per batch size")
    parser.add_argument("--model", default="minilm-l6")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)

    rows, details = [], {}
    for name in args.tasks.split(","):
        if name not in RECIPES:
            parser.error(f"unknown task {name!r}; choose from {', '.join(RECIPES)}")
        recipe = RECIPES[name]
        task = load_task(name)
        base = baseline(args.model, task, recipe)
        row, model = base.pop("row"), base.pop("model")
        row["name"] = f"{args.model} / {name}"
        environment = add_latency([row], [model], seq_len=base["seq_len"], repeats=args.repeats)
        rows.append(row)
        details[name] = base

    report = {
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/dense_baseline.py " + " ".join(argv or sys.argv[1:]),
        "rows": rows,
        "details": details,
        "environment": environment,
    }
    write_json(OUT / "dense_baseline.json", report)
    env = environment
    md = "\n".join(
        [
            "# Dense baseline: MiniLM-L6 fine-tuned on the built-in tasks",
            "",
            f"Test split; MACs and latency at the task's typical length (p90 of training texts, capped at the "
            f"fine-tuning max length); latency = median wall clock of {args.repeats} runs, "
            f"{env['processor']}, {env['torch_threads']} threads, torch {env['torch']}, {env['datetime_utc']}.",
            "",
            markdown_table(rows),
            "",
        ]
    )
    (OUT / "dense_baseline.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
