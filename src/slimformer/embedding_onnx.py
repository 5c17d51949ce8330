"""ONNX export of an embedding model with the pooling inside the graph, verified against PyTorch.

The graph takes the tokenizer's tensors (``input_ids``, ``attention_mask`` and, where the family
has segments, ``token_type_ids``; dynamic batch and sequence axes) and returns one output,
``sentence_embedding`` ``(B, d)``: encoder, then the model's :class:`~slimformer.embedding.Pooling`
(masked mean, CLS, max or mean / sqrt(length), and L2 normalisation when it normalises), so a
runtime needs no pooling code of its own. :func:`export_embedding_onnx` writes ``model.onnx``,
optionally ``model.int8.onnx`` (onnxruntime dynamic int8, as for classifiers), the tokenizer and
``slimformer_onnx.json``, and checks every file against PyTorch's embeddings on real text:

* fp32: the smallest cosine over the texts must reach :data:`FP32_MIN_COSINE` and the largest
  absolute difference ``ExportConfig.atol``;
* int8: the smallest cosine must reach :data:`INT8_MIN_COSINE`, a loose check that catches a
  broken quantization, not a small loss (measure agreement on a corpus for that).

The fused onnxruntime graphs of :mod:`slimformer.ort_fuse` are built for classifiers only.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimformer.bench import BenchConfig
from slimformer.embedding import EmbeddingForward, embedding_pooling, encode, text_batches
from slimformer.onnx_export import (
    DEFAULT_BENCH,
    ExportConfig,
    OnnxVerificationError,
    _require_onnx,
    check_exportable,
    input_names,
    model_summary,
    quantize_int8,
    time_and_save_report,
)
from slimformer.onnx_runtime import INT8_FILE, ONNX_FILE, OnnxModel
from slimformer.onnx_verify import verification_batches

#: The graph's one output.
OUTPUT = "sentence_embedding"
#: fp32 files: smallest allowed cosine between the ONNX and the PyTorch embedding of any text.
FP32_MIN_COSINE = 0.9999
#: int8 files: smallest allowed cosine of any text (catches a broken quantization only).
INT8_MIN_COSINE = 0.8  # a MiniLM pruned to 50% on 64 texts measured 0.91 on the built-in sentences


class _PooledEncoder(nn.Module):
    """Positional inputs -> the pooled embedding ``(B, d)`` of an embedding model."""

    def __init__(self, model: nn.Module, names: Sequence[str]):
        super().__init__()
        self.model = model
        self.names = list(names)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return encode(self.model, dict(zip(self.names, tensors, strict=True)))  # (B, d)


class OnnxEmbedder(OnnxModel):
    """An exported embedding graph run by onnxruntime: inputs in, ``(B, d)`` embeddings out."""

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """Embeddings ``(B, d)`` from prepared feeds (see :meth:`OnnxModel.feeds`)."""
        return self.session.run([OUTPUT], feeds)[0]

    def embed(self, tokenizer, texts: Sequence[str], *, batch_size: int = 32, max_length: int = 128) -> torch.Tensor:
        """Embed ``texts``: ``(N, d)`` float32 in the order of ``texts`` (batched shortest first)."""
        out: torch.Tensor | None = None
        for batch in text_batches(texts, tokenizer, batch_size=batch_size, max_length=max_length):
            index = batch.pop("index")
            got = self(**batch)  # (B, d)
            out = torch.zeros(len(texts), got.shape[1]) if out is None else out
            out[index] = got
        if out is None:
            raise ValueError("no texts to embed")
        return out


def embedding_to_onnx(model: nn.Module, path: str | Path, sample: Mapping[str, torch.Tensor], *, opset: int = 17):
    """Trace an embedding model, pooling included, into ``path``; output :data:`OUTPUT`.

    ``sample`` should be a padded batch (an attention mask with zeros) so the masked pooling is traced.
    """
    import onnx

    names = input_names(model)
    missing = [n for n in names if n not in sample]
    if missing:
        raise ValueError(f"sample inputs lack {missing}; the graph takes {names}")
    was_training = model.training
    wrapper = _PooledEncoder(model, names).eval()  # eval: the exporter restores the wrapper's mode
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings on shape branches; verification checks the result
            torch.onnx.export(
                wrapper,
                tuple(sample[n] for n in names),
                str(path),
                input_names=names,
                output_names=[OUTPUT],
                dynamic_axes={**axes, OUTPUT: {0: "batch"}},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    finally:
        model.train(was_training)
    onnx.checker.check_model(str(path))
    return Path(path)


def compare_embeddings(model: nn.Module, onnx_model: OnnxEmbedder, batches: Sequence[Mapping[str, torch.Tensor]]):
    """Cosine (min, mean) and max / mean absolute difference of ONNX vs PyTorch embeddings over batches."""
    if not batches:
        raise ValueError("no verification batches")
    cos, diffs = [], []
    with torch.inference_mode():
        for batch in batches:
            ref = encode(model, dict(batch)).float()  # (B, d)
            got = onnx_model(**batch)  # (B, d)
            cos.append(torch.nn.functional.cosine_similarity(ref, got, dim=-1))
            diffs.append((ref - got).abs().flatten())
    c, d = torch.cat(cos), torch.cat(diffs)
    return {
        "min_cosine": float(c.min()),
        "mean_cosine": float(c.mean()),
        "max_abs_diff": float(d.max()),
        "mean_abs_diff": float(d.mean()),
        "texts": int(c.numel()),
        "batches": len(batches),
    }


def _verify(model, out: Path, files: Mapping[str, str], batches, atol: float) -> tuple[dict, list[str]]:
    results, failures = {}, []
    for kind, name in files.items():
        res = compare_embeddings(model, OnnxEmbedder(out / name, threads=1), batches)
        bound = FP32_MIN_COSINE if kind == "fp32" else INT8_MIN_COSINE
        res["min_cosine_bound"] = bound
        ok = res["min_cosine"] >= bound
        if not ok:
            failures.append(f"{name}: smallest cosine to PyTorch {res['min_cosine']:.6f} < {bound}")
        if kind == "fp32":
            res["tolerance"] = atol
            if res["max_abs_diff"] > atol:
                ok = False
                failures.append(f"{name}: max |embedding diff| {res['max_abs_diff']:.3g} > atol {atol:g}")
        res["passed"] = ok
        results[kind] = res
    return results, failures


def _export_into(out: Path, model, tokenizer, batches, config: ExportConfig, bench, progress: bool):

    sample = max(batches, key=lambda b: (b["input_ids"].shape[0], -int(b["attention_mask"].all())))
    seconds: dict[str, float] = {}
    tokenizer.save_pretrained(str(out))
    t0 = time.perf_counter()
    embedding_to_onnx(model, out / ONNX_FILE, sample, opset=config.opset)
    files = {"fp32": ONNX_FILE}
    if config.int8:
        quantize_int8(
            out / ONNX_FILE, out / INT8_FILE, per_channel=config.per_channel, reduce_range=config.reduce_range
        )
        files["int8"] = INT8_FILE
    seconds["export"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    verification, failures = _verify(model, out, files, batches, config.atol)
    seconds["verify"] = time.perf_counter() - t0
    report: dict[str, Any] = {
        "kind": "embedding",
        "model": model_summary(model),
        "pooling": embedding_pooling(model).to_dict(),
        "config": config.to_dict(),
        "inputs": input_names(model),
        "outputs": [OUTPUT],
        "dynamic_axes": {"batch": 0, "sequence": 1},
        "files": files,
        "bytes": {k: (out / v).stat().st_size for k, v in files.items()},
        "fusion": {"error": "fused onnxruntime graphs are built for classifiers only"},
        "verification": verification,
        "passed": not failures,
    }
    time_and_save_report(out, report, seconds, model, EmbeddingForward(model), OnnxEmbedder, bench, progress=progress)
    return report, failures


def export_embedding_onnx(
    model: nn.Module,
    tokenizer,
    out_dir: str | Path,
    config: ExportConfig | None = None,
    *,
    texts: Sequence[str] | None = None,
    bench: BenchConfig | None = DEFAULT_BENCH,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Export an embedding model to ONNX with its pooling in the graph; verify, quantize, time it.

    Args:
        model: a dense or statically pruned embedding model (:func:`slimformer.embedding.as_embedding_model`).
        tokenizer: its tokenizer (saved beside the files; tokenizes ``texts``).
        out_dir: output folder, new or empty (see ``overwrite``); written staged, moved into place complete.
        config: :class:`~slimformer.onnx_export.ExportConfig` (``opset``, ``int8``, ``per_channel``,
            ``reduce_range``, ``atol``, ``check``, ``max_length``, ``verify_batch_size``; ``optimize`` is unused).
        texts: real texts to verify on (None: the built-in sentences).
        bench: latency of PyTorch (encoder + pooling) vs each file, interleaved (None: not timed).

    Returns:
        The report (``kind: "embedding"``, files, sizes, verification, latency, environment).

    Raises:
        ValueError: not an embedding model, or a model that cannot be exported (see
            :func:`slimformer.onnx_export.check_exportable`).
        OnnxVerificationError: a bound was missed and ``config.check`` (the files stay for inspection).
    """
    from slimformer.fsutil import model_sources, staged_output_dir

    config = config or ExportConfig()
    _require_onnx()
    if embedding_pooling(model) is None:
        raise ValueError(f"{type(model).__name__} is not an embedding model; wrap it with as_embedding_model")
    check_exportable(model)
    out_dir = Path(out_dir)
    if out_dir.suffix == ".onnx":
        raise ValueError(f"output {str(out_dir)!r} looks like a file; give a folder (it will hold {ONNX_FILE}, ...)")
    batches = verification_batches(
        model, tokenizer, texts, batch_size=config.verify_batch_size, max_length=config.max_length
    )
    with staged_output_dir(out_dir, overwrite=overwrite, inputs=model_sources(model)) as stage:
        report, failures = _export_into(stage, model, tokenizer, batches, config, bench, progress)
    if failures and config.check:
        raise OnnxVerificationError(
            "ONNX export does not match PyTorch: " + "; ".join(failures) + f" (files left in {str(out_dir)!r})"
        )
    return report
