"""``slimformer demo``: the main job (fine-tune, compress several ways, export, measure, plot)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slimformer.commands.common import (
    USER_ERRORS,
    JsonOpt,
    OverwriteOpt,
    TaskOpt,
    console,
    emit_json,
    fail,
    fractions,
)


def demo(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="run folder (default: runs/<model>-<task>-<time>)")
    ] = None,
    model: Annotated[str, typer.Option(help="model to fine-tune and measure")] = "minilm-l6",
    task: TaskOpt = "rotten_tomatoes",
    repeats: Annotated[int, typer.Option(help="timed runs per batch size (all models interleaved)")] = 10,
    methods: Annotated[
        str, typer.Option(help="comma-separated methods of the sweep; METHOD+int8 / METHOD+bf16 adds that version")
    ] = "optin,fisher,optin+int8",
    budgets: Annotated[str, typer.Option(help="comma-separated MACs budgets of the sweep (fractions)")] = "0.6,0.4",
    onnx: Annotated[
        str, typer.Option(help="METHOD@BUDGET of the sweep to export to ONNX (onnxruntime int8); 'none' to skip")
    ] = "optin@0.4",
    compress: Annotated[bool, typer.Option(help="run the compression sweep after the dense baseline")] = True,
    fit: Annotated[
        str,
        typer.Option(
            help="budget of the headline's `fit` (batch 1 and the run's length unless given), which picks the "
            "fastest model within --fit-max-drop points of dense, timed beside dense and the peer "
            "(dense -> onnxruntime optimizer -> int8); 'none' to skip both"
        ),
    ] = "latency=0.5",
    fit_max_drop: Annotated[float, typer.Option(help="fit: accuracy points (validation) below dense allowed")] = 1.0,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
):
    """The main job: fine-tune (cached), compress several ways, export one model to ONNX, fit, measure, plot.

    The headline is `fit`'s choice (the fastest model within --fit-max-drop points of dense) beside dense
    and the onnxruntime-optimizer + int8 peer. Every model is evaluated on the test split and timed in the
    same interleaved rounds; the table marks the accuracy-latency (*) and accuracy-memory (†) frontiers,
    and the plots are written next to it.
    """
    from datetime import datetime

    from slimformer.pipeline import DemoConfig, run_demo

    if out is None:
        out = Path("runs") / f"{model}-{Path(task).stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    try:
        sweep: dict = {"methods": (), "budgets": (), "onnx": None}
        if compress:
            sweep = {
                "methods": tuple(m.strip() for m in methods.split(",") if m.strip()),
                "budgets": fractions(budgets, "--budgets"),
                "onnx": None if onnx.lower() == "none" else onnx,
            }
        fitting = {"fit": None if fit.lower() == "none" else fit, "fit_max_drop": fit_max_drop}
        config = DemoConfig(model=model, task=task, repeats=repeats, **sweep, **fitting)
        report = run_demo(config, out, overwrite=overwrite, progress=not as_json)
    except USER_ERRORS as exc:
        fail(exc)
    if as_json:
        emit_json(report)
        return
    _echo_demo(report, model, out)


def _echo_demo(report: dict, model: str, out: Path) -> None:
    from slimformer.report import DEMO_COLUMNS, rich_table

    screen = console()
    title = f"{model} on {report['task']['name']} (test split)"
    head = report.get("headline")
    if head:
        screen.print(rich_table(head["rows"], title=f"headline: fit {head['budget']}", columns=DEMO_COLUMNS[:-1]))
        if head.get("choice"):
            ratios = ", ".join(f"{v:.2f}x @{b}" for b, v in head["fit_vs_peer"].items())
            screen.print(
                f"fit chose {head['choice']}: {head['drop_points']['fit']:+.2f} points vs dense; vs peer {ratios}"
            )
        else:
            screen.print(f"fit found no model: {head['message']}")
    screen.print(rich_table(report["rows"], title=title, columns=DEMO_COLUMNS))
    screen.print("x = speedup over dense; frontier: * accuracy-latency, † accuracy-memory")
    screen.print(f"report: {out / 'report.md'} (and report.json)")
    for name, path in report.get("plots", {}).items():
        screen.print(f"plot ({name}): {path}")
