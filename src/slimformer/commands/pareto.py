"""``slimformer pareto``: sweep methods over budgets; write accuracy-latency and accuracy-memory frontiers."""

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
    TaskOpt,
    TestFileOpt,
    TextCol,
    ValFileOpt,
    emit_json,
    ensure_output_dir,
    fail,
    load_task_option,
    model_and_task,
)

DEFAULT_METHODS = "optin,fisher,magnitude,optin+int8"
EMBEDDING_METHODS = "optin,magnitude,optin+int8"


def pareto(
    model: ModelArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the plots and tables (must be empty or new)")],
    task: TaskOpt = "rotten_tomatoes",
    methods: Annotated[
        str | None,
        typer.Option(
            help="comma-separated pruning methods; METHOD+int8 / METHOD+bf16 adds that version (default: "
            f"{DEFAULT_METHODS}; for an embedding model {EMBEDDING_METHODS}, as fisher needs labels)",
            show_default=False,
        ),
    ] = None,
    budgets: Annotated[str, typer.Option(help="comma-separated relative budgets in (0, 1]")] = "0.8,0.6,0.5,0.4,0.3",
    kind: Annotated[str, typer.Option(help="budget kind of the sweep: macs, params or memory")] = "macs",
    seq_len: Annotated[int, typer.Option("--seq-len", help="tokens per sequence for MACs and latency")] = 128,
    batch_sizes: Annotated[
        str, typer.Option("--batch-sizes", help="comma-separated batch sizes to time; the first is the plot's axis")
    ] = "1,32",
    repeats: Annotated[int, typer.Option(help="timed calls per model (all models interleaved)")] = 10,
    calibration: CalibrationOpt = 1024,
    max_length: Annotated[int, typer.Option(help="truncate inputs to this many tokens")] = 128,
    text_column: TextCol = "text",
    text_pair_column: PairCol = None,
    label_column: LabelCol = "label",
    validation_file: ValFileOpt = None,
    test_file: TestFileOpt = None,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
):
    """Run methods over a sweep of budgets; write accuracy-latency and accuracy-memory frontiers (PNG + table).

    A sentence-embedding MODEL (e.g. minilm-l6 as shipped) is swept with no labels for compressing: OPTIN,
    magnitude and random score on unlabelled train texts (fisher, slim, axformer are refused with the
    reason). Each point's accuracy is then the kNN accuracy (k=10, index: 1,000 train texts) on test;
    the table and pareto.json also give precision@10 and agreement with dense (mean cosine, recall@10).
    Timing is encoder + pooling, every model interleaved.
    """
    from slimformer.bench import parse_int_list
    from slimformer.embedding import embedding_pooling, folder_pooling
    from slimformer.fsutil import staged_output_dir
    from slimformer.pareto import ParetoConfig, sweep
    from slimformer.report import write_json

    try:
        if methods is None:
            methods = EMBEDDING_METHODS if folder_pooling(model) is not None else DEFAULT_METHODS
        config = ParetoConfig(
            methods=methods, budgets=budgets, kind=kind, seq_len=seq_len, batch_sizes=parse_int_list(batch_sizes),
            repeats=repeats, calibration=calibration, max_length=max_length,
        )  # fmt: skip
        ensure_output_dir(out, overwrite, inputs=(model,))  # refuses a non-empty folder before any work
        m, tok, data = _model_and_task(model, task, (text_column, text_pair_column, label_column), validation_file,
                                       test_file)  # fmt: skip
        result = sweep(m, tok, data, config, name="dense", progress=not as_json)
    except USER_ERRORS as exc:
        fail(exc)
    result.pop("models")
    embedding = embedding_pooling(m) is not None
    title = f"{model} on {data.name} (test split{', embedding model: kNN accuracy, k=10' if embedding else ''})"
    ylabel = "test kNN accuracy (k=10)" if embedding else "test accuracy"
    with staged_output_dir(out, overwrite=overwrite) as stage:  # moved into place complete
        table = _write_outputs(result, stage, config, title, final=out, ylabel=ylabel)
        result.update(model=model, task=data.name)
        write_json(stage / "pareto.json", result)
    folder = out
    if as_json:
        emit_json(result)
        return
    typer.echo(table)
    typer.echo("* = on the accuracy-latency frontier, † = on the accuracy-memory frontier")
    typer.echo(f"plots: {result['plots']['latency']}, {result['plots']['memory']}; table: {folder / 'pareto.md'}")


def _model_and_task(model: str, task: str, columns: tuple, validation_file, test_file):
    """``(model, tokenizer, task)``: an embedding model as one (labels only score it), else a classifier."""
    from slimformer.embedding import folder_pooling, load_embedding_model

    if folder_pooling(model) is None:
        return model_and_task(model, task, *columns, 0, validation_file, test_file)
    text_column, _, label_column = columns
    data = load_task_option(task, text_column, None, label_column, 0, validation_file=validation_file,
                            test_file=test_file)  # fmt: skip
    return (*load_embedding_model(model), data)


def _write_outputs(result: dict, folder: Path, config, title: str, *, final: Path, ylabel: str) -> str:
    """Write both frontier plots (recorded in ``result["plots"]`` as paths under ``final``, where
    ``folder`` will be) and pareto.md; return the table."""
    from slimformer.pareto import markdown, plot_frontier

    points = result["points"]
    batch_size = config.batch_sizes[0]
    result["plots"] = {
        "latency": str(final / plot_frontier(points, "latency_ms", folder / "frontier_latency.png",
                                             xlabel=f"latency at batch {batch_size} x {config.seq_len} tokens (ms)",
                                             title=title, ylabel=ylabel).name),
        "memory": str(final / plot_frontier(points, "bytes", folder / "frontier_memory.png",
                                            xlabel="weights (MB, as stored)", title=title,
                                            ylabel=ylabel).name),
    }  # fmt: skip
    table = markdown(points, batch_sizes=config.batch_sizes)
    (folder / "pareto.md").write_text(f"# Frontier: {title}\n\n{table}\n")
    return table
