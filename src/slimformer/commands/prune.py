"""``slimformer prune``: one-shot structured pruning to a budget (no retraining)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slimformer.commands.common import (
    USER_ERRORS,
    CalibrationOpt,
    EvaluateOpt,
    JsonOpt,
    LabelCol,
    ModelArg,
    OverwriteOpt,
    PairCol,
    SetOpt,
    TaskOpt,
    TestFileOpt,
    TextCol,
    ValFileOpt,
    config_help_command,
    emit_json,
    ensure_output_dir,
    fail,
    model_and_task,
    parse_options,
    split_metrics,
)

SetPrune = SetOpt("method", "head_examples=256")


class PruneCommand(config_help_command("slimformer.static.prune:PruneConfig")):
    """Options declared without help show the PruneConfig field's help, and ``--method`` the registered
    pruners, read when help is shown (the config module and the registry load torch)."""

    def complete_help(self) -> None:
        from slimformer.compose import pruners

        super().complete_help()
        (method,) = (p for p in self.params if p.name == "method")
        method.help = f"one-shot pruning method: {', '.join(pruners())}"


def prune(
    model: ModelArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the pruned model (must be empty or new)")],
    budget: Annotated[str, typer.Option()] = "macs=0.5",
    method: Annotated[str, typer.Option()] = "optin",
    task: TaskOpt = "rotten_tomatoes",
    calibration: CalibrationOpt = 1024,
    max_length: Annotated[int, typer.Option(help="truncate calibration inputs to this many tokens")] = 64,
    repair: Annotated[bool, typer.Option()] = True,
    seed: Annotated[int, typer.Option(help="seed of the calibration sample and the method")] = 0,
    set_: SetPrune = None,
    evaluate_split: EvaluateOpt = None,
    text_column: TextCol = "text",
    text_pair_column: PairCol = None,
    label_column: LabelCol = "label",
    validation_file: ValFileOpt = None,
    test_file: TestFileOpt = None,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
):
    """Prune heads and FFN neurons in one shot (no retraining) to fit a budget; save the smaller model.

    A token classifier takes a token task (--task wnut16 or a CoNLL / JSONL file) and is scored per token."""
    from slimformer.commands.kinds import folder_kind, token_metrics, token_model_and_task
    from slimformer.export import save_model
    from slimformer.static import PruneConfig, calibration_batches
    from slimformer.static import prune as run_prune
    from slimformer.tasks import task_kind
    from slimformer.token_data import calibration_token_batches

    try:
        config = PruneConfig.from_dict(
            {"method": method, "budget": budget, "repair": repair, "seed": seed, **parse_options(set_)}
        )
        ensure_output_dir(out, overwrite, inputs=(model,))
        token = folder_kind(model) == "token"  # a token task: tagged words, per-token scoring, entity F1
        if token:
            m, tok, data = token_model_and_task(model, task)
            train = data.split("train")
            batches = calibration_token_batches(train, tok, size=calibration, seed=seed, max_length=max_length)
        else:
            m, tok, data = model_and_task(
                model, task, text_column, text_pair_column, label_column, 0, validation_file, test_file
            )
            batches = calibration_batches(data.split("train"), tok, size=calibration, seed=seed, max_length=max_length)
        result = run_prune(m, config, batches, progress=not as_json)
        report = {"model": model, "task": data.name, "kind": task_kind(m, data.split("train")[:1]), **result.report}
        if evaluate_split and token:
            report["metrics"] = token_metrics(result.model, tok, data, evaluate_split)
        elif evaluate_split:
            report["metrics"] = split_metrics(
                result.model, tok, data, evaluate_split, max_length=128, progress=not as_json
            )
        save_model(result.model, tok, out, overwrite=overwrite, extra=report)
    except USER_ERRORS as exc:
        fail(exc)
    if as_json:
        emit_json(report)
        return
    rel = report["relative"]
    typer.echo(
        f"{method} -> {config.budget}: MACs {rel['macs']:.1%}, params {rel['params']:.1%} of dense "
        f"({report['seconds']['total']:.1f}s); saved to {out}"
    )
    if "metrics" in report:
        shown = {k: v for k, v in report["metrics"].items() if k in ("accuracy", "entity_f1")}
        typer.echo(f"{report['metrics']['split']} " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()))
