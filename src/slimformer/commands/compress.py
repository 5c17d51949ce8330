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
    load_task_option,
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

    A sentence-embedding MODEL (a sentence-transformers folder such as minilm-l6, or one saved by
    embed-compress) is compressed with no labels: calibration and recover use unlabelled train texts of
    --task (recover distils the pooled embeddings from MODEL); fisher, slim, axformer, skim and exits are
    refused with the reason. The report gives agreement with dense (mean cosine, recall@10) and kNN
    accuracy / precision@10 on --evaluate (default test); OUT loads with sentence-transformers, except an
    int8 result, which loads with slimformer only.
    """
    from slimformer.compose import load_recipe
    from slimformer.embedding import folder_pooling

    files = {"validation_file": validation_file, "test_file": test_file}
    options = {"calibration": calibration, "max_length": max_length, "seed": seed, "progress": not as_json}
    try:
        steps = load_recipe(recipe)
        ensure_output_dir(out, overwrite, inputs=(model,))
        if folder_pooling(model) is not None:  # a sentence-embedding model: no labels, embedding scores
            data = load_task_option(task, text_column, None, label_column, 0, **files)
            header = {"model": model, "task": data.name, "recipe": str(recipe)}
            report = _compress_embedding(model, steps, data, out, options, evaluate_split or "test", overwrite, header)
        else:
            m, tok, data = model_and_task(
                model, task, text_column, text_pair_column, label_column, 0, validation_file, test_file
            )
            header = {"model": model, "task": data.name, "recipe": str(recipe)}
            report = _compress_classifier(m, tok, data, steps, out, options, evaluate_split, overwrite, header)
    except USER_ERRORS as exc:
        fail(exc)
    _show(report, out, as_json)


def _compress_classifier(m, tok, data, steps, out, options: dict, evaluate_split, overwrite: bool, header) -> dict:
    from slimformer.compose import RecipeContext, save_result
    from slimformer.compose import compress as run_compress

    result, report = run_compress(m, steps, RecipeContext(tokenizer=tok, task=data, **options))
    report = {**header, **report}
    if evaluate_split:
        report["metrics"] = split_metrics(
            result, tok, data, evaluate_split, max_length=options["max_length"], progress=options["progress"]
        )
    save_result(result, tok, out, overwrite=overwrite, extra=report)
    return report


def _show(report: dict, out: Path, as_json: bool) -> None:
    if as_json:
        emit_json(report)
        return
    for e in report["steps"]:
        shape = f", params {e['params'] / 1e6:.2f}M, MACs {e['macs'] / 1e6:.0f}M" if "params" in e else ""
        typer.echo(f"step {e['index']} {e['step']}: {e['seconds']:.1f}s{shape}")
    if "metrics" in report:
        typer.echo(f"{report['metrics']['split']} accuracy {report['metrics']['accuracy']:.4f}")
    if "agreement" in report:
        typer.echo(_embedding_lines(report))
    typer.echo(f"saved to {out}")


def _compress_embedding(model, steps, data, out, options: dict, split: str, overwrite: bool, header) -> dict:
    """The recipe on a sentence-embedding model: unlabelled train texts in, embedding scores against dense out."""
    from slimformer.embedding import load_embedding_model, save_embedding_result
    from slimformer.embedding_compress import EmbeddingData, compress_embedding_recipe
    from slimformer.models import resolve_model_path

    dense, tok = load_embedding_model(model)
    context = EmbeddingData(tokenizer=tok, task=data, **options)
    result, report = compress_embedding_recipe(dense, tok, data, steps, context, split=split)
    report = {**header, "kind": "embedding", **report}
    source = resolve_model_path(model)
    save_embedding_result(result, tok, out, source=source if Path(source).is_dir() else None, overwrite=overwrite,
                          extra=report)  # fmt: skip
    return report


def _embedding_lines(report: dict) -> str:
    agree, k, split = report["agreement"], report["agreement"]["k"], report["split"]
    lines = [
        f"agreement with dense on {report['examples'][split]} {split} texts: mean cosine "
        f"{agree['mean_cosine']:.4f}, recall@{k} {agree['recall_at_k']:.4f}"
    ]
    for key, label in (("knn_accuracy", f"kNN accuracy (k={k})"), ("retrieval_precision", f"precision@{k}")):
        d, c = 100 * report["dense"][key], 100 * report["compressed"][key]
        lines.append(f"{label:22s} dense {d:6.2f}  compressed {c:6.2f}  ({c - d:+.2f} points)")
    return "\n".join(lines)
