"""Recovery fine-tune settings, compared on the VALIDATION split only (that is how they are chosen).

Takes a compressed model saved by slimformer (e.g. ``slimformer axformer ... --out DIR``), the dense
model it came from (default: the built-in fine-tuned MiniLM-L6 of the task) and a list of
:class:`~slimformer.recover.RecoverConfig` settings as JSON; each is trained from the same start
on the whole train split and scored on validation. The test split is not read.

    .venv/bin/python benchmarks/recover_sweep.py DIR --task rotten_tomatoes \\
        --configs '{"epochs": 1}' '{"epochs": 2}' '{"epochs": 1, "hidden_weight": 0}' \\
        --out benchmarks/results/recover_sweep_rotten.json
"""

from __future__ import annotations

import json
import logging
import time

import harness

from slimformer.axformer import validation_batches
from slimformer.axformer.search import score_batches
from slimformer.exits import training_batches
from slimformer.models import load_model
from slimformer.pipeline import RECIPES
from slimformer.recover import RecoverConfig, recover

log = logging.getLogger("recover_sweep")


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__file__, __doc__, out="recover_sweep.json")
    parser.add_argument("compressed", nargs="?", help="the compressed model's folder (smoke: the dense model)")
    parser.add_argument("--task", default="rotten_tomatoes", choices=list(RECIPES))
    parser.add_argument("--teacher", default=None, help="the dense model (default: --model fine-tuned on the task)")
    parser.add_argument("--configs", nargs="+", default=['{"epochs": 1}'], help="RecoverConfig fields as JSON")
    args = harness.start(parser, argv)
    if args.compressed is None and not args.smoke:
        parser.error("the compressed model's folder is required (only --smoke runs without one)")
    try:
        configs = [RecoverConfig.from_dict(json.loads(c)) for c in args.configs]
    except (ValueError, json.JSONDecodeError) as e:
        parser.error(f"--configs: {e}")
    if args.teacher:
        task, recipe = harness.load_task_for(args.task, args), harness.recipe(args.task, args)
        teacher_dir = args.teacher
    else:
        folder, task, recipe = harness.finetuned(args.task, args)
        teacher_dir = str(folder)
    teacher, tokenizer = load_model(teacher_dir)
    compressed = args.compressed or teacher_dir
    model, _ = load_model(compressed)
    val = validation_batches(task.split("validation"), tokenizer, max_length=recipe.max_length)
    train = training_batches(task.split("train"), tokenizer, max_length=recipe.max_length, seed=0)
    rows = [
        {"config": "dense (teacher)", **score_batches(teacher, val)},
        {"config": "start", **score_batches(model, val)},
    ]
    for config in configs:
        t0 = time.perf_counter()
        if args.smoke:
            config = RecoverConfig.from_dict({**config.to_dict(), "max_steps": 2})
        result = recover(model, teacher, train, config, progress=False)
        rows.append(
            {
                "config": config.to_dict(),
                **score_batches(result.model, val),
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        log.info("%s", rows[-1])
    env = harness.environment()
    default = RecoverConfig().to_dict()
    title = f"Recovery fine-tune settings on {args.task} (validation split, {rows[0]['n']} examples)"
    lines = [
        harness.header(title, args, env),
        f"Model `{compressed}`, teacher `{teacher_dir}`, whole train split ({len(task.split('train'))} examples). "
        "Settings are shown as their differences from the defaults.",
        "",
        "| settings | val acc | val loss | s |",
        "|---|---|---|---|",
    ]
    for r in rows:
        cfg = r["config"]
        label = (
            cfg
            if isinstance(cfg, str)
            else ", ".join(f"{k}={v}" for k, v in cfg.items() if v != default[k]) or "defaults"
        )
        lines.append(f"| {label} | {r['accuracy']:.4f} | {r['loss']:.4f} | {r.get('seconds', '-')} |")
    report = {"command": args.command, "rows": rows, "environment": env}
    harness.write_results(args.out, report, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
