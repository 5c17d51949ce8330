"""``slimformer embed-compress``: the embedding case end to end, no fine-tuning and no labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slimformer.commands.common import (
    USER_ERRORS,
    JsonOpt,
    LabelCol,
    OverwriteOpt,
    TestFileOpt,
    TextCol,
    ValFileOpt,
    emit_json,
    ensure_output_dir,
    fail,
    load_task_option,
)


def _help(name: str) -> str:
    from slimformer.commands.common import field_help
    from slimformer.embedding_compress import EmbedCompressConfig

    return field_help(EmbedCompressConfig, name)


def embed_compress(
    model: Annotated[
        str,
        typer.Argument(help="a sentence-embedding model: built-in name, local folder (its pooling is read), hub id"),
    ] = "minilm-l6",
    out: Annotated[
        Path, typer.Option("--out", "-o", help="folder for the compressed model (new or empty; sentence-transformers)")
    ] = ...,
    corpus: Annotated[
        str,
        typer.Option(
            "--corpus", "-c", help="built-in task or labelled file/folder: train texts calibrate, test split measures"
        ),
    ] = "rotten_tomatoes",
    budget: Annotated[str, typer.Option(help="what the compressed model must fit, e.g. macs=0.5")] = "macs=0.5",
    recover: Annotated[
        bool, typer.Option("--recover/--no-recover", help="then distil it from dense on unlabelled train texts")
    ] = False,
    calibration: Annotated[int, typer.Option(help="unlabelled train texts OPTIN scores on")] = 256,
    recover_texts: Annotated[int, typer.Option(help="recover: unlabelled train texts per epoch")] = 4096,
    recover_epochs: Annotated[int, typer.Option(help="recover: passes over those texts")] = 2,
    recover_lr: Annotated[float, typer.Option(help="recover: peak learning rate")] = 3e-4,
    recover_hidden_weight: Annotated[float, typer.Option(help="recover: weight of the hidden-state term")] = 0.0,
    max_train: Annotated[int, typer.Option(help="train texts in the kNN index (0 = all)")] = 1000,
    max_eval: Annotated[int, typer.Option(help="test texts measured (0 = all)")] = 0,
    max_length: Annotated[int, typer.Option(help="tokens per text")] = 128,
    bench: Annotated[
        bool, typer.Option("--bench/--no-bench", help="time both models interleaved, batch 32 and 1")
    ] = True,
    seq_len: Annotated[int, typer.Option("--seq-len", help="timing: tokens per sequence")] = 128,
    repeats: Annotated[int, typer.Option(help="timing: timed calls per model and batch size")] = 10,
    seed: Annotated[int, typer.Option(help="seed of the text samples, the scorer and the distillation")] = 0,
    text_column: TextCol = "text",
    label_column: LabelCol = "label",
    validation_file: ValFileOpt = None,
    test_file: TestFileOpt = None,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
):
    """Compress a sentence-embedding model with no fine-tuning and no labels, and measure it against dense.

    The model is used as it ships (pooling read from its sentence-transformers files). OPTIN scores heads and FFN neurons by how much masking each moves the pooled embedding, on --calibration unlabelled train texts of --corpus, and prunes to --budget; --recover then distils it from the dense model on further unlabelled train texts.

    Reported against dense on the corpus's test split: agreement (mean cosine, recall@10 of dense's 10 nearest neighbours), labelled proxies (kNN accuracy train -> test, same-label precision@10; labels are used only here) and wall clock at batch 32 and 1, timed interleaved.

    --out loads with sentence-transformers (SentenceTransformer(OUT, trust_remote_code=True)), plain transformers (AutoModel, trust_remote_code=True) and slimformer; `slimformer export OUT --onnx DIR --int8` puts the pooling inside the ONNX graph.
    """  # noqa: E501
    from slimformer.embedding import load_embedding_model, save_embedding_model
    from slimformer.embedding_compress import EmbedCompressConfig, compress_embedding
    from slimformer.models import resolve_model_path

    try:
        config = EmbedCompressConfig(
            budget=budget, calibration=calibration, recover=recover, recover_texts=recover_texts,
            recover_epochs=recover_epochs, recover_lr=recover_lr, recover_hidden_weight=recover_hidden_weight,
            max_train=max_train or None, max_eval=max_eval or None, max_length=max_length, bench=bench,
            seq_len=seq_len, repeats=repeats, seed=seed,
        )  # fmt: skip
        ensure_output_dir(out, overwrite, inputs=(model,))
        task = load_task_option(corpus, text_column, None, label_column, seed,
                                validation_file=validation_file, test_file=test_file)  # fmt: skip
        dense, tok = load_embedding_model(model)
        result = compress_embedding(dense, tok, task, config, progress=not as_json)
        report = {"model": model, "corpus": task.name, **result.report}
        source = resolve_model_path(model)
        save_embedding_model(result.model, tok, out, source=source if Path(source).is_dir() else None,
                             overwrite=overwrite, extra=report)  # fmt: skip
    except USER_ERRORS as exc:
        fail(exc)
    report["out"] = str(out)
    if as_json:
        emit_json(report)
        return
    typer.echo(format_report(report))


def format_report(report: dict) -> str:
    """The human-readable summary: budget, agreement, proxies and speed of compressed vs dense."""
    rel, agree = report["prune"]["relative"], report["agreement"]
    k = agree["k"]
    lines = [
        f"{report['model']} as an embedding model, OPTIN (no labels) -> {report['config']['budget']}"
        + (" + recover" if report["recover"] else "")
        + f": MACs {rel['macs']:.1%}, params {rel['params']:.1%} of dense; saved to {report['out']}",
        f"agreement with dense on {report['examples']['test']} {report['corpus']} test texts: "
        f"mean cosine {agree['mean_cosine']:.4f}, recall@{k} {agree['recall_at_k']:.4f}",
    ]
    for key, label in (("knn_accuracy", f"kNN accuracy (k={k})"), ("retrieval_precision", f"precision@{k}")):
        d, c = 100 * report["dense"][key], 100 * report["compressed"][key]
        lines.append(f"{label:22s} dense {d:6.2f}  compressed {c:6.2f}  ({c - d:+.2f} points)")
    lat = report.get("latency")
    if lat:
        for b in ("32", "1"):
            ms = lat["median_ms"]
            lines.append(
                f"batch {b:>2s} x {lat['seq_len']} tokens: dense {ms['dense'][b]:.1f} ms, compressed "
                f"{ms['compressed'][b]:.1f} ms, {lat['speedup'][b]:.2f}x (median, interleaved)"
            )
    return "\n".join(lines)
