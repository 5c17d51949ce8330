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
    (a reranker: the labels are relevance grades, the candidates of a query share its text).

    An embedding model (saved by `slimformer embed-compress`, or a sentence-transformers folder such as
    minilm-l6) gets embedding scores instead: kNN accuracy (k=10, index: 1,000 train texts) and same-label
    precision@10 on the split.
    """
    from slimformer.commands.kinds import folder_kind, token_metrics, token_model_and_task
    from slimformer.embedding import folder_pooling

    if folder_pooling(model) is not None:
        _evaluate_embedding(model, task, split, max_length, batch_size, text_column, label_column, seed,
                            validation_file, test_file, as_json)  # fmt: skip
        return
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
