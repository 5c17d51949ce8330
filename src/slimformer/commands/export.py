"""``slimformer export MODEL --onnx OUT [--int8]``: ONNX export, verified against PyTorch, timed beside it."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Annotated

import typer

from slimformer.commands.common import (
    USER_ERRORS,
    JsonOpt,
    emit_json,
    ensure_output_dir,
    fail,
    field_help,
    load_task_option,
)


def _help(name: str) -> str:
    from slimformer.onnx_export import ExportConfig

    return field_help(ExportConfig, name)


def _texts(task: str | None, count: int, seed: int) -> list[str] | None:
    """``count`` texts sampled from the task's test split (None without a task: built-in sentences)."""
    if task is None:
        return None
    if count < 2:
        raise ValueError(f"--verify-examples={count}: need at least 2 (padded batches)")
    examples = load_task_option(task).split("test")
    sample = random.Random(seed).sample(examples, min(count, len(examples)))
    return [e.text for e in sample]


def format_report(report: dict, out: Path) -> str:
    """Human-readable summary of an :func:`slimformer.onnx_export.export_onnx` report."""
    from slimformer.report import human

    model = report["model"]
    shapes = ", ".join(f"{x['heads']}h/{x['ffn']}" for x in model["layers"])
    lines = [f"exported {model['family']} ({len(model['layers'])} layers: {shapes}) to {out}"]
    ver = report["verification"]
    for kind, name in report["files"].items():
        v = ver[kind]
        size = f"{human(report['bytes'][kind])}B"
        status = "ok" if v["passed"] else "FAILED"
        if report.get("kind") == "embedding":
            check = (
                f"sentence_embedding vs PyTorch: min cosine {v['min_cosine']:.6f} (bound {v['min_cosine_bound']:g}), "
                f"max |diff| {v['max_abs_diff']:.2g}"
            )
        elif kind.endswith("fp32"):  # fp32 and opt_fp32 (the fused graph) are held to the logit bound
            check = f"max |logit diff| vs PyTorch {v['max_abs_diff']:.2g} (bound {v['tolerance']:g})"
        else:
            check = (
                f"argmax agreement {v['argmax_agreement']:.1%} (bound {v['min_agreement']:.0%}), "
                f"max |logit diff| {v['max_abs_diff']:.2g}"
            )
        lines.append(f"  {name:16s} {size:>8s}  {check} on {v['texts']} texts in {v['batches']} batches: {status}")
    lat = report.get("latency")
    if lat:
        names = [n for n in lat["results"][0] if n.startswith(("pytorch_", "onnx_"))]
        env = lat["environment"]
        lines.append(
            f"latency: median ms of {lat['config']['repeats']} interleaved runs at {lat['config']['seq_len']} tokens, "
            f"{env.get('torch_threads')} torch / {lat['onnx_threads']} onnxruntime threads, {env.get('processor')}"
        )
        header = ["batch", *names, *(f"speedup {n}" for n in names if n != lat["reference"])]
        rows = []
        for r in lat["results"]:
            rows.append(
                [str(r["batch_size"])]
                + [f"{r[n]['median_ms']:.2f}" for n in names]
                + [f"{r['speedup'][n]:.2f}x" for n in names if n != lat["reference"]]
            )
        widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
        lines.append("  " + "  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
        lines += ["  " + "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def export_command(
    model: Annotated[str, typer.Argument(help="model folder (dense or statically pruned), built-in model, or hub id")],
    onnx: Annotated[
        Path, typer.Option("--onnx", help="output folder (new or empty): model.onnx, model.int8.onnx, tokenizer")
    ],
    int8: Annotated[bool, typer.Option("--int8", help=_help("int8"))] = False,
    per_channel: Annotated[bool, typer.Option(help=_help("per_channel"))] = True,
    opset: Annotated[int, typer.Option(help=_help("opset"))] = 17,
    atol: Annotated[float, typer.Option(help=_help("atol"))] = 1e-4,
    min_agreement: Annotated[float, typer.Option(help=_help("int8_min_agreement"))] = 0.8,
    task: Annotated[
        str | None,
        typer.Option("--task", "-t", help="verify on texts from this task's test split (default: built-in sentences)"),
    ] = None,
    verify_examples: Annotated[int, typer.Option(help="texts sampled from --task for verification")] = 64,
    max_length: Annotated[int, typer.Option(help=_help("max_length"))] = 128,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="latency: comma-separated batch sizes")] = "1,32",
    seq_len: Annotated[int, typer.Option("--seq-len", help="latency: tokens per sequence")] = 128,
    repeats: Annotated[int, typer.Option(help="latency: timed rounds per batch size")] = 20,
    warmup: Annotated[int, typer.Option(help="latency: untimed runs first")] = 3,
    threads: Annotated[
        int | None, typer.Option(help="latency: threads for torch and onnxruntime alike (default: torch's choice)")
    ] = None,
    bench: Annotated[bool, typer.Option("--bench/--no-bench", help="time onnxruntime beside PyTorch")] = True,
    check: Annotated[bool, typer.Option("--check/--no-check", help=_help("check"))] = True,
    seed: Annotated[int, typer.Option(help="seed of the verification sample")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a non-empty --onnx folder")] = False,
    as_json: JsonOpt = False,
):
    """Export a model to ONNX (optionally onnxruntime int8), verified against PyTorch and timed beside it.

    Supported: dense or statically pruned BERT / RoBERTa / DistilBERT classifiers, any batch size and length.

    An embedding model (from `slimformer embed-compress`, or a sentence-transformers folder such as
    minilm-l6) is exported with its pooling in the graph: one output, sentence_embedding (cosine-checked).

    Refused with an error: hard top-k attention, token skimming, early exit, forward hooks, PyTorch-quantized models.
    """
    from slimformer.bench import BenchConfig, parse_int_list
    from slimformer.embedding import folder_pooling, load_embedding_model
    from slimformer.embedding_onnx import export_embedding_onnx
    from slimformer.models import load_model
    from slimformer.onnx_export import ExportConfig, OnnxVerificationError, export_onnx

    try:
        config = ExportConfig(
            opset=opset,
            int8=int8,
            per_channel=per_channel,
            atol=atol,
            int8_min_agreement=min_agreement,
            check=check,
            max_length=max_length,
        )
        bench_config = None
        if bench:
            bench_config = BenchConfig(
                batch_sizes=parse_int_list(batch_sizes),
                seq_len=seq_len,
                repeats=repeats,
                warmup=warmup,
                threads=threads,
            )
        ensure_output_dir(onnx, overwrite, inputs=(model,))
        texts = _texts(task, verify_examples, seed)
        embedding = folder_pooling(model) is not None
        m, tokenizer = load_embedding_model(model) if embedding else load_model(model)
        exporter = export_embedding_onnx if embedding else export_onnx
        report = exporter(
            m, tokenizer, onnx, config, texts=texts, bench=bench_config, overwrite=overwrite, progress=not as_json
        )
        report = {"source": model, "out": str(onnx), **report}
    except OnnxVerificationError as exc:
        fail(exc, code=1)
    except USER_ERRORS as exc:
        fail(exc)
    if as_json:
        emit_json(report)
        return
    typer.echo(format_report(report, onnx))
    if not report["passed"]:
        typer.echo("verification FAILED (--no-check: files kept); see slimformer_onnx.json", err=True)
