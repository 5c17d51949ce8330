"""``slimformer axformer``: a thin command over :func:`slimformer.axformer.axformer`.

Registered in :mod:`slimformer.cli` with ``app.command("axformer")(axformer_command)``. Importing
this module loads typer only (help texts are spelled out here rather than read from ``AxConfig``,
whose module loads torch); the work happens in the function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ModelArg = Annotated[str, typer.Argument(help="built-in model (see `slimformer list`), local folder, or hub id")]
TaskOpt = Annotated[
    str, typer.Option("--task", "-t", help="built-in task (see `slimformer list`), or a CSV/TSV/JSONL file")
]


def axformer_command(
    model: ModelArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the compressed model (must be empty or new)")],
    task: TaskOpt = "rotten_tomatoes",
    budget: Annotated[
        str | None,
        typer.Option(help="stop once this fits: macs=0.5, params=12M, memory=40MB (default: the most accurate model)"),
    ] = None,
    loss_tolerance: Annotated[
        float, typer.Option(help="a removal is kept when the mean validation loss rises by at most this (nats)")
    ] = 0.0,
    tolerance_from: Annotated[
        str, typer.Option(help="previous: the tolerance applies to each removal; start: to the input model's loss")
    ] = "previous",
    max_worse_fraction: Annotated[
        float, typer.Option(help="and when at most this share of the samples whose loss changes get worse")
    ] = 0.5,
    max_accuracy_drop: Annotated[
        float | None,
        typer.Option(help="and when validation accuracy stays within this of the input model's (0: never below)"),
    ] = None,
    topk: Annotated[
        str, typer.Option(help="top-k settings tried per layer, comma-separated (ints: keys, floats <1: fraction)")
    ] = "0.1,0.25,0.5",
    hard_attention: Annotated[bool, typer.Option(help="search top-k attention per layer")] = True,
    compensate: Annotated[
        bool,
        typer.Option(
            help="evaluate each removal with a least-squares refit of the kept units' output weights and bias "
            "(no labels); accepted refits stay in the model"
        ),
    ] = False,
    repair: Annotated[
        bool,
        typer.Option(
            help="after the search, refit the output projections by least squares towards the input model "
            "(kept when validation loss does not rise and accuracy holds)"
        ),
    ] = True,
    holdout: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.9,
            help="no budget only: share of the validation split kept out of the search; the search stops at the "
            "longest prefix of its changes that still passes on it (0: off)",
        ),
    ] = 0.0,
    neuron_groups: Annotated[
        int, typer.Option(help="FFN neurons of a layer are tried in this many groups, least important first")
    ] = 8,
    max_passes: Annotated[
        int, typer.Option(help="passes over the layers, last to first; stops early when a pass changes nothing")
    ] = 4,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="any other AxConfig field FIELD=VALUE (repeatable)")
    ] = None,
    validation_examples: Annotated[
        int | None, typer.Option(help="search on the first N validation examples only (default: all)")
    ] = None,
    max_length: Annotated[
        int | None, typer.Option(help="truncate inputs to this many tokens (default: the task's fine-tuning recipe)")
    ] = None,
    fit_examples: Annotated[
        int,
        typer.Option(
            min=0,
            help="the least-squares refits (--compensate, --repair) are fit on this many train inputs, so the "
            "validation split only judges them (0: fit on the validation inputs)",
        ),
    ] = 1024,
    recover_epochs: Annotated[
        int,
        typer.Option(
            min=0,
            help="after the search, fine-tune the smaller model this many epochs on the train split, distilled "
            "from the input model (0: no fine-tune; shapes never change)",
        ),
    ] = 0,
    batch_size: Annotated[int, typer.Option(help="validation examples per batch")] = 32,
    evaluate_split: Annotated[
        str | None, typer.Option("--evaluate", help="also report metrics on this split (e.g. test)")
    ] = None,
    int8_out: Annotated[
        Path | None, typer.Option("--int8-out", help="also save an int8 dynamically quantized copy here")
    ] = None,
    bf16_out: Annotated[
        Path | None,
        typer.Option(
            "--bf16-out", help="also save a bfloat16 copy here (half the size; fast on CPUs with native bf16)"
        ),
    ] = None,
    text_column: Annotated[str, typer.Option(help="column holding the text (user files)")] = "text",
    text_pair_column: Annotated[str | None, typer.Option(help="optional second text column (user files)")] = None,
    label_column: Annotated[str, typer.Option(help="column holding the label (user files)")] = "label",
    seed: Annotated[int, typer.Option(help="seed of the data split and of the batch order")] = 0,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace a non-empty --out / --int8-out / --bf16-out")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print machine-readable JSON only")] = False,
):
    """AxFormer: remove what does not help the task and switch layers to top-k attention where that helps,
    searched on the validation split; save the smaller model (its top-k settings load with it)."""
    from slimformer.axformer.config import AxConfig
    from slimformer.axformer.search import axformer, validation_batches
    from slimformer.cli import USER_ERRORS, _emit_json, _fail, _parse_options
    from slimformer.data import load_task
    from slimformer.evaluate import evaluate as run_eval
    from slimformer.export import save_model
    from slimformer.models import load_model
    from slimformer.pipeline import recipe_for
    from slimformer.quantize import quantize_dynamic_int8, save_quantized, size_on_disk, to_bf16

    try:
        config = AxConfig.from_dict(
            {
                "budget": budget,
                "loss_tolerance": loss_tolerance,
                "tolerance_from": tolerance_from,
                "max_worse_fraction": max_worse_fraction,
                "max_accuracy_drop": max_accuracy_drop,
                "topk": _parse_topk(topk),
                "hard_attention": hard_attention,
                "compensate": compensate,
                "repair": repair,
                "holdout": holdout,
                "neuron_groups": neuron_groups,
                "max_passes": max_passes,
                **_parse_options(set_ or []),
            }
        )
        named = [f for f in (out, int8_out, bf16_out) if f is not None]
        if len({f.resolve() for f in named}) < len(named):
            raise ValueError(
                f"--out, --int8-out and --bf16-out must be different folders, got {[str(f) for f in named]}"
            )
        for folder in (out, int8_out, bf16_out):
            if folder is not None and folder.exists() and any(folder.iterdir()) and not overwrite:
                raise FileExistsError(f"output folder {str(folder)!r} is not empty; choose another or pass --overwrite")
        data = load_task(
            task, text_column=text_column, text_pair_column=text_pair_column, label_column=label_column, seed=seed
        )
        m, tok = load_model(model, require_head=True)
        if m.config.num_labels != data.num_labels:
            raise ValueError(
                f"model {model!r} has {m.config.num_labels} labels but task {task!r} has {data.num_labels}"
            )
        length = max_length or recipe_for(data.name).max_length
        batches = validation_batches(
            data.split("validation"),
            tok,
            batch_size=batch_size,
            max_length=length,
            seed=seed,
            limit=validation_examples,
        )
        fit = None
        if fit_examples and (config.compensate or config.repair):
            from slimformer.static import calibration_batches

            fit = calibration_batches(
                data.split("train"), tok, size=fit_examples, seed=seed, batch_size=batch_size, max_length=length
            )
        result = axformer(m, config, batches, fit_data=fit, progress=not as_json)
        report = {"model": model, "task": data.name, "max_length": length, **result.report}
        if recover_epochs:
            result.model, report["recover"] = _recover(
                result.model, m, data, tok, batches, epochs=recover_epochs, max_length=length, seed=seed,
                progress=not as_json,
            )  # fmt: skip
        if evaluate_split:
            test = data.split(evaluate_split)
            report["metrics"] = {
                "split": evaluate_split,
                **run_eval(result.model, tok, test, max_length=length, progress=not as_json),
            }
        copies = [("int8", int8_out, quantize_dynamic_int8, save_quantized), ("bf16", bf16_out, to_bf16, save_model)]
        for kind, folder, convert, save in copies:
            if folder is None:
                continue
            copy_model = convert(result.model)
            entry = {"folder": str(folder)}
            if evaluate_split:
                metrics = run_eval(copy_model, tok, data.split(evaluate_split), max_length=length, progress=not as_json)
                entry["metrics"] = {"split": evaluate_split, **metrics}
            save(copy_model, tok, folder, overwrite=overwrite, extra={**report, kind: entry})
            entry["size_on_disk"] = size_on_disk(folder)
            report[kind] = entry
        save_model(result.model, tok, out, overwrite=overwrite, extra=report)
        report["size_on_disk"] = size_on_disk(out)
    except USER_ERRORS as exc:
        _fail(exc)
    if as_json:
        _emit_json(report)
        return
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


def _recover(model, teacher, data, tok, validation, *, epochs: int, max_length: int, seed: int, progress: bool):
    """Distil ``model`` from ``teacher`` on the train split; the model and a report with validation before/after."""
    from slimformer.axformer.search import score_batches
    from slimformer.exits import training_batches
    from slimformer.recover import RecoverConfig, recover

    train = training_batches(data.split("train"), tok, max_length=max_length, seed=seed)
    result = recover(model, teacher, train, RecoverConfig(epochs=epochs, seed=seed), progress=progress)
    before, after = score_batches(model, validation), score_batches(result.model, validation)
    return result.model, {**result.report, "validation": {"before": before, "after": after}}


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
