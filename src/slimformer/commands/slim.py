"""``slimformer slim train | extract | curve``: thin commands over :mod:`slimformer.slim`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slimformer.commands.common import (
    USER_ERRORS,
    JsonOpt,
    LabelCol,
    OverwriteOpt,
    PairCol,
    SeedOpt,
    SetOpt,
    TaskOpt,
    TestFileOpt,
    TextCol,
    ValFileOpt,
    check_labels,
    config_help_command,
    console,
    emit_json,
    ensure_output_dir,
    fail,
    fractions,
    load_task_option,
    max_length_for,
    parse_options,
    split_examples,
    split_metrics,
)

slim_app = typer.Typer(
    help="Differentiable slimming: train once, then extract a model for any memory budget.",
    no_args_is_help=True,
)

DEFAULT_CURVE = "0.9,0.8,0.7,0.6,0.5,0.45,0.4,0.3,0.25,0.2"
SetSlim = SetOpt("SlimConfig")


@slim_app.command("train", cls=config_help_command("slimformer.slim.config:SlimConfig"))
def train_command(
    model: Annotated[str, typer.Argument(help="fine-tuned model: built-in name, local folder or hub id")],
    out: Annotated[Path, typer.Option("--out", "-o", help="run folder (checkpoints, then the gated model)")],
    task: TaskOpt = "rotten_tomatoes",
    epochs: Annotated[int | None, typer.Option(help="passes over the training split (default: SlimConfig's)")] = None,
    max_steps: Annotated[int | None, typer.Option()] = None,
    max_length: Annotated[int | None, typer.Option(help="truncate inputs (default: the task's recipe)")] = None,
    set_: SetSlim = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue from the run folder's latest checkpoint")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="empty a non-empty run folder first")] = False,
    text_column: TextCol = "text",
    text_pair_column: PairCol = None,
    label_column: LabelCol = "label",
    validation_file: ValFileOpt = None,
    test_file: TestFileOpt = None,
    seed: SeedOpt = 0,
    as_json: JsonOpt = False,
):
    """Train gates and weights of a fine-tuned model at sampled memory budgets (one run serves every budget)."""
    try:
        from slimformer.models import load_model
        from slimformer.slim.config import SlimConfig
        from slimformer.slim.train import slim

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
        options = {"max_length": max_length_for(data, max_length), **parse_options(set_)}
        if epochs is not None:
            options["epochs"] = epochs
        if max_steps is not None:
            options["max_steps"] = max_steps
        config = SlimConfig.from_dict(options)
        m, tok = load_model(model, require_head=True)
        data = check_labels(m, data, model, task)
        slimmed = slim(
            m, config, data, tokenizer=tok, out_dir=out, resume=resume, overwrite=overwrite, progress=not as_json
        )
    except USER_ERRORS as exc:
        fail(exc)
    report = slimmed.info["report"]
    if as_json:
        emit_json({"run": str(out), **slimmed.info})
        return
    last = report["history"][-1] if report["history"] else {}
    typer.echo(f"slimming run saved to {out}: {report['global_step']} steps in {report['wall_time_s']:.0f}s")
    if last.get("validation"):
        typer.echo(
            "validation accuracy by encoder-memory fraction: "
            + ", ".join(f"{k}: {v:.4f}" for k, v in last["validation"].items())
        )


@slim_app.command("extract")
def extract_command(
    run: Annotated[Path, typer.Argument(help="a finished run folder (slimformer slim train)")],
    budget: Annotated[str, typer.Option(help="memory=40%, memory=40MB, params=12M, macs=0.5, ...")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the extracted model (must be empty or new)")],
    of: Annotated[
        str, typer.Option(help="what the budget bounds: model (all weights) or encoder (the layers)")
    ] = "model",
    prune_vocab: Annotated[
        bool, typer.Option("--prune-vocab", help="keep only the tokens of the task's training texts")
    ] = False,
    min_count: Annotated[int, typer.Option(help="with --prune-vocab: keep tokens seen at least this often")] = 1,
    evaluate_split: Annotated[
        str | None, typer.Option("--evaluate", help="also report metrics on this split (e.g. test)")
    ] = None,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
):
    """Extract a plain pruned model that fits the budget from a slimming run (seconds, no training)."""
    try:
        from slimformer.slim.extraction import extract
        from slimformer.slim.run import load_run

        ensure_output_dir(out, overwrite, inputs=(run,))
        slimmed, tok = load_run(run)
        result = extract(slimmed, budget, of=of, prune_vocab=prune_vocab, min_count=min_count, tokenizer=tok)
        report = dict(result.report)
        if evaluate_split or prune_vocab:
            data, length = _run_task(slimmed)
            if evaluate_split:
                report["metrics"] = split_metrics(
                    result.model, result.tokenizer, data, evaluate_split, max_length=length, progress=not as_json
                )
            if prune_vocab:
                from slimformer.slim.vocab import unk_report

                split = evaluate_split or "test"
                texts = [e.text for e in data.split(split)]
                report["vocab"]["unk"] = {"split": split, **unk_report(tok, result.tokenizer, texts, max_length=length)}
        result.report = report
        result.save(out, overwrite=overwrite)
    except USER_ERRORS as exc:
        fail(exc)
    if as_json:
        emit_json({"out": str(out), **report})
        return
    rel = report["relative"]
    typer.echo(
        f"extracted {report['budget']} ({report['of']}): {report['bytes_fp32'] / 1e6:.1f} MB fp32 "
        f"({rel['bytes_fp32']:.1%} of dense), params {rel['params']:.1%}, encoder {report['encoder_fraction']:.1%} "
        f"in {report['seconds']['total']:.2f}s; saved to {out}"
    )
    if report.get("vocab"):
        v = report["vocab"]
        line = f"vocabulary {v['vocab_before']} -> {v['vocab_after']} tokens"
        if "unk" in v:
            u = v["unk"]
            line += f"; {u['unk_added']} of {u['tokens']} {u['split']} tokens fell back to [UNK]"
        typer.echo(line)
    if "metrics" in report:
        typer.echo(f"{report['metrics']['split']} accuracy {report['metrics']['accuracy']:.4f}")


@slim_app.command("curve")
def curve_command(
    run: Annotated[Path, typer.Argument(help="a finished run folder (slimformer slim train)")],
    task: TaskOpt = "rotten_tomatoes",
    budgets: Annotated[str, typer.Option(help="comma-separated memory fractions")] = DEFAULT_CURVE,
    of: Annotated[str, typer.Option(help="fractions of: encoder (the layers) or model (all weights)")] = "encoder",
    split: Annotated[str, typer.Option(help="split to score")] = "test",
    limit: Annotated[int | None, typer.Option(help="score only the first N examples of the split")] = None,
    max_length: Annotated[int | None, typer.Option(help="truncate inputs (default: the run's)")] = None,
    plot: Annotated[Path | None, typer.Option(help="write the accuracy curve here (PNG)")] = None,
    text_column: TextCol = "text",
    text_pair_column: PairCol = None,
    label_column: LabelCol = "label",
    validation_file: ValFileOpt = None,
    test_file: TestFileOpt = None,
    seed: SeedOpt = 0,
    as_json: JsonOpt = False,
):
    """Accuracy of the models extracted at a sweep of budgets from one run: a table and a plot."""
    try:
        from slimformer.evaluate import evaluate
        from slimformer.slim.extraction import curve, plot_curve
        from slimformer.slim.run import load_run

        shares = list(fractions(budgets, "--budgets"))
        slimmed, tok = load_run(run)
        data = load_task_option(
            task,
            text_column,
            text_pair_column,
            label_column,
            seed,
            validation_file=validation_file,
            test_file=test_file,
        )
        examples = split_examples(data, split, limit)
        length = max_length or slimmed.info.get("config", {}).get("max_length", 128)
        dense = evaluate(slimmed.model, tok, examples, max_length=length, progress=False)["accuracy"]
        rows = curve(slimmed, examples, shares, tokenizer=tok, of=of, max_length=length, progress=not as_json)
        if plot is not None:
            plot_curve(rows, plot, dense_accuracy=dense, title=f"{run.name}: {data.name} {split}")
    except USER_ERRORS as exc:
        fail(exc)
    if as_json:
        emit_json({"run": str(run), "task": data.name, "split": split, "dense_accuracy": dense, "rows": rows})
        return
    from rich.table import Table

    table = Table(title=f"{data.name} [{split}] from {run} (dense accuracy {dense:.4f})")
    for col in (f"budget ({of})", "accuracy", "vs dense", "MB fp32", "params", "extract s"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            f"{r['budget']:.0%}", f"{r['accuracy']:.4f}", f"{100 * (r['accuracy'] - dense):+.2f}",
            f"{r['bytes_fp32'] / 1e6:.1f}", f"{r['params'] / 1e6:.2f}M", f"{r['extract_s']:.2f}",
        )  # fmt: skip
    console().print(table)
    if plot is not None:
        typer.echo(f"plot written to {plot}")


def _run_task(slimmed):
    """The task a run was trained on (by name) and its max_length."""
    from slimformer.data import load_task

    name = (slimmed.info.get("task") or {}).get("name")
    if not name:
        raise ValueError("this run does not record its task; use `slimformer evaluate` on the extracted model")
    return load_task(name), slimmed.info.get("config", {}).get("max_length", 128)
