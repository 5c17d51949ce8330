"""``slimformer fit MODEL --budget ... --out DIR``: the most accurate model that meets a budget on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slimformer.commands.common import (
    USER_ERRORS,
    CalibrationOpt,
    JsonOpt,
    LabelCol,
    ModelArg,
    OverwriteOpt,
    PairCol,
    RecipeMaxLenOpt,
    SetOpt,
    TaskOpt,
    TestFileOpt,
    TextCol,
    ValFileOpt,
    emit_json,
    ensure_output_dir,
    fail,
    field_help,
    max_length_for,
    model_and_task,
    parse_options,
)

SetFit = SetOpt("FitConfig", "latency_scales=1,1.5,2")


def _help(name: str) -> str:
    from slimformer.fit import FitConfig

    return field_help(FitConfig, name)


def fit_command(
    model: ModelArg,
    budget: Annotated[str, typer.Option("--budget", "-b", help=_help("budget"))],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="folder for model/, fit.json and frontier.png (must be empty or new)")
    ],
    task: TaskOpt = "rotten_tomatoes",
    max_drop: Annotated[float | None, typer.Option("--max-drop", help=_help("max_drop"))] = None,
    method: Annotated[str, typer.Option(help=_help("method"))] = "optin",
    budgets: Annotated[str, typer.Option(help=_help("budgets") + " (comma-separated)")] = "0.8,0.6,0.5,0.4,0.3",
    variants: Annotated[
        str, typer.Option(help=_help("variants") + " (comma-separated)")
    ] = "torch-fp32,torch-int8,torch-bf16,ort-fp32,ort-int8",
    calibration: CalibrationOpt = 1024,
    max_length: RecipeMaxLenOpt = None,
    repeats: Annotated[int, typer.Option(help=_help("repeats"))] = 10,
    seed: Annotated[int, typer.Option(help="seed of the data split and the calibration sample")] = 0,
    set_: SetFit = None,
    text_column: TextCol = "text",
    text_pair_column: PairCol = None,
    label_column: LabelCol = "label",
    validation_file: ValFileOpt = None,
    test_file: TestFileOpt = None,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
):
    """Search pruning x precision x runtime for the most accurate model that meets --budget, measured here.

    Every candidate is timed on this machine (all interleaved) and scored on the validation split only.

    The choice is evaluated once on test beside dense. When nothing fits: exit code 1, fit.json names the closest.
    """
    from slimformer.fit import FitConfig, NoFit, fit
    from slimformer.fit_report import save_fit, save_report, summary

    try:
        fields = {"budget": budget, "max_drop": max_drop, "method": method, "budgets": budgets, "variants": variants}
        fields |= {"calibration": calibration, "repeats": repeats, "seed": seed, **parse_options(set_)}
        FitConfig.from_dict(fields)  # refuse bad settings before loading anything
        ensure_output_dir(out, overwrite, inputs=(model,))
        m, tok, data = model_and_task(
            model, task, text_column, text_pair_column, label_column, seed, validation_file, test_file
        )
        config = FitConfig.from_dict({**fields, "max_length": max_length_for(data, max_length)})
        result = fit(m, config, data, tok, progress=not as_json)
        result.report["model"] = model
        save_fit(result, tok, out, overwrite=overwrite)
    except NoFit as exc:
        from slimformer.fsutil import staged_output_dir

        exc.report["model"] = model
        with staged_output_dir(out, overwrite=overwrite) as stage:
            save_report(exc.report, stage, final=out)
        if as_json:
            emit_json(exc.report)
        else:
            typer.echo(summary(exc.report))
        fail(exc, code=1)
    except USER_ERRORS as exc:
        fail(exc)
    if as_json:
        emit_json(result.report)
        return
    typer.echo(summary(result.report))
    typer.echo(f"saved to {out}: model/ ({result.report['saved']['load_with']}), fit.json, frontier.png")
