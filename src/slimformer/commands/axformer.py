"""``slimformer axformer``: one :mod:`slimformer.compose` recipe around the ``axformer`` method.

The command builds the recipe ``axformer`` (the search on the validation split), then with
``--recover-epochs`` ``recover`` (a fine-tune on the train split distilled from the input model, the
recipe's teacher), and runs it with :func:`slimformer.compose.run_steps`; ``--int8-out`` /
``--bf16-out`` are the recipe's last step (``int8`` / ``bf16``), each converting the chain's output
into its own folder. The command's JSON is read from the per-step reports: the search's at the top
level, the recover step's under ``recover``, each copy's under its kind, and the steps run under
``recipe``. Importing this module loads typer only: the options that are ``AxConfig`` fields take
their help from ``AxConfig.field_help()`` when help is shown (:class:`AxCommand`), as its module loads torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slimformer.commands.common import (
    USER_ERRORS,
    EvaluateOpt,
    JsonOpt,
    LabelCol,
    ModelArg,
    PairCol,
    RecipeMaxLenOpt,
    SetOpt,
    TaskOpt,
    TestFileOpt,
    TextCol,
    ValFileOpt,
    config_help_command,
    emit_json,
    ensure_distinct,
    ensure_output_dir,
    fail,
    max_length_for,
    model_and_task,
    parse_options,
    split_metrics,
)

#: the command class: options declared below without help show the AxConfig field's help (read on --help)
AxCommand = config_help_command("slimformer.axformer.config:AxConfig")

BudgetOpt = Annotated[str | None, typer.Option()]
LossTolOpt = Annotated[float, typer.Option()]
TolFromOpt = Annotated[str, typer.Option()]
WorseOpt = Annotated[float, typer.Option()]
AccDropOpt = Annotated[float | None, typer.Option()]
TopkOpt = Annotated[
    str, typer.Option(help="top-k settings tried per layer, comma-separated (ints: keys, floats <1: fraction)")
]
CompensateOpt = Annotated[bool, typer.Option()]
RepairOpt = Annotated[bool, typer.Option()]
HoldoutOpt = Annotated[float, typer.Option(min=0.0, max=0.9)]
GroupsOpt = Annotated[int, typer.Option()]
PassesOpt = Annotated[int, typer.Option()]
SetAx = SetOpt("AxConfig")
ValExamplesOpt = Annotated[
    int | None, typer.Option(help="search on the first N validation examples only (default: all)")
]
FitOpt = Annotated[
    int,
    typer.Option(
        min=0,
        help="the least-squares refits (--compensate, --repair) are fit on this many train inputs, so the "
        "validation split only judges them (0: fit on the validation inputs)",
    ),
]
RecoverOpt = Annotated[
    int,
    typer.Option(
        min=0,
        help="after the search, fine-tune the smaller model this many epochs on the train split, distilled "
        "from the input model (0: no fine-tune; shapes never change)",
    ),
]
Int8OutOpt = Annotated[
    Path | None, typer.Option("--int8-out", help="also save an int8 dynamically quantized copy here")
]
Bf16OutOpt = Annotated[
    Path | None,
    typer.Option("--bf16-out", help="also save a bfloat16 copy here (half the size; fast on CPUs with native bf16)"),
]


def axformer_command(
    model: ModelArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the compressed model (must be empty or new)")],
    task: TaskOpt = "rotten_tomatoes",
    budget: BudgetOpt = None,
    loss_tolerance: LossTolOpt = 0.0,
    tolerance_from: TolFromOpt = "previous",
    max_worse_fraction: WorseOpt = 0.5,
    max_accuracy_drop: AccDropOpt = None,
    topk: TopkOpt = "0.1,0.25,0.5",
    hard_attention: Annotated[bool, typer.Option()] = True,
    compensate: CompensateOpt = False,
    repair: RepairOpt = True,
    holdout: HoldoutOpt = 0.0,
    neuron_groups: GroupsOpt = 8,
    max_passes: PassesOpt = 4,
    set_: SetAx = None,
    validation_examples: ValExamplesOpt = None,
    max_length: RecipeMaxLenOpt = None,
    fit_examples: FitOpt = 1024,
    recover_epochs: RecoverOpt = 0,
    batch_size: Annotated[int, typer.Option(help="validation examples per batch")] = 32,
    evaluate_split: EvaluateOpt = None,
    int8_out: Int8OutOpt = None,
    bf16_out: Bf16OutOpt = None,
    text_column: TextCol = "text",
    text_pair_column: PairCol = None,
    label_column: LabelCol = "label",
    validation_file: ValFileOpt = None,
    test_file: TestFileOpt = None,
    seed: Annotated[int, typer.Option(help="seed of the data split and of the batch order")] = 0,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace a non-empty --out / --int8-out / --bf16-out")
    ] = False,
    as_json: JsonOpt = False,
):
    """AxFormer: remove what does not help the task and switch layers to top-k attention where that helps,
    searched on the validation split; save the smaller model (its top-k settings load with it)."""
    from slimformer.compose import parse_recipe
    from slimformer.quantize import size_on_disk

    try:
        fields = {
            "budget": budget, "loss_tolerance": loss_tolerance, "tolerance_from": tolerance_from,
            "max_worse_fraction": max_worse_fraction, "max_accuracy_drop": max_accuracy_drop,
            "topk": _parse_topk(topk), "hard_attention": hard_attention, "compensate": compensate,
            "repair": repair, "holdout": holdout, "neuron_groups": neuron_groups, "max_passes": max_passes,
        }  # fmt: skip
        chain = _recipe({**fields, **parse_options(set_)}, recover_epochs, seed)
        steps = parse_recipe(chain)
        # each copy is the chain's last step (so checked as one); it converts the chain's output
        copies = {kind: (parse_recipe([*chain, {"step": kind}])[-1], folder)
                  for kind, folder in (("int8", int8_out), ("bf16", bf16_out)) if folder is not None}  # fmt: skip
        ensure_distinct(out=out, int8_out=int8_out, bf16_out=bf16_out)
        for folder in (out, int8_out, bf16_out):
            ensure_output_dir(folder, overwrite, inputs=(model,))
        m, tok, data = model_and_task(
            model, task, text_column, text_pair_column, label_column, seed, validation_file, test_file
        )
        context = _context(data, tok, max_length_for(data, max_length), batch_size, validation_examples,
                           fit_examples, seed, not as_json)  # fmt: skip
        report = {"model": model, "task": data.name, "max_length": context.max_length}
        final = _run(m, steps, copies, context, report, evaluate_split, overwrite)
        _save(final, tok, out, report, overwrite)
        report["size_on_disk"] = size_on_disk(out)
    except USER_ERRORS as exc:
        fail(exc)
    if as_json:
        emit_json(report)
    else:
        _echo(report, out, evaluate_split)


def _recipe(fields: dict, recover_epochs: int, seed: int) -> list[dict]:
    """The command's recipe: the search, then (``--recover-epochs``) a fine-tune distilled from the input."""
    chain = [{"step": "axformer", **fields}]
    if recover_epochs:
        chain.append({"step": "recover", "epochs": recover_epochs, "seed": seed})
    return chain


