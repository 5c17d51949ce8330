"""Export a static (dense or pruned) classifier to ONNX, verify it, and quantize it with onnxruntime.

:func:`export_onnx` writes a deployable folder (``model.onnx``, optionally ``model.int8.onnx``, the
fused onnxruntime graphs ``model.opt.onnx`` / ``model.opt.int8.onnx`` of :mod:`slimformer.ort_fuse`,
the tokenizer, ``slimformer_onnx.json``), verifies every file against PyTorch on real tokenized text
(single texts and padded batches of mixed lengths), and times onnxruntime beside PyTorch.
:class:`OnnxModel` runs a file with onnxruntime and returns logits, so it can be evaluated on a task.

What is supported: sequence classifiers of the families in :mod:`slimformer.arch` (BERT, RoBERTa,
DistilBERT, MiniLM, ...), dense or statically pruned (uneven heads and FFN widths per layer, layers
without attention or without FFN, removed layers), with dynamic batch and sequence axes. The graph
is traced (``torch.onnx.export(..., dynamo=False)``), so anything whose *control flow* depends on
the data cannot be exported correctly and is refused with a clear error: hard top-k attention,
forward hooks (masks, dynamic methods), token skimming and early exit (when they exist), and
PyTorch-quantized modules (export the fp32 model and quantize with ``int8=True`` instead).
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimformer.bench import BenchConfig, environment
from slimformer.config import ConfigBase, boolean, fraction, integer, option, positive
from slimformer.onnx_runtime import INT8_FILE, ONNX_FILE, Candidate, OnnxModel, compare_latency, load_onnx  # noqa: F401
from slimformer.onnx_verify import DEFAULT_TEXTS, _verify_files, compare_logits, verification_batches  # noqa: F401

logger = logging.getLogger(__name__)

REPORT_FILE = "slimformer_onnx.json"
MIN_OPSET, MAX_OPSET = 14, 20  # SDPA needs 14; torch's TorchScript exporter stops at 20
SUPPORTED = (
    "dense or statically pruned BERT / RoBERTa / DistilBERT sequence classifiers (uneven per-layer heads and "
    "FFN widths, layers without attention or FFN); not supported: hard top-k attention, forward hooks, token "
    "skimming, early exit, PyTorch-quantized models (their control flow depends on the data or they cannot be traced)"
)


#: Latency settings of :func:`export_onnx` when none are given (frozen, so sharing it is safe).
DEFAULT_BENCH = BenchConfig()


class OnnxVerificationError(ValueError):
    """An exported file disagrees with PyTorch beyond the configured bound."""


@dataclass(frozen=True, kw_only=True)
class ExportConfig(ConfigBase):
    """How to export, quantize and verify; the latency settings are a separate :class:`BenchConfig`."""

    opset: int = option(17, f"ONNX opset, {MIN_OPSET}..{MAX_OPSET}", integer(MIN_OPSET, MAX_OPSET))
    int8: bool = option(False, "also write model.int8.onnx (onnxruntime dynamic int8)", boolean())
    optimize: bool = option(
        True,
        (
            "also write model.opt.onnx (and model.opt.int8.onnx with int8): fused attention with each layer's "
            "head count plus onnxruntime's transformer optimizer; runs on onnxruntime only"
        ),
        boolean(),
    )
    per_channel: bool = option(
        True, "int8: one weight scale per output channel (False: per matrix; less accurate, as fast)", boolean()
    )
    reduce_range: bool = option(
        False, "int8: 7-bit weights (for CPUs without VNNI, where 8 bits can saturate)", boolean()
    )
    atol: float = option(1e-4, "fp32: largest allowed max |logit difference| vs PyTorch", positive())
    int8_min_agreement: float = option(
        0.8,
        (
            "int8: smallest share of verification texts whose argmax matches PyTorch, in [0, 1]; a loose "
            "check that catches a broken quantization, not a small accuracy loss (evaluate on a task for that)"
        ),
        fraction(),
    )
    check: bool = option(True, "raise OnnxVerificationError when a bound is missed (False: only report it)", boolean())
    max_length: int = option(128, "verification texts are truncated to this many tokens", integer(8))
    verify_batch_size: int = option(8, "texts per padded verification batch (>= 2)", integer(2))


# --- what can be exported ----------------------------------------------------------------------


def check_exportable(model: nn.Module) -> None:
    """Refuse models whose traced graph would not reproduce them; see the module docstring.

    A model is static when every submodule is a stock ``torch.nn`` / ``transformers`` module or
    slimformer's removed-attention placeholder, and no forward hooks are attached.

    Raises:
        ValueError: naming the first offending module, the reason, and what is supported.
    """
    from slimformer.arch import get_adapter
    from slimformer.hf_remote import modeling_slimformer as remote

    get_adapter(model)  # a supported family and a sequence classifier, or a ValueError naming it
    topk = getattr(model.config, getattr(remote, "TOPK_KEY", "slimformer_topk"), None)
    if topk:
        raise ValueError(
            f"cannot export to ONNX: the model uses hard top-k attention (config.slimformer_topk={topk}), whose "
            f"number of kept keys is computed from the data; supported: {SUPPORTED}"
        )
    for name, module in model.named_modules():
        where = name or type(model).__name__
        if module._forward_hooks or module._forward_pre_hooks:
            raise ValueError(
                f"cannot export to ONNX: module {where!r} has forward hooks (masks or a dynamic method), which "
                f"tracing would bake in; remove them (e.g. apply the masks with surgery); supported: {SUPPORTED}"
            )
        cls, origin = type(module), type(module).__module__
        # by name too: a folder loaded with trust_remote_code has its own copy of modeling_slimformer
        slim_file = isinstance(module, remote.HeadlessAttention) or origin.endswith("modeling_slimformer")
        if module is model or (slim_file and cls.__name__ == "HeadlessAttention"):
            continue
        if slim_file and cls.__name__ == "TopKSelfAttention":
            raise ValueError(
                f"cannot export to ONNX: module {where!r} uses hard top-k attention, whose number of kept keys "
                f"is computed from the data; supported: {SUPPORTED}"
            )
        if origin.startswith("torch.ao.") or "quantized" in origin:
            raise ValueError(
                f"cannot export to ONNX: module {where!r} is PyTorch-quantized ({cls.__name__}); export the fp32 "
                "model and use int8 (onnxruntime quantization) instead"
            )
        if not (origin.startswith("torch.nn.") or origin.startswith("transformers.")):
            raise ValueError(
                f"cannot export to ONNX: module {where!r} is a {origin}.{cls.__name__}, not a static layer "
                f"(its control flow may depend on the data); supported: {SUPPORTED}"
            )


def input_names(model: nn.Module) -> list[str]:
    """Graph inputs: ``input_ids``, ``attention_mask`` and, when the family has segments, ``token_type_ids``."""
    from slimformer.arch import get_adapter_for_config

    return list(get_adapter_for_config(model.config).input_names(model.config))


# --- export and quantization -------------------------------------------------------------------


class _LogitsOnly(nn.Module):
    """Positional inputs -> logits only, so the graph has plain tensor inputs and one output."""

    def __init__(self, model: nn.Module, names: Sequence[str]):
        super().__init__()
        self.model = model
        self.names = list(names)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, tensors, strict=True))).logits  # (B, C)


def torch_to_onnx(
    model: nn.Module, path: str | Path, sample: Mapping[str, torch.Tensor], *, opset: int = 17, fused: bool = False
) -> Path:
    """Trace ``model`` into an ONNX file with dynamic batch and sequence axes; outputs ``logits``.

    ``sample`` should be a padded batch (attention mask with zeros) so that masking is traced.
    With ``fused``, each layer's attention becomes one onnxruntime ``com.microsoft`` ``Attention``
    node with that layer's head count (see :mod:`slimformer.ort_fuse`); such a file runs only on
    onnxruntime. The model's train/eval mode is restored afterwards.
    """
    import onnx

    from slimformer.ort_fuse import CONTRIB_DOMAIN, FusedClassifier

    names = input_names(model)
    missing = [n for n in names if n not in sample]
    if missing:
        raise ValueError(f"sample inputs lack {missing}; the graph takes {names}")
    path = Path(path)
    was_training = model.training
    # The wrapper must be in eval mode: the exporter restores *its* mode recursively afterwards.
    wrapper = (FusedClassifier(model, names) if fused else _LogitsOnly(model, names)).eval()
    from slimformer.arch import get_adapter

    image = get_adapter(model).modality == "image"  # pixel values: (B, C, H, W), a fixed image size
    axes = {n: {0: "batch"} if image else {0: "batch", 1: "sequence"} for n in names}
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            # Tracer warnings flag Python branches on shapes; the verification checks the result.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                tuple(sample[n] for n in names),
                str(path),
                input_names=names,
                output_names=["logits"],
                dynamic_axes={**axes, "logits": {0: "batch"}},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
                custom_opsets={CONTRIB_DOMAIN: 1} if fused else None,
            )
    finally:
        model.train(was_training)
    onnx.checker.check_model(str(path))
    return path


def quantize_int8(
    src: str | Path, dst: str | Path, *, per_channel: bool = True, reduce_range: bool = False, fused: bool = False
) -> Path:
    """onnxruntime dynamic int8 quantization: Linear weights and embedding tables become int8.

    Activations are quantized on the fly, per call. MatMuls of removed sublayers (a weight with a
    zero dimension) are left as they are. On the fine-tuned MiniLM pruned by OPTIN to half its
    MACs, per-channel scales kept 0.7 points more test accuracy than one scale per matrix at the
    same speed; int8 embeddings cut the file from 54 MB to 18 MB at no cost in speed or accuracy.
    ``fused``: ``src`` is a fused graph (:mod:`slimformer.ort_fuse`); its ``Attention`` nodes become
    ``QAttention``, and outputs that shape inference cannot type are taken as float.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from slimformer.ort_fuse import FUSED_INT8_OPS

    graph = onnx.load(str(src), load_external_data=False).graph
    empty = {t.name for t in graph.initializer if 0 in tuple(t.dims)}
    skip = [n.name for n in graph.node if n.op_type == "MatMul" and any(i in empty for i in n.input)]
    previous = logging.root.manager.disable
    # The quantizer logs every skipped node to the root logger, and advises a pre-processing step
    # that made no difference to MiniLM's accuracy or speed here.
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(
                str(src),
                str(dst),
                op_types_to_quantize=list(FUSED_INT8_OPS if fused else ("MatMul", "Gather")),
                per_channel=per_channel,
                reduce_range=reduce_range,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=skip,
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT} if fused else None,
            )
    finally:
        logging.disable(previous)
    return Path(dst)


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"ONNX export needs the onnx extra ({exc}): pip install 'slimformer[onnx]'") from exc


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _write_files(
    model: nn.Module, out: Path, sample: Mapping[str, torch.Tensor], config: ExportConfig, seconds: dict[str, float]
) -> tuple[dict[str, str], dict[str, Any] | None]:
    """Write the configured files into ``out``; returns kind -> file name, and the fusion report.

    The fused files are best effort: when they cannot be built the portable files still are, and
    the fusion report says why (``{"error": ...}``).
    """
    from slimformer.ort_fuse import OPT_FILE, OPT_INT8_FILE, operator_counts, optimize_fused
    from slimformer.structure import Structure

    t0 = time.perf_counter()
    fp32_path = torch_to_onnx(model, out / ONNX_FILE, sample, opset=config.opset)
    seconds["export"] = time.perf_counter() - t0
    files = {"fp32": ONNX_FILE}
    int8 = {"per_channel": config.per_channel, "reduce_range": config.reduce_range}
    if config.int8:
        t0 = time.perf_counter()
        quantize_int8(fp32_path, out / INT8_FILE, **int8)
        seconds["quantize"] = time.perf_counter() - t0
        files["int8"] = INT8_FILE
    if not config.optimize:
        return files, None
    t0 = time.perf_counter()
    raw = out / "model.fused.onnx"
    try:
        torch_to_onnx(model, raw, sample, opset=config.opset, fused=True)
        fusion: dict[str, Any] = {"fused_operators": optimize_fused(raw, out / OPT_FILE)}
        files["opt_fp32"] = OPT_FILE
        if config.int8:
            quantize_int8(out / OPT_FILE, out / OPT_INT8_FILE, fused=True, **int8)
            files["opt_int8"] = OPT_INT8_FILE
    except Exception as exc:  # best effort: any failure of the tracer or the optimizer keeps the portable files
        logger.warning("no fused onnxruntime graph (the portable files are written): %s", exc)
        return files, {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        raw.unlink(missing_ok=True)
    fusion["attention_nodes"] = operator_counts(out / OPT_FILE)["Attention"]
    fusion["heads_per_attention_node"] = [s.heads for s in Structure.from_model(model).layers if s.heads]
    seconds["optimize"] = time.perf_counter() - t0
    return files, fusion


def _export_into(
    out: Path, model: nn.Module, tokenizer, batches, config: ExportConfig, *, texts, bench, progress: bool
) -> tuple[dict[str, Any], list[str]]:
    """Write, verify and (when every check passed) time the files in ``out``; the report and the failures."""
    from slimformer.arch import get_adapter

    adapter = get_adapter(model)

    def unpadded(b) -> bool:
        mask = adapter.padding_mask(b)
        return mask is None or bool(mask.all())

    sample = max(batches, key=lambda b: (adapter.batch_rows(b), -int(unpadded(b))))  # the largest, padded
    seconds: dict[str, float] = {}

    tokenizer.save_pretrained(str(out))
    files, fusion = _write_files(model, out, sample, config, seconds)
    t0 = time.perf_counter()
    verification, failures = _verify_files(model, out, files, batches, config)
    verification["texts"] = "default" if texts is None else "given"
    seconds["verify"] = time.perf_counter() - t0

    report: dict[str, Any] = {
        "model": {
            **model_summary(model),
            "num_labels": model.config.num_labels,
            "id2label": {str(k): v for k, v in (model.config.id2label or {}).items()},
        },
        "config": config.to_dict(),
        "inputs": input_names(model),
        "outputs": ["logits"],
        "dynamic_axes": {"batch": 0, "sequence": 1},
        "files": files,
        "bytes": {k: (out / v).stat().st_size for k, v in files.items()},
        "fusion": fusion,
        "verification": verification,
        "passed": not failures,
        "supported": SUPPORTED,
    }
    time_and_save_report(out, report, seconds, model, model, OnnxModel, bench, progress=progress)
    return report, failures


def model_summary(model: nn.Module) -> dict[str, Any]:
    """The exported model as a report names it: class, family, parameters and per-layer shapes."""
    from slimformer.structure import Structure

    structure = Structure.from_model(model)
    return {
        "class": type(model).__name__,
        "family": structure.dims.family,
        "params": sum(p.numel() for p in model.parameters()),
        "layers": [{"heads": s.heads, "ffn": s.ffn} for s in structure.layers],
    }


def time_and_save_report(
    out: Path, report: dict, seconds: dict, model: nn.Module, reference, runner, bench, *, progress: bool
) -> None:
    """Time ``reference`` (PyTorch) against every file of ``report["files"]`` loaded by ``runner``.

    Interleaved, only when ``bench`` is given and verification passed; then records the timings,
    ``seconds`` and the environment and writes ``out/REPORT_FILE``.
    """
    if bench is not None and report["passed"]:
        t0 = time.perf_counter()
        threads = bench.threads or torch.get_num_threads()
        candidates: dict[str, Candidate] = {"pytorch_fp32": reference}
        for kind, name in report["files"].items():
            candidates[f"onnx_{kind}"] = runner(out / name, threads=threads)
        report["latency"] = compare_latency(
            candidates, bench, inputs_model=model, reference="pytorch_fp32", progress=progress
        )
        report["latency"]["onnx_threads"] = threads
        seconds["latency"] = time.perf_counter() - t0
    report["seconds"] = seconds
    report["environment"] = report.get("latency", {}).get("environment") or {
        **environment(),
        "onnxruntime": _version("onnxruntime"),
    }
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2, default=str) + "\n")


