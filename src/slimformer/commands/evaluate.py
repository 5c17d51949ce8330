"""``slimformer evaluate``: task metrics of a model on one split."""

from __future__ import annotations

from typing import Annotated

import typer

from slimformer.commands.common import (
    USER_ERRORS,
    JsonOpt,
    LabelCol,
    ModelArg,
    PairCol,
    TaskOpt,
    TestFileOpt,
    TextCol,
    ValFileOpt,
    emit_json,
    fail,
    model_and_task,
)


def evaluate(
    model: ModelArg,
    task: TaskOpt = "rotten_tomatoes",
    split: Annotated[str, typer.Option(help="train, validation, test, or all (every example)")] = "test",
    max_length: Annotated[int, typer.Option(help="truncate inputs to this many tokens")] = 128,
    batch_size: Annotated[int, typer.Option(help="examples per batch")] = 64,
    text_column: TextCol = "text",
    text_pair_column: PairCol = None,
    label_column: LabelCol = "label",
    validation_file: ValFileOpt = None,
    test_file: TestFileOpt = None,
    seed: Annotated[int, typer.Option(help="seed of the train/validation/test split")] = 0,
    as_json: JsonOpt = False,
):
    """Task metrics (accuracy, macro F1, MCC for binary tasks) of a model on one split."""
    from slimformer.evaluate import evaluate as run_eval

    try:
        m, tok, data = model_and_task(
            model, task, text_column, text_pair_column, label_column, seed, validation_file, test_file
        )
        examples = data.split(split)  # after the labels follow the model's id2label
        metrics = run_eval(m, tok, examples, batch_size=batch_size, max_length=max_length, progress=not as_json)
    except USER_ERRORS as exc:
        fail(exc)
    if as_json:
        emit_json(metrics)
        return
    shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
    typer.echo(f"{model} on {task} [{split}]: {shown}")
