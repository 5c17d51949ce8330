"""The ``slimformer`` command: each subcommand is a thin layer over a library function.

Tables and human-readable text go to stdout; with ``--json`` stdout holds only JSON, so a script
can parse it. Progress bars and logs go to stderr.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Make fine-tuned transformer encoders smaller and faster, and measure it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ModelArg = Annotated[str, typer.Argument(help="built-in model (see `slimformer list`), local folder, or hub id")]
TaskOpt = Annotated[
    str, typer.Option("--task", "-t", help="built-in task (see `slimformer list`), or a CSV/TSV/JSONL file")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print machine-readable JSON only")]
TextCol = Annotated[str, typer.Option(help="column holding the text (user files)")]
PairCol = Annotated[str | None, typer.Option(help="optional second text column for pair tasks (user files)")]
LabelCol = Annotated[str, typer.Option(help="column holding the label (user files)")]
SeedOpt = Annotated[int, typer.Option(help="seed of the train/validation/test split")]


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # our own bars show progress; theirs repeat on every load


def _console():
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze tables into 80 columns
        console = Console(width=140)
    return console


def _emit_json(data) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


def load_task_option(task: str, text_column: str, text_pair_column: str | None, label_column: str, seed: int = 0):
    """The task named by ``--task`` with the user-file column options (one place for every command)."""
    from slimformer.data import load_task

    return load_task(
        task, text_column=text_column, text_pair_column=text_pair_column, label_column=label_column, seed=seed
    )


def _fractions(text: str, option: str) -> tuple[float, ...]:
    """``"0.6,0.4"`` -> ``(0.6, 0.4)``; a clear error naming the option and the bad text otherwise."""
    try:
        return tuple(float(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise ValueError(f"{option} {text!r}: expected comma-separated fractions such as 0.6,0.4") from None


def _ft_field(name: str):
    from slimformer.train import FinetuneConfig

    return {f.name: f for f in dataclasses.fields(FinetuneConfig)}[name]


def _ft_help(name: str) -> str:
    return _ft_field(name).metadata["help"]


def _ft_default(name: str):
    return _ft_field(name).default


USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, ImportError)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log progress messages")] = False):
    _setup_logging(verbose)


@app.command("list")
def list_builtins(as_json: JsonOpt = False):
    """List the built-in models and tasks (installed from packages, no download)."""
    from slimformer.data import BUILTIN_TASKS
    from slimformer.models import BUILTIN_MODELS

    data = {"models": {k: v[1] for k, v in BUILTIN_MODELS.items()}, "tasks": dict(BUILTIN_TASKS)}
    if as_json:
        _emit_json(data)
        return
    for kind, items in data.items():
        typer.echo(f"{kind}:")
        for name, desc in items.items():
            typer.echo(f"  {name:18s} {desc}")


@app.command()
def info(
    model: ModelArg,
    seq_len: Annotated[int, typer.Option("--seq-len", help="tokens per sequence for MACs")] = 128,
    as_json: JsonOpt = False,
):
    """Parameters, bytes and MACs of a model, from the cost model, with per-layer shapes."""
    from slimformer.cost import cost_of, marginal_costs
    from slimformer.models import load_model
    from slimformer.report import human
    from slimformer.structure import Structure

    try:
        m, _ = load_model(model)
        structure = Structure.from_model(m)
        cost = cost_of(structure, seq_len)
    except USER_ERRORS as exc:
        _fail(exc)
    data = {
        "model": model,
        "family": structure.dims.family,
        **cost.to_dict(),
        "marginal": marginal_costs(structure, seq_len),
    }
    if as_json:
        _emit_json(data)
        return
    typer.echo(
        f"{model} ({structure.dims.family}, hidden {structure.dims.hidden}, head size {structure.dims.head_size})"
    )
    typer.echo(f"  params       {cost.params:,} ({human(cost.params)}), encoder {cost.encoder_params:,}")
    typer.echo(
        f"  bytes        fp32 {human(cost.bytes_fp32)}B, fp16 {human(cost.bytes_fp16)}B, int8 {human(cost.bytes_int8)}B"
    )
    typer.echo(f"  MACs/seq     {cost.macs:,} ({human(cost.macs)}) at {seq_len} tokens")
    typer.echo(f"               ({data['macs_note']})")
    for i, layer in enumerate(cost.layers):
        typer.echo(f"  layer {i:2d}     heads {layer['heads']:3d}  ffn {layer['ffn']:5d}  MACs {human(layer['macs'])}")


@app.command()
def evaluate(
    model: ModelArg,
    task: TaskOpt = "rotten_tomatoes",
    split: Annotated[str, typer.Option(help="train, validation or test")] = "test",
    max_length: Annotated[int, typer.Option(help="truncate inputs to this many tokens")] = 128,
    batch_size: Annotated[int, typer.Option(help="examples per batch")] = 64,
    text_column: TextCol = "text",
    text_pair_column: PairCol = None,
    label_column: LabelCol = "label",
    seed: SeedOpt = 0,
    as_json: JsonOpt = False,
):
    """Task metrics (accuracy, macro F1, MCC for binary tasks) of a model on one split."""
    from slimformer.evaluate import evaluate as run_eval
    from slimformer.models import load_model

    try:
        data = load_task_option(task, text_column, text_pair_column, label_column, seed)
        examples = data.split(split)
        m, tok = load_model(model, require_head=True)
        if m.config.num_labels != data.num_labels:
            raise ValueError(
                f"model {model!r} has {m.config.num_labels} labels but task {task!r} has {data.num_labels}"
            )
        metrics = run_eval(m, tok, examples, batch_size=batch_size, max_length=max_length, progress=not as_json)
    except USER_ERRORS as exc:
        _fail(exc)
    if as_json:
        _emit_json(metrics)
    else:
        typer.echo(
            f"{model} on {task} [{split}]: "
            + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
        )


@app.command()
def bench(
    model: ModelArg,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="comma-separated batch sizes")] = "1,32",
    seq_len: Annotated[int, typer.Option("--seq-len", help="tokens per sequence")] = 128,
    repeats: Annotated[int, typer.Option(help="timed runs per batch size")] = 20,
    warmup: Annotated[int, typer.Option(help="untimed runs first")] = 3,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's choice)")] = None,
    vs: Annotated[str | None, typer.Option("--vs", help="a reference model to compare against")] = None,
    as_json: JsonOpt = False,
):
    """Wall-clock latency and throughput per batch size (median and spread), optionally vs another model.

    With --vs the two models are timed in alternating calls, so the speedup is not skewed by the machine
    getting busier or quieter between the two runs.
    """
    from slimformer.bench import BenchConfig, bench_model, bench_models, compare, format_table, parse_int_list
    from slimformer.models import load_model

    try:
        config = BenchConfig(
            batch_sizes=parse_int_list(batch_sizes),
            seq_len=seq_len,
            repeats=repeats,
            warmup=warmup,
            threads=threads,
        )
        m, _ = load_model(model)
        other = None
        if vs is None:
            result = bench_model(m, config, progress=not as_json)
        else:
            # Interleaved: both models share any drift of the machine, so their ratio is trustworthy.
            ref, _ = load_model(vs)
            both = bench_models({"model": m, "vs": ref}, config, progress=not as_json)
            result, other = both["model"], both["vs"]
    except USER_ERRORS as exc:
        _fail(exc)
    if as_json:
        data = {"model": model, **result}
        if other is not None:
            data["vs"] = {"model": vs, **other}
            data["comparison"] = compare(result, other)
        _emit_json(data)
    else:
        typer.echo(format_table(result, other))


@app.command()
def finetune(
    model: ModelArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder (must be empty or new)")],
    task: TaskOpt = "rotten_tomatoes",
    epochs: Annotated[int, typer.Option(help=_ft_help("epochs"))] = _ft_default("epochs"),
    lr: Annotated[float, typer.Option(help=_ft_help("lr"))] = _ft_default("lr"),
    batch_size: Annotated[int, typer.Option(help=_ft_help("batch_size"))] = _ft_default("batch_size"),
    max_length: Annotated[int, typer.Option(help=_ft_help("max_length"))] = _ft_default("max_length"),
    warmup_ratio: Annotated[float, typer.Option(help=_ft_help("warmup_ratio"))] = _ft_default("warmup_ratio"),
    weight_decay: Annotated[float, typer.Option(help=_ft_help("weight_decay"))] = _ft_default("weight_decay"),
    seed: Annotated[int, typer.Option(help=_ft_help("seed") + " Also seeds the data split.")] = _ft_default("seed"),
    max_steps: Annotated[int | None, typer.Option(help=_ft_help("max_steps"))] = None,
    text_column: TextCol = "text",
    text_pair_column: PairCol = None,
    label_column: LabelCol = "label",
    resume: Annotated[bool, typer.Option("--resume", help="continue from the last epoch checkpoint in --out")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a non-empty --out")] = False,
    as_json: JsonOpt = False,
):
    """Fine-tune a model on a task (runs on Accelerate: `accelerate launch -m slimformer.cli finetune ...`)."""
    from slimformer.models import load_model
    from slimformer.train import FinetuneConfig
    from slimformer.train import finetune as run_finetune

    try:
        config = FinetuneConfig(
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            max_length=max_length,
            warmup_ratio=warmup_ratio,
            weight_decay=weight_decay,
            seed=seed,
            max_steps=max_steps,
        )
        data = load_task_option(task, text_column, text_pair_column, label_column, seed)
        if out.exists() and any(out.iterdir()) and not (overwrite or resume):
            raise FileExistsError(f"output folder {str(out)!r} is not empty; pass --overwrite or --resume")
        m, tok = load_model(model, label_names=data.label_names)
        report = run_finetune(m, tok, data, config, out, resume=resume, overwrite=overwrite, progress=not as_json)
    except USER_ERRORS as exc:
        _fail(exc)
    if as_json:
        _emit_json(report)
    else:
        typer.echo(f"saved fine-tuned model to {out}")
        typer.echo(json.dumps(report.get("validation", report.get("epochs", [])), indent=2, default=str))


def _parse_options(items: list[str]) -> dict:
    """``["head_examples=256", "repair=false"]`` -> typed values (JSON literals, else strings)."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set head_examples=256")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


