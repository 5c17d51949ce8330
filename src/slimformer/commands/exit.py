"""``slimformer exit train|calibrate``: thin commands over :mod:`slimformer.exits`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slimformer.commands.common import (
    USER_ERRORS,
    EvaluateOpt,
    JsonOpt,
    ModelArg,
    OverwriteOpt,
    RecipeMaxLenOpt,
    SeedOpt,
    SetOpt,
    TaskOpt,
    check_labels,
    config_help_command,
    emit_json,
    ensure_output_dir,
    fail,
    load_task_option,
    max_length_for,
    parse_options,
    split_examples,
    split_metrics,
)

exit_app = typer.Typer(
    help="Slenderized multi-exit models: train exits after every layer, pick the exit threshold.",
    no_args_is_help=True,
)

RuleOpt = Annotated[str, typer.Option(help="exit rule: entropy, confidence or patience")]
TargetOpt = Annotated[
    str,
    typer.Option(
        help="what the threshold must meet on validation: accuracy_loss=0.01 (fraction), depth=3, latency=5ms"
    ),
]
SetExit = SetOpt("ExitConfig")
# options of `exit train` declared without help show these configs' field help (read on --help: they load torch)
EXIT_CONFIG, SLENDER_CONFIG = "slimformer.exits.config:ExitConfig", "slimformer.exits.config:SlenderConfig"


def _validation(task, tokenizer, max_length: int, limit: int | None) -> list:
    from slimformer.data import make_loader

    examples = split_examples(task, "validation", limit)
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


def _calibrate(model, data, tok, cal, length: int, limit: int | None, progress: bool):
    """Pick the rule's threshold on the validation split (timing depths on batch-1 inputs for latency)."""
    from slimformer.data import token_length_stats, typical_seq_len
    from slimformer.exits.calibrate import calibrate_rule

    val = _validation(data, tok, length, limit)
    lat = _latency_inputs(val) if cal.target == "latency" else None
    seq = min(length, typical_seq_len(token_length_stats(data.split("train"), tok)))
    return calibrate_rule(model, val, cal, seq_len=seq, latency_inputs=lat, progress=progress)


@exit_app.command("train", cls=config_help_command(EXIT_CONFIG, SLENDER_CONFIG))
def train_command(
    model: ModelArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the multi-exit model (must be empty or new)")],
    task: TaskOpt = "rotten_tomatoes",
    budget: Annotated[
        str | None, typer.Option(help="slenderize first to this budget (macs=0.4,seq=48, params=15M); none: full width")
    ] = None,
    method: Annotated[str, typer.Option()] = "optin",
    calibration_size: Annotated[int, typer.Option(help="training examples scored when slenderizing")] = 1024,
    epochs: Annotated[int, typer.Option()] = 1,
    max_steps: Annotated[int | None, typer.Option()] = None,
    head: Annotated[str, typer.Option()] = "mean",
    set_: SetExit = None,
    batch_size: Annotated[int, typer.Option(help="training examples per step")] = 32,
    max_length: RecipeMaxLenOpt = None,
    limit_train: Annotated[int | None, typer.Option(help="train on the first N training examples only")] = None,
    rule: RuleOpt = "entropy",
    target: TargetOpt = "accuracy_loss=0.01",
    calibrate: Annotated[bool, typer.Option(help="pick the exit threshold on the validation split")] = True,
    evaluate_split: EvaluateOpt = None,
    seed: Annotated[int, typer.Option(help="seed of the data split, batch order and training")] = 0,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
):
    """Add an exit after every layer (optionally slenderizing first), train backbone and exits jointly with
    distillation from the input model, pick the exit threshold on validation data, and save."""
    from slimformer.exits.config import CalibrateConfig, ExitConfig, SlenderConfig
    from slimformer.exits.saving import save_exit
    from slimformer.models import load_model

    try:
        config = ExitConfig.from_dict(
            {"epochs": epochs, "max_steps": max_steps, "head": head, "seed": seed, **parse_options(set_)}
        )
        slender = SlenderConfig(budget=budget, method=method, seed=seed) if budget else None
        cal = CalibrateConfig.parse(rule, target) if calibrate else None
        ensure_output_dir(out, overwrite, inputs=(model,))
        data = load_task_option(task, seed=seed)
        m, tok = load_model(model)
        data = check_labels(m, data, model, task)
        length = max_length_for(data, max_length)
        train = split_examples(data, "train", limit_train)
        result = _train(
            m, tok, train, config, slender, batch_size=batch_size, size=calibration_size, length=length, seed=seed,
            progress=not as_json,
        )  # fmt: skip
        report = {"model": model, "task": data.name, "max_length": length, **result.report}
        if cal is not None:
            c = _calibrate(result.model, data, tok, cal, length, None, not as_json)
            report["calibration"] = {k: v for k, v in c.report.items() if k != "curve"}
        if evaluate_split:
            report["metrics"] = split_metrics(
                result.model, tok, data, evaluate_split, max_length=length, progress=not as_json
            )
        save_exit(result.model, tok, out, overwrite=overwrite, extra=report)
    except USER_ERRORS as exc:
        fail(exc)
    if as_json:
        emit_json(report)
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


