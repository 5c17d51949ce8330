"""``slimformer finetune``: fine-tune a model on a task (on Accelerate)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from slimformer.commands.common import (
    USER_ERRORS,
    JsonOpt,
    LabelCol,
    ModelArg,
    OverwriteOpt,
    PairCol,
    ResumeOpt,
    TaskOpt,
    TestFileOpt,
    TextCol,
    ValFileOpt,
    emit_json,
    ensure_output_dir,
    fail,
    field_readers,
    load_task_option,
)
from slimformer.train import FinetuneConfig

_help, _default = field_readers(FinetuneConfig)


def finetune(
    model: ModelArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder (must be empty or new)")],
    task: TaskOpt = "rotten_tomatoes",
    epochs: Annotated[int, typer.Option(help=_help("epochs"))] = _default("epochs"),
    lr: Annotated[float, typer.Option(help=_help("lr"))] = _default("lr"),
    batch_size: Annotated[int, typer.Option(help=_help("batch_size"))] = _default("batch_size"),
    max_length: Annotated[int, typer.Option(help=_help("max_length"))] = _default("max_length"),
    warmup_ratio: Annotated[float, typer.Option(help=_help("warmup_ratio"))] = _default("warmup_ratio"),
    weight_decay: Annotated[float, typer.Option(help=_help("weight_decay"))] = _default("weight_decay"),
    seed: Annotated[int, typer.Option(help=_help("seed") + " Also seeds the data split.")] = _default("seed"),
    max_steps: Annotated[int | None, typer.Option(help=_help("max_steps"))] = None,
    text_column: TextCol = "text",
    text_pair_column: PairCol = None,
    label_column: LabelCol = "label",
    validation_file: ValFileOpt = None,
    test_file: TestFileOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
):
    """Fine-tune a model on a task (runs on Accelerate: `accelerate launch -m slimformer finetune ...`)."""
    from slimformer.models import load_model
    from slimformer.train import finetune as run_finetune

    try:
        config = FinetuneConfig(
            epochs=epochs, lr=lr, batch_size=batch_size, max_length=max_length, warmup_ratio=warmup_ratio,
            weight_decay=weight_decay, seed=seed, max_steps=max_steps,
        )  # fmt: skip
        ensure_output_dir(out, overwrite, resume=resume, inputs=(model,))
        data = load_task_option(
            task,
            text_column,
            text_pair_column,
            label_column,
            seed,
            validation_file=validation_file,
            test_file=test_file,
        )
        m, tok = load_model(model, label_names=data.label_names)
        report = run_finetune(m, tok, data, config, out, resume=resume, overwrite=overwrite, progress=not as_json)
    except USER_ERRORS as exc:
        fail(exc)
    if as_json:
        emit_json(report)
        return
    typer.echo(f"saved fine-tuned model to {out}")
    typer.echo(json.dumps(report.get("validation", report.get("epochs", [])), indent=2, default=str))
