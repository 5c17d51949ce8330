"""Recovery fine-tune settings, compared on the VALIDATION split only (that is how they are chosen).

Takes a compressed model saved by slimformer (e.g. ``slimformer axformer ... --out DIR``), the dense
model it came from (default: the built-in fine-tuned MiniLM-L6 of the task) and a list of
:class:`~slimformer.recover.RecoverConfig` settings as JSON; each is trained from the same start
on the whole train split and scored on validation. The test split is not read.

    .venv/bin/python benchmarks/recover_sweep.py DIR --task rotten_tomatoes \\
        --configs '{"epochs": 1}' '{"epochs": 2}' '{"epochs": 1, "hidden_weight": 0}' --out recover_sweep_rotten
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from slimformer.axformer import validation_batches
from slimformer.axformer.search import score_batches
from slimformer.bench import environment
from slimformer.data import load_task
from slimformer.exits import training_batches
from slimformer.models import load_model
from slimformer.pipeline import RECIPES, finetune_cached
from slimformer.recover import RecoverConfig, recover
from slimformer.report import write_json

OUT = Path(__file__).parent / "results"
log = logging.getLogger("recover_sweep")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the compressed model's folder")
    parser.add_argument("--task", default="rotten_tomatoes", choices=list(RECIPES))
    parser.add_argument("--teacher", default=None, help="the dense model (default: built-in fine-tuned MiniLM-L6)")
    parser.add_argument("--configs", nargs="+", default=['{"epochs": 1}'], help="RecoverConfig fields as JSON")
    parser.add_argument("--out-dir", type=Path, default=OUT)
    parser.add_argument("--out", default="recover_sweep", help="file stem under --out-dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        configs = [RecoverConfig.from_dict(json.loads(c)) for c in args.configs]
    except (ValueError, json.JSONDecodeError) as e:
        parser.error(f"--configs: {e}")
    torch.manual_seed(0)
    task, recipe = load_task(args.task), RECIPES[args.task]
    teacher_dir = args.teacher or str(finetune_cached("minilm-l6", task, recipe)[0])
    teacher, tokenizer = load_model(teacher_dir)
    model, _ = load_model(args.model)
    val = validation_batches(task.split("validation"), tokenizer, max_length=recipe.max_length)
    train = training_batches(task.split("train"), tokenizer, max_length=recipe.max_length, seed=0)
    rows = [
        {"config": "dense (teacher)", **score_batches(teacher, val)},
        {"config": "start", **score_batches(model, val)},
    ]
    for config in configs:
        t0 = time.perf_counter()
        result = recover(model, teacher, train, config, progress=False)
        rows.append(
            {
                "config": config.to_dict(),
                **score_batches(result.model, val),
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        log.info("%s", rows[-1])
    env = environment()
    default = RecoverConfig().to_dict()
    lines = [
        f"# Recovery fine-tune settings on {args.task} (validation split, {rows[0]['n']} examples)",
        "",
        f"Model `{args.model}`, teacher `{teacher_dir}`, whole train split ({len(task.split('train'))} examples), "
        f"{env['processor']}, {env['torch_threads']} threads, torch {env['torch']}, {env['datetime_utc']}. "
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
    write_json(
        args.out_dir / f"{args.out}.json",
        {
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": "python benchmarks/recover_sweep.py " + " ".join(argv or sys.argv[1:]),
            "rows": rows,
            "environment": env,
        },
    )
    (args.out_dir / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
