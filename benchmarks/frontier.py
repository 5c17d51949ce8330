"""Accuracy-latency and accuracy-memory frontiers of MiniLM-L6 on rotten_tomatoes (docs/results/frontier.md).

The main job's pipeline (:func:`slimformer.pipeline.run_demo`) with a longer sweep: OPTIN, Fisher and
magnitude pruning at five MACs budgets, OPTIN's dynamic-int8 and bf16 versions, dense int8 and bf16, and OPTIN at
macs=0.5 exported to ONNX with onnxruntime int8. Every model is evaluated on the TEST split and all
are timed in the same interleaved rounds at the task's typical length (p90 of the training texts).
Writes benchmarks/results/frontier.{json,md} and docs/frontier_{latency,memory}.png.

    .venv/bin/python benchmarks/frontier.py [--task rotten_tomatoes] [--repeats 15]
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import harness

from slimformer.pipeline import DemoConfig, run_demo


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__file__, __doc__, out="frontier.json")
    parser.add_argument("--task", default="rotten_tomatoes")
    parser.add_argument("--methods", default="optin,fisher,magnitude,optin+int8,optin+bf16")
    parser.add_argument("--budgets", default="0.8,0.6,0.5,0.4,0.3")
    parser.add_argument("--onnx", default="optin@0.5", help="METHOD@BUDGET to export (onnxruntime int8)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--plots-dir", type=Path, default=harness.DOCS, help="where the two plots go")
    args = harness.start(parser, argv)
    if args.smoke:
        args.methods, args.budgets, args.onnx, args.repeats = "optin,optin+int8", "0.5", "optin@0.5", 1
        args.plots_dir = args.out.parent

    config = DemoConfig(
        model=args.model,
        task=harness.task_file(args.task, args),
        finetune=harness.recipe(args.task, args),
        calibration=16 if args.smoke else 1024,
        repeats=args.repeats,
        methods=tuple(args.methods.split(",")),
        budgets=tuple(float(b) for b in args.budgets.split(",")),
        onnx=args.onnx,
        fit=None,  # the frontier is the sweep; the main job's fit headline is benchmarks/fit.py's
    )
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        report = run_demo(config, run, progress=not args.smoke)
        report["command"] = args.command
        args.plots_dir.mkdir(parents=True, exist_ok=True)
        for name in ("frontier_latency.png", "frontier_memory.png"):
            shutil.copyfile(run / name, args.plots_dir / name)
        md = (run / "report.md").read_text()
    report["environment"].update(harness.environment() | report["environment"])
    md = md.replace("](frontier_", "](../../docs/frontier_")
    title, _, body = md.partition("\n")
    title = title.replace("# slimformer run:", "Frontier:", 1).lstrip("# ")
    md = harness.header(title, args, report["environment"]) + body
    harness.write_results(args.out, report, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