def _run(model, steps: list, copies: dict, context, report: dict, split: str | None, overwrite: bool):
    """Run the recipe through :func:`slimformer.compose.run_steps`, filling ``report`` from its per-step reports.

    The search's report is the command's; the recover step's (with validation before / after) is
    ``report["recover"]``; each copy (``{kind: (its step, its folder)}``, a precision step) converts the
    chain's output and is saved to its folder. Returns the chain's output model (the one saved to ``--out``).
    """
    from slimformer.axformer.search import score_batches
    from slimformer.compose import run_steps

    entries, models = [], []
    for step_model, entry in run_steps(model, steps, context):
        entries.append(entry)
        models.append(step_model)
    report.update(entries[0]["report"])
    if len(entries) > 1:
        validation = context.cache["validation"]
        before, after = score_batches(models[0], validation), score_batches(models[1], validation)
        report["recover"] = {**entries[1]["report"], "validation": {"before": before, "after": after}}
    final = models[-1]
    if split:
        report["metrics"] = _metrics(final, context, split)
    report["recipe"] = [{k: v for k, v in e.items() if k != "report"} for e in entries]
    # the copies are alternative last steps: each converts the chain's output into its own folder
    report["recipe"] += [{"index": len(entries) + 1, "step": kind, "folder": str(f)} for kind, (_, f) in copies.items()]
    for kind, (step, folder) in copies.items():
        report[kind] = _save_copy(final, step, folder, context, report, split, overwrite)
    return final


