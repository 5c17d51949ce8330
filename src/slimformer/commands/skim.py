"""``slimformer skim train|calibrate|report``: thin commands over :mod:`slimformer.skim`."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer

from slimformer.commands.common import (
    USER_ERRORS,
    BatchSizesOpt,
    JsonOpt,
    LabelCol,
    OverwriteOpt,
    PairCol,
    ResumeOpt,
    SeedOpt,
    SetOpt,
    TaskOpt,
    TestFileOpt,
    TextCol,
    ValFileOpt,
    emit_json,
    ensure_output_dir,
    fail,
    field_readers,
    load_task_option,
    model_and_task,
    parse_options,
)
from slimformer.skim.config import SkimConfig  # torch-free: its field help texts are the options' help

skim_app = typer.Typer(
    help="Token skimming: a predictor before each layer drops tokens; they are removed for real at inference.",
    no_args_is_help=True,
)


_help, _default = field_readers(SkimConfig)


KeepOpt = Annotated[
    float | None, typer.Option("--keep", help="calibrate the threshold shift on validation to this mean kept fraction")
]
MacsOpt = Annotated[
    float | None, typer.Option("--macs", help="or calibrate it to this fraction of the dense MACs (predictors counted)")
]
LatencyOpt = Annotated[
    float | None,
    typer.Option(
        "--latency-ms",
        help="or to this wall clock per batch in ms, timed on this machine on validation batches "
        "of --latency-batch-size",
    ),
]
LatencyBatchOpt = Annotated[int, typer.Option(help="batch size the --latency-ms target is for")]
SetSkim = SetOpt("SkimConfig")


@skim_app.command("train")
def train_command(
    model: Annotated[str, typer.Argument(help="fine-tuned classifier: built-in name, local folder or hub id")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the skimming model (must be empty or new)")],
    task: TaskOpt = "rotten_tomatoes",
    skim_weight: Annotated[float, typer.Option("--lambda", help=_help("skim_weight"))] = _default("skim_weight"),
    epochs: Annotated[int, typer.Option(help=_help("epochs"))] = _default("epochs"),
    lr: Annotated[float, typer.Option(help=_help("lr"))] = _default("lr"),
    predictor_lr: Annotated[float, typer.Option(help=_help("predictor_lr"))] = _default("predictor_lr"),
    batch_size: Annotated[int, typer.Option(help=_help("batch_size"))] = _default("batch_size"),
    max_length: Annotated[int, typer.Option(help=_help("max_length"))] = _default("max_length"),
    distill: Annotated[float, typer.Option(help=_help("distill"))] = _default("distill"),
    max_examples: Annotated[int | None, typer.Option(help=_help("max_examples"))] = None,
    max_steps: Annotated[int | None, typer.Option(help=_help("max_steps"))] = None,
    set_: SetSkim = None,
    keep: KeepOpt = None,
    macs: MacsOpt = None,
    latency_ms: LatencyOpt = None,
    latency_batch_size: LatencyBatchOpt = 1,
    evaluate_split: Annotated[
        str | None, typer.Option("--evaluate", help="report accuracy, kept tokens and MACs on this split (e.g. test)")
    ] = None,
    text_column: TextCol = "text",
    text_pair_column: PairCol = None,
    label_column: LabelCol = "label",
    validation_file: ValFileOpt = None,
    test_file: TestFileOpt = None,
    seed: Annotated[int, typer.Option(help="seed of the data split, the subset and the Gumbel noise")] = 0,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
):
    """Train skim predictors (fine-tuning the model with them) and save the skimming model."""
    from slimformer.export import prepare_output_dir
    from slimformer.skim.measure import measure_skim, tokenized_batches
    from slimformer.skim.saving import write_skim
    from slimformer.skim.train import CHECKPOINTS_DIR, skim

    try:
        if resume and overwrite:
            raise ValueError("--resume and --overwrite exclude each other")
        config = SkimConfig.from_dict(
            {
                "skim_weight": skim_weight, "epochs": epochs, "lr": lr, "predictor_lr": predictor_lr,
                "batch_size": batch_size, "max_length": max_length, "distill": distill, "max_examples": max_examples,
                "max_steps": max_steps, "seed": seed, **parse_options(set_),
            }
        )  # fmt: skip
        ensure_output_dir(out, overwrite, resume=resume, inputs=(model,))
        if not resume:
            prepare_output_dir(out, overwrite=overwrite)
        m, tok, data = model_and_task(
            model, task, text_column, text_pair_column, label_column, seed, validation_file, test_file
        )
        result = skim(m, config, data, tokenizer=tok, out_dir=out, resume=resume, progress=not as_json)
        report = {"model": model, "task": data.name, **result.report}
        if keep is not None or macs is not None or latency_ms is not None:
            targets = {"keep": keep, "macs": macs, "latency_ms": latency_ms}
            report["calibration"] = _calibrate(
                result.model, data, tok, config.max_length, targets, latency_batch_size, not as_json
            )
        if evaluate_split:
            batches = tokenized_batches(data.split(evaluate_split), tok, max_length=config.max_length)
            report["metrics"] = {"split": evaluate_split, **measure_skim(result.model, batches, progress=not as_json)}
        write_skim(result.model, tok, out, report=report)
        shutil.rmtree(out / CHECKPOINTS_DIR, ignore_errors=True)  # optimizer states: only for resuming
    except USER_ERRORS as exc:
        fail(exc)
    if as_json:
        emit_json(report)
    else:
        _echo_trained(report, out, evaluate_split)


def _echo_trained(report: dict, out: Path, evaluate_split: str | None) -> None:
    last = report["epochs"][-1] if report["epochs"] else {}
    typer.echo(f"saved skimming model to {out} ({report['global_step']} steps, {report['wall_time_s']:.0f}s)")
    if "validation" in last:
        _echo_measure("validation", last["validation"])
    if "calibration" in report:
        c = report["calibration"]
        typer.echo(f"calibrated shift {c['shift']:.4f}: {c['metric']} {c['achieved']:.4f} (target {c['target']})")
    if "metrics" in report:
        _echo_measure(evaluate_split, report["metrics"])


#: validation batches a latency calibration times per trial (enough for a stable median, few enough to be quick)
LATENCY_BATCHES = 16


def _calibrate(model, data, tok, max_length: int, targets: dict, latency_batch_size: int, progress: bool) -> dict:
    from slimformer.skim.calibrate import calibrate_shift
    from slimformer.skim.measure import tokenized_batches

    examples = data.split("validation")
    if targets.get("latency_ms") is not None:
        if latency_batch_size < 1:
            raise ValueError(f"--latency-batch-size={latency_batch_size}: must be >= 1")
        n = min(len(examples) // latency_batch_size, LATENCY_BATCHES) * latency_batch_size
        if n == 0:
            raise ValueError(
                f"{len(examples)} validation examples cannot fill one batch of "
                f"--latency-batch-size={latency_batch_size}"
            )
        batches = tokenized_batches(examples[:n], tok, batch_size=latency_batch_size, max_length=max_length)
    else:
        batches = tokenized_batches(examples, tok, max_length=max_length)
    return calibrate_shift(model, batches, **targets, progress=progress)


def _echo_measure(split: str, m: dict) -> None:
    acc = f"accuracy {m['accuracy']:.4f}, " if "accuracy" in m else ""
    kept = " ".join(f"{k:.2f}" for k in m["kept_fraction"])
    typer.echo(
        f"{split}: {acc}kept fraction per layer [{kept}], MACs/seq {m['macs'] / 1e6:.1f}M "
        f"({m['relative_macs']:.1%} of dense, predictors {m['predictor_macs'] / 1e6:.2f}M), shift {m['shift']:.3f}"
    )


@skim_app.command("calibrate")
def calibrate_command(
    folder: Annotated[Path, typer.Argument(help="a skimming model folder (from `slimformer skim train`)")],
    task: TaskOpt = "rotten_tomatoes",
    keep: KeepOpt = None,
    macs: MacsOpt = None,
    latency_ms: LatencyOpt = None,
    latency_batch_size: LatencyBatchOpt = 1,
    max_length: Annotated[int, typer.Option(help="truncate validation inputs to this many tokens")] = 128,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="save the calibrated copy here (default: in place)")
    ] = None,
    overwrite: OverwriteOpt = False,
    seed: SeedOpt = 0,
    as_json: JsonOpt = False,
):
    """Set the inference threshold shift so validation data meets a kept-token, MACs or latency target.

    No retraining: a higher shift keeps fewer tokens. A latency target is timed on this machine.
    """
    from slimformer.models import load_model
    from slimformer.skim.model import is_skim_model
    from slimformer.skim.saving import save_skim

    try:
        m, tok = load_model(str(folder))
        if not is_skim_model(m):
            raise ValueError(f"{str(folder)!r} is not a skimming model; train one with `slimformer skim train`")
        data = load_task_option(task, seed=seed)
        targets = {"keep": keep, "macs": macs, "latency_ms": latency_ms}
        result = _calibrate(m, data, tok, max_length, targets, latency_batch_size, not as_json)
        if out is None:
            m.config.save_pretrained(folder)  # only the shift in config.json changes
        else:
            save_skim(m, tok, out, overwrite=overwrite, report={"calibration": result})
    except USER_ERRORS as exc:
        fail(exc)
    if as_json:
        emit_json(result)
        return
    typer.echo(
        f"shift {result['shift']:.4f}: {result['metric']} {result['achieved']:.4f} (target {result['target']}); "
        f"saved to {out or folder}"
    )


@skim_app.command("report")
def report_command(
    folder: Annotated[Path, typer.Argument(help="a skimming model folder")],
    task: TaskOpt = "rotten_tomatoes",
    split: Annotated[str, typer.Option(help="train, validation or test")] = "test",
    max_length: Annotated[int, typer.Option(help="truncate inputs to this many tokens")] = 128,
    vs: Annotated[str | None, typer.Option("--vs", help="dense model to time against on the same real batches")] = None,
    batch_sizes: BatchSizesOpt = "1,32",
    repeats: Annotated[int, typer.Option(help="timed rounds per batch size")] = 10,
    seed: SeedOpt = 0,
    as_json: JsonOpt = False,
):
    """Accuracy, kept tokens per layer and MACs (predictors counted) on a split; with --vs, wall clock too."""
    from slimformer.bench import parse_int_list
    from slimformer.models import load_model
    from slimformer.skim.measure import measure_skim, tokenized_batches
    from slimformer.skim.model import is_skim_model
    from slimformer.skim.timing import real_batches, speedups, time_on_batches

    try:
        m, tok = load_model(str(folder))
        if not is_skim_model(m):
            raise ValueError(f"{str(folder)!r} is not a skimming model")
        data = load_task_option(task, seed=seed)
        examples = data.split(split)
        report = measure_skim(m, tokenized_batches(examples, tok, max_length=max_length), progress=not as_json)
        if vs is not None:
            dense, _ = load_model(vs)
            batches = real_batches(examples, tok, batch_sizes=parse_int_list(batch_sizes), max_length=max_length)
            timing = time_on_batches({"skim": m, "dense": dense}, batches, repeats=repeats, progress=not as_json)
            report["latency_ms"] = {
                name: {r["batch_size"]: r["median_ms"] for r in res["results"]} for name, res in timing.items()
            }
            report["speedup"] = speedups(timing, reference="dense")["skim"]
    except USER_ERRORS as exc:
        fail(exc)
    if as_json:
        emit_json(report)
        return
    _echo_measure(split, report)
    for b, s in report.get("speedup", {}).items():
        lat = report["latency_ms"]
        typer.echo(f"batch {b}: skim {lat['skim'][b]:.1f} ms vs dense {lat['dense'][b]:.1f} ms: {s:.2f}x")