@app.command()
def prune(
    model: ModelArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the pruned model (must be empty or new)")],
    budget: Annotated[
        str, typer.Option(help="e.g. macs=0.5, params=12M, memory=40MB, latency=8ms,batch=1,seq=128")
    ] = "macs=0.5",
    method: Annotated[str, typer.Option(help="optin, fisher, magnitude or random")] = "optin",
    task: TaskOpt = "rotten_tomatoes",
    calibration: Annotated[int, typer.Option(help="calibration examples sampled from the train split")] = 1024,
    max_length: Annotated[int, typer.Option(help="truncate calibration inputs to this many tokens")] = 64,
    repair: Annotated[bool, typer.Option(help="least-squares refit of the kept units' output projections")] = True,
    seed: Annotated[int, typer.Option(help="seed of the calibration sample and the method")] = 0,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="method field FIELD=VALUE (repeatable), e.g. head_examples=256")
    ] = None,
    evaluate_split: Annotated[
        str | None, typer.Option("--evaluate", help="also report metrics on this split (e.g. test)")
    ] = None,
    text_column: TextCol = "text",
    text_pair_column: PairCol = None,
    label_column: LabelCol = "label",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a non-empty --out")] = False,
    as_json: JsonOpt = False,
):
    """Prune heads and FFN neurons in one shot (no retraining) to fit a budget; save the smaller model."""
    from slimformer.evaluate import evaluate as run_eval
    from slimformer.export import save_model
    from slimformer.models import load_model
    from slimformer.static import PruneConfig, calibration_batches
    from slimformer.static import prune as run_prune

    try:
        config = PruneConfig.from_dict(
            {"method": method, "budget": budget, "repair": repair, "seed": seed, **_parse_options(set_ or [])}
        )
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise FileExistsError(f"output folder {str(out)!r} is not empty; choose another or pass --overwrite")
        data = load_task_option(task, text_column, text_pair_column, label_column)
        m, tok = load_model(model, require_head=True)
        batches = calibration_batches(data.split("train"), tok, size=calibration, seed=seed, max_length=max_length)
        result = run_prune(m, config, batches, progress=not as_json)
        report = {"model": model, "task": data.name, **result.report}
        if evaluate_split:
            report["metrics"] = {
                "split": evaluate_split,
                **run_eval(result.model, tok, data.split(evaluate_split), max_length=128, progress=not as_json),
            }
        save_model(result.model, tok, out, overwrite=overwrite, extra=report)
    except USER_ERRORS as exc:
        _fail(exc)
    if as_json:
        _emit_json(report)
        return
    rel = report["relative"]
    typer.echo(
        f"{method} -> {config.budget}: MACs {rel['macs']:.1%}, params {rel['params']:.1%} of dense "
        f"({report['seconds']['total']:.1f}s); saved to {out}"
    )
    if "metrics" in report:
        typer.echo(f"{report['metrics']['split']} accuracy {report['metrics']['accuracy']:.4f}")


