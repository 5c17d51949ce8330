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
    """Task metrics (accuracy, macro F1, MCC for binary tasks) of a model on one split.

    An embedding model (saved by `slimformer embed-compress`, or a sentence-transformers folder such as
    minilm-l6) gets embedding scores instead: kNN accuracy (k=10, index: 1,000 train texts) and same-label
    precision@10 on the split.
    """
    from slimformer.embedding import folder_pooling
    from slimformer.evaluate import evaluate as run_eval

    if folder_pooling(model) is not None:
        _evaluate_embedding(model, task, split, max_length, batch_size, text_column, label_column, seed,
                            validation_file, test_file, as_json)  # fmt: skip
        return
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


def _evaluate_embedding(model, task, split, max_length, batch_size, text_column, label_column, seed,
                        validation_file, test_file, as_json) -> None:  # fmt: skip
    from slimformer.commands.common import load_task_option
    from slimformer.embedding import load_embedding_model
    from slimformer.embedding_eval import evaluate_embedding_task

    try:
        data = load_task_option(task, text_column, None, label_column, seed,
                                validation_file=validation_file, test_file=test_file)  # fmt: skip
        m, tok = load_embedding_model(model)
        scores, _ = evaluate_embedding_task(m, tok, data, split=split, batch_size=batch_size, max_length=max_length)
    except USER_ERRORS as exc:
        fail(exc)
    metrics = {"kind": "embedding", **scores}
    if as_json:
        emit_json(metrics)
        return
    typer.echo(
        f"{model} (embedding model) on {task} [{split}]: kNN accuracy {metrics['knn_accuracy']:.4f}, "
        f"precision@{metrics['k']} {metrics['retrieval_precision']:.4f} "
        f"(index {metrics['train_examples']} train texts, {metrics['test_examples']} scored)"
    )
