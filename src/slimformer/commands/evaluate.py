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
    """Task metrics of a model on one split: accuracy, macro F1 (MCC for binary tasks); entity F1 for a
    token classifier (--task wnut16 or a CoNLL / JSONL file); MRR@10 / nDCG@10 for a one-logit pair model
    (a reranker: the labels are relevance grades, the candidates of a query share its text)."""
    from slimformer.commands.kinds import folder_kind, token_metrics, token_model_and_task

    options = {"batch_size": batch_size, "max_length": max_length}
    try:
        if folder_kind(model) == "token":
            m, tok, tasks = token_model_and_task(model, task, seed)
            metrics = token_metrics(m, tok, tasks, split, **options)
        else:
            metrics = _sequence_metrics(
                model, task, split, (text_column, text_pair_column, label_column), seed, validation_file, test_file,
                options, progress=not as_json,
            )  # fmt: skip
    except USER_ERRORS as exc:
        fail(exc)
    if as_json:
        emit_json(metrics)
        return
    shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
    typer.echo(f"{model} on {task} [{split}]: {shown}")


def _sequence_metrics(model, task, split, columns, seed, validation_file, test_file, options, *, progress: bool):
    """A sequence or pair classifier's metrics; a one-logit pair model is scored as a reranker."""
    from slimformer.commands.common import check_labels, load_task_option
    from slimformer.commands.kinds import reranker_metrics
    from slimformer.evaluate import evaluate as run_eval
    from slimformer.models import load_model

    files = {"validation_file": validation_file, "test_file": test_file}
    data = load_task_option(task, *columns, seed, **files)
    m, tok = load_model(model, require_head=True)
    if m.config.num_labels == 1 and columns[1] is not None:
        return reranker_metrics(m, tok, data, split, **options)
    data = check_labels(m, data, model, task)  # labels follow the model's id2label
    return run_eval(m, tok, data.split(split), progress=progress, **options)