@app.command()
def compress(
    model: ModelArg,
    recipe: Annotated[Path, typer.Option("--recipe", "-r", help="YAML or JSON file with a list of steps")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the compressed model (must be empty or new)")],
    task: TaskOpt = "rotten_tomatoes",
    calibration: Annotated[int, typer.Option(help="calibration examples sampled from the train split")] = 1024,
    max_length: Annotated[int, typer.Option(help="truncate calibration and validation inputs")] = 128,
    seed: Annotated[int, typer.Option(help="seed of the calibration sample")] = 0,
    evaluate_split: Annotated[
        str | None, typer.Option("--evaluate", help="also report metrics of the result on this split (e.g. test)")
    ] = None,
    text_column: TextCol = "text",
    text_pair_column: PairCol = None,
    label_column: LabelCol = "label",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a non-empty --out")] = False,
    as_json: JsonOpt = False,
):
    """Run a recipe (e.g. prune to macs=0.5, then int8) and save the result with one report.

    The recipe is checked whole before any work: an unknown step, a bad field or an impossible order
    fails at once, naming the step. Relative budgets are fractions of MODEL, whatever step they are in.
    Steps: prune (optin, fisher, magnitude, random), axformer, recover (distil from MODEL on train), int8 or
    bf16 (last).
    """
    from slimformer.compose import RecipeContext, load_recipe, save_result
    from slimformer.compose import compress as run_compress
    from slimformer.evaluate import evaluate as run_eval
    from slimformer.models import load_model

    try:
        steps = load_recipe(recipe)
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise FileExistsError(f"output folder {str(out)!r} is not empty; choose another or pass --overwrite")
        data = load_task_option(task, text_column, text_pair_column, label_column)
        m, tok = load_model(model, require_head=True)
        context = RecipeContext(
            tokenizer=tok, task=data, max_length=max_length, calibration=calibration, seed=seed, progress=not as_json
        )
        result, report = run_compress(m, steps, context)
        report = {"model": model, "task": data.name, "recipe": str(recipe), **report}
        if evaluate_split:
            report["metrics"] = {
                "split": evaluate_split,
                **run_eval(result, tok, data.split(evaluate_split), max_length=max_length, progress=not as_json),
            }
        save_result(result, tok, out, overwrite=overwrite, extra=report)
    except USER_ERRORS as exc:
        _fail(exc)
    if as_json:
        _emit_json(report)
        return
    for e in report["steps"]:
        shape = f", params {e['params'] / 1e6:.2f}M, MACs {e['macs'] / 1e6:.0f}M" if "params" in e else ""
        typer.echo(f"step {e['index']} {e['step']}: {e['seconds']:.1f}s{shape}")
    if "metrics" in report:
        typer.echo(f"{report['metrics']['split']} accuracy {report['metrics']['accuracy']:.4f}")
    typer.echo(f"saved to {out}")


@app.command()
def pareto(
    model: ModelArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the plots and tables (must be empty or new)")],
    task: TaskOpt = "rotten_tomatoes",
    methods: Annotated[
        str, typer.Option(help="comma-separated pruning methods; METHOD+int8 / METHOD+bf16 adds that version")
    ] = "optin,fisher,magnitude,optin+int8",
    budgets: Annotated[str, typer.Option(help="comma-separated relative budgets in (0, 1]")] = "0.8,0.6,0.5,0.4,0.3",
    kind: Annotated[str, typer.Option(help="budget kind of the sweep: macs, params or memory")] = "macs",
    seq_len: Annotated[int, typer.Option("--seq-len", help="tokens per sequence for MACs and latency")] = 128,
    batch_sizes: Annotated[
        str, typer.Option("--batch-sizes", help="comma-separated batch sizes to time; the first is the plot's axis")
    ] = "1,32",
    repeats: Annotated[int, typer.Option(help="timed calls per model (all models interleaved)")] = 10,
    calibration: Annotated[int, typer.Option(help="calibration examples sampled from the train split")] = 1024,
    max_length: Annotated[int, typer.Option(help="truncate inputs to this many tokens")] = 128,
    text_column: TextCol = "text",
    text_pair_column: PairCol = None,
    label_column: LabelCol = "label",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a non-empty --out")] = False,
    as_json: JsonOpt = False,
):
    """Run methods over a sweep of budgets; write accuracy-latency and accuracy-memory frontiers (PNG + table)."""
    from slimformer.bench import parse_int_list
    from slimformer.export import prepare_output_dir
    from slimformer.models import load_model
    from slimformer.pareto import ParetoConfig, markdown, plot_frontier, sweep
    from slimformer.report import write_json

    try:
        config = ParetoConfig(
            methods=methods, budgets=budgets, kind=kind, seq_len=seq_len, batch_sizes=parse_int_list(batch_sizes),
            repeats=repeats, calibration=calibration, max_length=max_length,
        )  # fmt: skip
        folder = prepare_output_dir(out, overwrite=overwrite)
        data = load_task_option(task, text_column, text_pair_column, label_column)
        m, tok = load_model(model, require_head=True)
        result = sweep(m, tok, data, config, name="dense", progress=not as_json)
    except USER_ERRORS as exc:
        _fail(exc)
    result.pop("models")
    points = result["points"]
    batch_size = config.batch_sizes[0]
    title = f"{model} on {data.name} (test split)"
    result["plots"] = {
        "latency": str(plot_frontier(points, "latency_ms", folder / "frontier_latency.png",
                                     xlabel=f"latency at batch {batch_size} x {seq_len} tokens (ms)", title=title)),
        "memory": str(plot_frontier(points, "bytes", folder / "frontier_memory.png",
                                    xlabel="weights (MB, as stored)", title=title)),
    }  # fmt: skip
    result.update(model=model, task=data.name)
    write_json(folder / "pareto.json", result)
    table = markdown(points, batch_sizes=config.batch_sizes)
    (folder / "pareto.md").write_text(f"# Frontier: {title}\n\n{table}\n")
    if as_json:
        _emit_json(result)
        return
    typer.echo(table)
    typer.echo("* = on the accuracy-latency frontier, † = on the accuracy-memory frontier")
    typer.echo(f"plots: {result['plots']['latency']}, {result['plots']['memory']}; table: {folder / 'pareto.md'}")


@app.command()
def demo(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="run folder (default: runs/<model>-<task>-<time>)")
    ] = None,
    model: Annotated[str, typer.Option(help="model to fine-tune and measure")] = "minilm-l6",
    task: TaskOpt = "rotten_tomatoes",
    repeats: Annotated[int, typer.Option(help="timed runs per batch size (all models interleaved)")] = 10,
    methods: Annotated[
        str, typer.Option(help="comma-separated methods of the sweep; METHOD+int8 / METHOD+bf16 adds that version")
    ] = "optin,fisher,optin+int8",
    budgets: Annotated[str, typer.Option(help="comma-separated MACs budgets of the sweep (fractions)")] = "0.6,0.4",
    onnx: Annotated[
        str, typer.Option(help="METHOD@BUDGET of the sweep to export to ONNX (onnxruntime int8); 'none' to skip")
    ] = "optin@0.4",
    compress: Annotated[bool, typer.Option(help="run the compression sweep after the dense baseline")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a non-empty --out")] = False,
    as_json: JsonOpt = False,
):
    """The main job: fine-tune (cached), compress several ways, export one model to ONNX, measure, plot.

    Every model is evaluated on the test split and timed in the same interleaved rounds; the table marks
    the accuracy-latency (*) and accuracy-memory (†) frontiers, and the plots are written next to it.
    """
    from datetime import datetime

    from slimformer.pipeline import DemoConfig, run_demo
    from slimformer.report import DEMO_COLUMNS, rich_table

    if out is None:
        out = Path("runs") / f"{model}-{Path(task).stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    try:
        sweep: dict = {"methods": (), "budgets": (), "onnx": None}
        if compress:
            sweep = {
                "methods": tuple(m.strip() for m in methods.split(",") if m.strip()),
                "budgets": _fractions(budgets, "--budgets"),
                "onnx": None if onnx.lower() == "none" else onnx,
            }
        config = DemoConfig(model=model, task=task, repeats=repeats, **sweep)
        report = run_demo(config, out, overwrite=overwrite, progress=not as_json)
    except USER_ERRORS as exc:
        _fail(exc)
    if as_json:
        _emit_json(report)
        return
    console = _console()
    title = f"{model} on {report['task']['name']} (test split)"
    console.print(rich_table(report["rows"], title=title, columns=DEMO_COLUMNS))
    console.print("x = speedup over dense; frontier: * accuracy-latency, † accuracy-memory")
    console.print(f"report: {out / 'report.md'} (and report.json)")
    for name, path in report.get("plots", {}).items():
        console.print(f"plot ({name}): {path}")


def _register_command_modules() -> None:
    """Commands that live in their own modules (thin wrappers over a library function each)."""
    from slimformer.axformer.cli import axformer_command
    from slimformer.commands.export import export_command
    from slimformer.exits.cli import exit_app
    from slimformer.skim.cli import skim_app
    from slimformer.slim.cli import slim_app

    app.command("export")(export_command)
    app.command("axformer")(axformer_command)
    app.add_typer(exit_app, name="exit")
    app.add_typer(skim_app, name="skim")
    app.add_typer(slim_app, name="slim")


_register_command_modules()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