def _context(data, tok, length: int, batch_size: int, limit: int | None, fit: int, seed: int, progress: bool):
    """A recipe context holding the search's validation batches and the refits' train sample."""
    from slimformer.axformer.search import validation_batches
    from slimformer.compose import RecipeContext

    context = RecipeContext(tokenizer=tok, task=data, max_length=length, calibration=fit, seed=seed, progress=progress)
    context.cache["validation"] = validation_batches(
        data.split("validation"), tok, batch_size=batch_size, max_length=length, seed=seed, limit=limit
    )
    context.cache["calibration"] = None  # --fit-examples 0: the axformer step's refits fit on validation inputs
    if fit:
        from slimformer.static import calibration_batches

        context.cache["calibration"] = calibration_batches(
            data.split("train"), tok, size=fit, seed=seed, batch_size=batch_size, max_length=length
        )
    return context


def _metrics(model, context, split: str) -> dict:
    return split_metrics(
        model, context.tokenizer, context.task, split, max_length=context.max_length, progress=context.progress
    )


def _save(model, tokenizer, folder: Path, report: dict, overwrite: bool) -> None:
    from slimformer.compose import save_result

    save_result(model, tokenizer, folder, overwrite=overwrite, extra=report)


def _save_copy(model, step, folder: Path, context, report: dict, split: str | None, overwrite: bool) -> dict:
    """Run the copy ``step`` (int8 or bf16) on ``model`` and save the result to ``folder``; its report entry."""
    from slimformer.compose import run_steps
    from slimformer.quantize import size_on_disk

    ((converted, step_entry),) = run_steps(model, [step], context)
    entry: dict = {"folder": str(folder), "seconds": step_entry["seconds"]}
    if split:
        entry["metrics"] = _metrics(converted, context, split)
    _save(converted, context.tokenizer, folder, {**report, step.kind: entry}, overwrite)
    entry["size_on_disk"] = size_on_disk(folder)
    return entry


def _echo(report: dict, out: Path, evaluate_split: str | None) -> None:
    rel, val = report["relative"], report["validation"]
    typer.echo(
        f"axformer ({report['mode']}{', ' + report['budget'] if report['budget'] else ''}): MACs {rel['macs']:.1%}, "
        f"params {rel['params']:.1%} of the input model; validation accuracy {val['before']['accuracy']:.4f} -> "
        f"{val['after']['accuracy']:.4f}, loss {val['before']['loss']:.4f} -> {val['after']['loss']:.4f} "
        f"({report['seconds']['total']:.1f}s); top-k layers {report['topk'] or 'none'}; saved to {out}"
    )
    if report.get("holdout"):
        hold = report["holdout"]
        typer.echo(
            f"held-out rule ({hold['examples']} validation examples kept out of the search): kept {hold['kept']} of "
            f"{hold['accepted']} accepted changes"
        )
    if report.get("repair"):
        fixed, plain = report["repair"]["repaired"], report["validation"]["unrepaired"]
        typer.echo(
            f"repair: validation accuracy {plain['accuracy']:.4f} -> {fixed['accuracy']:.4f}, loss {plain['loss']:.4f}"
            f" -> {fixed['loss']:.4f}: {'kept' if report['repair']['kept'] else 'discarded'}"
        )
    if report.get("recover"):
        rec = report["recover"]
        before, after = rec["validation"]["before"], rec["validation"]["after"]
        typer.echo(
            f"recover ({rec['recover_config']['epochs']} epoch(s), {rec['seconds']:.0f}s): validation accuracy "
            f"{before['accuracy']:.4f} -> {after['accuracy']:.4f}, loss {before['loss']:.4f} -> {after['loss']:.4f}"
        )
    if "metrics" in report:
        typer.echo(f"{report['metrics']['split']} accuracy {report['metrics']['accuracy']:.4f}")
    for kind in ("int8", "bf16"):
        if kind in report:
            line = f"{kind} copy: {report[kind]['size_on_disk'] / 1e6:.1f} MB on disk in {report[kind]['folder']}"
            if "metrics" in report[kind]:
                line += f", {evaluate_split} accuracy {report[kind]['metrics']['accuracy']:.4f}"
            typer.echo(line)


def _parse_topk(text: str) -> list[int | float]:
    """``"8,0.25"`` -> ``[8, 0.25]`` (an empty string: no settings)."""
    out: list[int | float] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            out.append(int(part) if part.lstrip("+-").isdigit() else float(part))
        except ValueError:
            raise ValueError(f"--topk {text!r}: expected comma-separated ints or fractions, e.g. 8,0.25") from None
    return out
