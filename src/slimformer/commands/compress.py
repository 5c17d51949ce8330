"""``slimformer compress``: run a recipe (a chain of steps) through :mod:`slimformer.compose`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slimformer.commands.common import (
    USER_ERRORS,
    CalibrationOpt,
    JsonOpt,
    LabelCol,
    LazyHelpCommand,
    ModelArg,
    OverwriteOpt,
    PairCol,
    TaskOpt,
    TestFileOpt,
    TextCol,
    ValFileOpt,
    emit_json,
    ensure_output_dir,
    fail,
    model_and_task,
    split_metrics,
)


def steps_help() -> str:
    """One line per recipe step, read from the method registry: ``name (kind): help``."""
    from slimformer.compose import available_steps

    return "\n".join(f"{name} ({m.kind}): {m.help}" for name, m in available_steps().items())


class RecipeCommand(LazyHelpCommand):
    """A command whose help ends with the recipe steps, read from the registry when help is shown."""

    def complete_help(self) -> None:
        lines = "\n\n".join(f"* {line}" for line in steps_help().splitlines())
        self.help = f"{self.help or ''}\n\nSteps:\n\n{lines}"


def compress(
    model: ModelArg,
    recipe: Annotated[Path, typer.Option("--recipe", "-r", help="YAML or JSON file with a list of steps")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the compressed model (must be empty or new)")],
    task: TaskOpt = "rotten_tomatoes",
    calibration: CalibrationOpt = 1024,
    max_length: Annotated[int, typer.Option(help="truncate calibration and validation inputs")] = 128,
    seed: Annotated[int, typer.Option(help="seed of the calibration sample")] = 0,
    evaluate_split: Annotated[
        str | None, typer.Option("--evaluate", help="also report metrics of the result on this split (e.g. test)")
    ] = None,
    text_column: TextCol = "text",
    text_pair_column: PairCol = None,
    label_column: LabelCol = "label",
    validation_file: ValFileOpt = None,
    test_file: TestFileOpt = None,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
):
    """Run a recipe (e.g. prune to macs=0.5, then int8) and save the result with one report.

    The recipe is checked whole before any work: an unknown step, a bad field or an impossible order
    fails at once, naming the step. Relative budgets are fractions of MODEL, whatever step they are in.
    Every registered method is a step (listed below); dynamic and precision steps must be the last.
    """
    from slimformer.compose import RecipeContext, load_recipe, save_result
    from slimformer.compose import compress as run_compress

    try:
        steps = load_recipe(recipe)
        ensure_output_dir(out, overwrite, inputs=(model,))
        m, tok, data = model_and_task(
            model, task, text_column, text_pair_column, label_column, 0, validation_file, test_file
        )
        context = RecipeContext(
            tokenizer=tok, task=data, max_length=max_length, calibration=calibration, seed=seed, progress=not as_json
        )
        result, report = run_compress(m, steps, context)
        report = {"model": model, "task": data.name, "recipe": str(recipe), **report}
        if evaluate_split:
            report["metrics"] = split_metrics(
                result, tok, data, evaluate_split, max_length=max_length, progress=not as_json
            )
        save_result(result, tok, out, overwrite=overwrite, extra=report)
    except USER_ERRORS as exc:
        fail(exc)
    if as_json:
        emit_json(report)
        return
    for e in report["steps"]:
        shape = f", params {e['params'] / 1e6:.2f}M, MACs {e['macs'] / 1e6:.0f}M" if "params" in e else ""
        typer.echo(f"step {e['index']} {e['step']}: {e['seconds']:.1f}s{shape}")
    if "metrics" in report:
        typer.echo(f"{report['metrics']['split']} accuracy {report['metrics']['accuracy']:.4f}")
    typer.echo(f"saved to {out}")