def _train(model, tok, train, config, slender, *, batch_size: int, size: int, length: int, seed: int, progress: bool):
    """Train exits (after slenderizing to ``slender``'s budget when given) on the ``train`` examples."""
    from slimformer.exits.train import early_exit, slender_exit, training_batches
    from slimformer.static import calibration_batches

    batches = training_batches(train, tok, batch_size=batch_size, max_length=length, seed=seed)
    if slender is None:
        return early_exit(model, config, batches, progress=progress)
    scored = calibration_batches(train, tok, size=size, seed=seed, max_length=length)
    return slender_exit(model, slender, config, scored, batches, progress=progress)


@exit_app.command("calibrate")
def calibrate_command(
    model: Annotated[Path, typer.Argument(help="a multi-exit model folder (from `slimformer exit train`)")],
    task: TaskOpt = "rotten_tomatoes",
    rule: RuleOpt = "entropy",
    target: TargetOpt = "accuracy_loss=0.01",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="save the recalibrated model here (default: update MODEL)")
    ] = None,
    max_length: RecipeMaxLenOpt = None,
    limit: Annotated[int | None, typer.Option(help="use the first N validation examples only")] = None,
    seed: SeedOpt = 0,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
):
    """Pick the exit rule's threshold on the validation split (no retraining) and store it with the model."""
    from slimformer.exits.config import CalibrateConfig
    from slimformer.exits.model import MultiExitModel
    from slimformer.exits.saving import save_exit, update_rule
    from slimformer.models import load_model

    try:
        cal = CalibrateConfig.parse(rule, target)
        ensure_output_dir(out, overwrite, inputs=(model,))
        m, tok = load_model(str(model))
        if not isinstance(m, MultiExitModel):
            raise ValueError(f"{str(model)!r} is not a multi-exit model; make one with `slimformer exit train`")
        data = load_task_option(task, seed=seed)
        c = _calibrate(m, data, tok, cal, max_length_for(data, max_length), limit, not as_json)
        report = {k: v for k, v in c.report.items() if k != "curve"}
        if out is not None:
            save_exit(m, tok, out, overwrite=overwrite, extra={"calibration": report})
        else:
            update_rule(model, c.rule, {"config": cal.to_dict(), "chosen": c.report["chosen"]})
    except USER_ERRORS as exc:
        fail(exc)
    if as_json:
        emit_json(report)
        return
    ch, ref = report["chosen"], report["reference"]
    typer.echo(
        f"rule {c.rule}: validation accuracy {ch['accuracy']:.4f} (full depth {ref['accuracy']:.4f}), "
        f"average exit layer {ch['avg_exit_layer']:.2f}; saved to {out or model}"
    )