# --- the verb ----------------------------------------------------------------------------------


def export_onnx(
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
    """Export ``model`` to ONNX in ``out_dir``, verify it against PyTorch, optionally quantize and time it.

    Writes ``model.onnx`` (fp32), ``model.int8.onnx`` when ``config.int8``, with ``config.optimize``
    the fused onnxruntime graphs ``model.opt.onnx`` / ``model.opt.int8.onnx`` (each verified like
    the others; see :mod:`slimformer.ort_fuse`), the tokenizer files and ``slimformer_onnx.json``
    (this report, whose ``fusion`` entry counts the fused operators). Only static models are supported (see the module
    docstring and :func:`check_exportable`).

    Args:
        model: a dense or statically pruned sequence classifier (left unchanged, in its mode).
        tokenizer: its tokenizer (saved next to the files, and used to tokenize ``texts``).
        out_dir: output folder, new or empty (see ``overwrite``).
        config: export, quantization and verification settings.
        texts: real texts to verify on (None: :data:`DEFAULT_TEXTS`).
        bench: latency of PyTorch vs each ONNX file, interleaved (None: do not time).
        overwrite: empty a non-empty ``out_dir`` first instead of refusing.
        progress: show progress bars.

    Returns:
        The report: files and sizes, verification (max |logit diff|, argmax agreement, bounds,
        ``passed``), latency per batch size with speedups over PyTorch (not measured when a check
        failed), seconds, environment.

    Raises:
        ValueError: the model cannot be exported (see :func:`check_exportable`), bad settings, or
            ``out_dir`` names an ``.onnx`` file rather than a folder.
        FileExistsError: ``out_dir`` is not empty and ``overwrite`` is False.
        OnnxVerificationError: a bound was missed and ``config.check`` (the files and the report
            stay in ``out_dir`` for inspection).
    """
    from slimformer.fsutil import model_sources, staged_output_dir

    config = config or ExportConfig()
    _require_onnx()
    check_exportable(model)
    if tokenizer is None:
        raise ValueError("a tokenizer is needed: it tokenizes the verification texts and is saved next to the model")
    out_dir = Path(out_dir)
    if out_dir.suffix == ".onnx":
        raise ValueError(f"output {str(out_dir)!r} looks like a file; give a folder (it will hold {ONNX_FILE}, ...)")
    batches = verification_batches(
        model, tokenizer, texts, batch_size=config.verify_batch_size, max_length=config.max_length
    )
    # written into a hidden sibling, moved into place complete (failed checks too: kept for inspection)
    with staged_output_dir(out_dir, overwrite=overwrite, inputs=model_sources(model)) as stage:
        report, failures = _export_into(stage, model, tokenizer, batches, config, texts=texts, bench=bench,
                                        progress=progress)  # fmt: skip
    out = out_dir
    if failures and config.check:
        raise OnnxVerificationError(
            "ONNX export does not match PyTorch: " + "; ".join(failures) + f" (files left in {str(out)!r} to inspect)"
        )
    return report
