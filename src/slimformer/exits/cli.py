"""``slimformer exit train|calibrate``: thin commands over :mod:`slimformer.exits`.

Registered in :mod:`slimformer.cli` with ``app.add_typer(exit_app, name="exit")``. Importing this
module loads typer only; the work happens in the library functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

exit_app = typer.Typer(
    help="Slenderized multi-exit models: train exits after every layer, pick the exit threshold.",
    no_args_is_help=True,
)

ModelArg = Annotated[str, typer.Argument(help="built-in model (see `slimformer list`), local folder, or hub id")]
TaskOpt = Annotated[
    str, typer.Option("--task", "-t", help="built-in task (see `slimformer list`), or a CSV/TSV/JSONL file")
]
RuleOpt = Annotated[str, typer.Option(help="exit rule: entropy, confidence or patience")]
TargetOpt = Annotated[
    str,
    typer.Option(
        help="what the threshold must meet on validation: accuracy_loss=0.01 (fraction), depth=3, latency=5ms"
    ),
]
MaxLenOpt = Annotated[int | None, typer.Option(help="truncate inputs to this many tokens (default: the task's recipe)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print machine-readable JSON only")]


def _seq_len(task, tokenizer, max_length: int) -> int:
    from slimformer.data import token_length_stats, typical_seq_len

    return min(max_length, typical_seq_len(token_length_stats(task.split("train"), tokenizer)))


def _validation(task, tokenizer, max_length: int, limit: int | None) -> list:
    from slimformer.data import make_loader

    examples = task.split("validation")[:limit] if limit else task.split("validation")
    return list(make_loader(examples, tokenizer, batch_size=64, max_length=max_length))


def _latency_inputs(batches: list, n: int = 8) -> list[dict]:
    """Batch-1 inputs (padding removed) from the first validation examples, to time each depth."""
    out = []
    for b in batches:
        for i in range(len(b["input_ids"])):
            keep = b["attention_mask"][i].bool()
            out.append({k: v[i : i + 1, keep] for k, v in b.items() if k != "labels"})
            if len(out) == n:
                return out
    return out


@exit_app.command("train")
def train_command(
    model: ModelArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the multi-exit model (must be empty or new)")],
    task: TaskOpt = "rotten_tomatoes",
    budget: Annotated[
        str | None, typer.Option(help="slenderize first to this budget (macs=0.4,seq=48, params=15M); none: full width")
    ] = None,
    method: Annotated[str, typer.Option(help="importance scores for slenderizing: optin or fisher")] = "optin",
    calibration_size: Annotated[int, typer.Option(help="training examples scored when slenderizing")] = 1024,
    epochs: Annotated[int, typer.Option(help="passes over the training split")] = 1,
    max_steps: Annotated[int | None, typer.Option(help="stop after this many steps (smoke runs)")] = None,
    head: Annotated[
        str, typer.Option(help="exit head: mean (of the tokens) or pooler ([CLS]), dense + tanh + linear; or linear")
    ] = "mean",
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="any other ExitConfig field FIELD=VALUE (repeatable)")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="training examples per step")] = 32,
    max_length: MaxLenOpt = None,
    limit_train: Annotated[int | None, typer.Option(help="train on the first N training examples only")] = None,
    rule: RuleOpt = "entropy",
    target: TargetOpt = "accuracy_loss=0.01",
    calibrate: Annotated[bool, typer.Option(help="pick the exit threshold on the validation split")] = True,
    evaluate_split: Annotated[str | None, typer.Option("--evaluate", help="also report metrics on this split")] = None,
    seed: Annotated[int, typer.Option(help="seed of the data split, batch order and training")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a non-empty --out")] = False,
    as_json: JsonOpt = False,
):
    """Add an exit after every layer (optionally slenderizing first), train backbone and exits jointly with
    distillation from the input model, pick the exit threshold on validation data, and save."""
    from slimformer.cli import USER_ERRORS, _emit_json, _fail, _parse_options, load_task_option
    from slimformer.evaluate import evaluate as run_eval
    from slimformer.exits.calibrate import calibrate_rule
    from slimformer.exits.config import CalibrateConfig, ExitConfig, SlenderConfig
    from slimformer.exits.saving import save_exit
    from slimformer.exits.train import early_exit, slender_exit, training_batches
    from slimformer.models import load_model
    from slimformer.pipeline import recipe_for
    from slimformer.static import calibration_batches

    try:
        config = ExitConfig.from_dict(
            {"epochs": epochs, "max_steps": max_steps, "head": head, "seed": seed, **_parse_options(set_ or [])}
        )
        slender = SlenderConfig(budget=budget, method=method, seed=seed) if budget else None
        cal = CalibrateConfig.parse(rule, target) if calibrate else None
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise FileExistsError(f"output folder {str(out)!r} is not empty; choose another or pass --overwrite")
        data = load_task_option(task, "text", None, "label", seed)
        m, tok = load_model(model)
        if m.config.num_labels != data.num_labels:
            raise ValueError(
                f"model {model!r} has {m.config.num_labels} labels but task {task!r} has {data.num_labels}"
            )
        length = max_length or recipe_for(data.name).max_length
        train = data.split("train")[:limit_train] if limit_train else data.split("train")
        batches = training_batches(train, tok, batch_size=batch_size, max_length=length, seed=seed)
        if slender is not None:
            scored = calibration_batches(train, tok, size=calibration_size, seed=seed, max_length=length)
            result = slender_exit(m, slender, config, scored, batches, progress=not as_json)
        else:
            result = early_exit(m, config, batches, progress=not as_json)
        report = {"model": model, "task": data.name, "max_length": length, **result.report}
        if cal is not None:
            val = _validation(data, tok, length, None)
            lat = _latency_inputs(val) if cal.target == "latency" else None
            seq = _seq_len(data, tok, length)
            c = calibrate_rule(result.model, val, cal, seq_len=seq, latency_inputs=lat, progress=not as_json)
            report["calibration"] = {k: v for k, v in c.report.items() if k != "curve"}
        if evaluate_split:
            metrics = run_eval(result.model, tok, data.split(evaluate_split), max_length=length, progress=not as_json)
            report["metrics"] = {"split": evaluate_split, **metrics}
        save_exit(result.model, tok, out, overwrite=overwrite, extra=report)
    except USER_ERRORS as exc:
        _fail(exc)
    if as_json:
        _emit_json(report)
        return
    typer.echo(
        f"trained {result.model.num_layers} exits in {report['seconds']}s; rule {result.model.rule}; saved to {out}"
    )
    if "calibration" in report:
        ch, ref = report["calibration"]["chosen"], report["calibration"]["reference"]
        typer.echo(
            f"validation: accuracy {ch['accuracy']:.4f} (full depth {ref['accuracy']:.4f}), average exit layer "
            f"{ch['avg_exit_layer']:.2f}, MACs {ch['macs_rel']:.1%} of the wrapped classifier"
        )
    if "metrics" in report:
        typer.echo(f"{evaluate_split} accuracy {report['metrics']['accuracy']:.4f}")


@exit_app.command("calibrate")
def calibrate_command(
    model: Annotated[Path, typer.Argument(help="a multi-exit model folder (from `slimformer exit train`)")],
    task: TaskOpt = "rotten_tomatoes",
    rule: RuleOpt = "entropy",
    target: TargetOpt = "accuracy_loss=0.01",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="save the recalibrated model here (default: update MODEL)")
    ] = None,
    max_length: MaxLenOpt = None,
    limit: Annotated[int | None, typer.Option(help="use the first N validation examples only")] = None,
    seed: Annotated[int, typer.Option(help="seed of the data split")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a non-empty --out")] = False,
    as_json: JsonOpt = False,
):
    """Pick the exit rule's threshold on the validation split (no retraining) and store it with the model."""
    from slimformer.cli import USER_ERRORS, _emit_json, _fail, load_task_option
    from slimformer.exits.calibrate import calibrate_rule
    from slimformer.exits.config import CalibrateConfig
    from slimformer.exits.model import MultiExitModel
    from slimformer.exits.saving import save_exit, update_rule
    from slimformer.models import load_model
    from slimformer.pipeline import recipe_for

    try:
        cal = CalibrateConfig.parse(rule, target)
        if out is not None and out.exists() and any(out.iterdir()) and not overwrite:
            raise FileExistsError(f"output folder {str(out)!r} is not empty; choose another or pass --overwrite")
        m, tok = load_model(str(model))
        if not isinstance(m, MultiExitModel):
            raise ValueError(f"{str(model)!r} is not a multi-exit model; make one with `slimformer exit train`")
        data = load_task_option(task, "text", None, "label", seed)
        length = max_length or recipe_for(data.name).max_length
        val = _validation(data, tok, length, limit)
        lat = _latency_inputs(val) if cal.target == "latency" else None
        c = calibrate_rule(m, val, cal, seq_len=_seq_len(data, tok, length), latency_inputs=lat, progress=not as_json)
        report = {k: v for k, v in c.report.items() if k != "curve"}
        if out is not None:
            save_exit(m, tok, out, overwrite=overwrite, extra={"calibration": report})
        else:
            update_rule(model, c.rule, {"config": cal.to_dict(), "chosen": c.report["chosen"]})
    except USER_ERRORS as exc:
        _fail(exc)
    if as_json:
        _emit_json(report)
        return
    ch, ref = report["chosen"], report["reference"]
    typer.echo(
        f"rule {c.rule}: validation accuracy {ch['accuracy']:.4f} (full depth {ref['accuracy']:.4f}), "
        f"average exit layer {ch['avg_exit_layer']:.2f}; saved to {out or model}"
    )
