"""Accuracy-latency and accuracy-memory frontiers of MiniLM-L6 on rotten_tomatoes (the README's plots).

The main job's pipeline (:func:`slimformer.pipeline.run_demo`) with a longer sweep: OPTIN, Fisher and
magnitude pruning at five MACs budgets, OPTIN's dynamic-int8 and bf16 versions, dense int8 and bf16, and OPTIN at
macs=0.5 exported to ONNX with onnxruntime int8. Every model is evaluated on the TEST split and all
are timed in the same interleaved rounds at the task's typical length (p90 of the training texts).
Writes benchmarks/results/frontier.{json,md} and docs/frontier_{latency,memory}.png.

    .venv/bin/python benchmarks/frontier.py [--task rotten_tomatoes] [--repeats 15]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from slimformer.pipeline import DemoConfig, run_demo
from slimformer.report import write_json

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="rotten_tomatoes")
    parser.add_argument("--methods", default="optin,fisher,magnitude,optin+int8,optin+bf16")
    parser.add_argument("--budgets", default="0.8,0.6,0.5,0.4,0.3")
    parser.add_argument("--onnx", default="optin@0.5", help="METHOD@BUDGET to export (onnxruntime int8)")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)

    config = DemoConfig(
        task=args.task,
        repeats=args.repeats,
        methods=tuple(args.methods.split(",")),
        budgets=tuple(float(b) for b in args.budgets.split(",")),
        onnx=args.onnx,
    )
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        report = run_demo(config, run, progress=True)
        report["command"] = "python benchmarks/frontier.py " + " ".join(argv or sys.argv[1:])
        DOCS.mkdir(exist_ok=True)
        for name in ("frontier_latency.png", "frontier_memory.png"):
            shutil.copyfile(run / name, DOCS / name)
        md = (run / "report.md").read_text()
    md = md.replace("](frontier_", "](../../docs/frontier_")
    md = md.replace("# slimformer run:", "# Frontier:", 1) + f"\nCommand: `{report['command']}`\n"
    (OUT / "frontier.md").write_text(md)
    write_json(OUT / "frontier.json", report)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
