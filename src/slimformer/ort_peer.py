"""The outside peer: onnxruntime's own transformer optimizer + dynamic int8 on the dense model.

This is what a user of the onnxruntime / Optimum path gets without slimformer: the plain ONNX
export, ``onnxruntime.transformers.optimizer.optimize_model(model_type="bert")`` (which fuses
skip-LayerNorm and bias-GELU in the graphs transformers 5 exports, but no attention), then
``quantize_dynamic`` to int8. :func:`build_peer` writes and verifies it (fp32 logits within
``atol`` of PyTorch, int8 by argmax agreement) so that a speedup reported against it is against a
working model; score its accuracy on a task before claiming anything about it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

PEER_FP32_FILE = "peer.opt.onnx"
PEER_INT8_FILE = "peer.opt.int8.onnx"


def optimize_stock(src: str | Path, dst: str | Path, *, num_heads: int, hidden_size: int) -> dict[str, int]:
    """onnxruntime's transformer optimizer with its defaults for BERT; returns the fused-operator counts."""
    from onnxruntime.transformers.optimizer import optimize_model

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # the optimizer logs each fusion pass to the root logger
    try:
        optimized = optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size)
    finally:
        logging.disable(previous)
    optimized.save_model_to_file(str(dst))
    return {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}


def build_peer(
    model: nn.Module,
    tokenizer,
    folder: str | Path,
    *,
    texts: Sequence[str] | None = None,
    max_length: int = 128,
    atol: float = 1e-4,
    min_agreement: float = 0.8,
    threads: int | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Export the dense ``model``, optimize it as onnxruntime does, quantize it to int8; verify both files.

    Args:
        model: the dense fp32 classifier (left unchanged).
        tokenizer: its tokenizer (tokenizes ``texts``; saved in ``folder``).
        folder: a new or empty folder for the files.
        texts: real texts to verify on (None: the built-in sentences).
        max_length: truncation of the verification texts.
        atol: largest allowed max |logit difference| of the optimized fp32 file vs PyTorch.
        min_agreement: smallest allowed argmax agreement of the int8 file with PyTorch.
        threads: onnxruntime intra-op threads of the returned model (None: torch's count).

    Returns:
        ``(OnnxModel of the int8 file, info)`` with the fused operators, verification and file sizes.

    Raises:
        OnnxVerificationError: a file misses its bound (the files stay in ``folder``).
    """
    from slimformer.onnx_export import ExportConfig, OnnxVerificationError, export_onnx, quantize_int8
    from slimformer.onnx_runtime import ONNX_FILE, OnnxModel
    from slimformer.onnx_verify import compare_logits, verification_batches

    folder = Path(folder)
    export_onnx(
        model, tokenizer, folder, ExportConfig(optimize=False, max_length=max_length, atol=atol), texts=texts,
        bench=None, progress=False,
    )  # fmt: skip
    cfg = model.config
    fused = optimize_stock(
        folder / ONNX_FILE, folder / PEER_FP32_FILE, num_heads=cfg.num_attention_heads, hidden_size=cfg.hidden_size
    )
    quantize_int8(folder / PEER_FP32_FILE, folder / PEER_INT8_FILE, fused=True)
    batches = verification_batches(model, tokenizer, texts, max_length=max_length)
    fp32 = compare_logits(model, OnnxModel(folder / PEER_FP32_FILE, threads=1), batches)
    int8 = compare_logits(model, OnnxModel(folder / PEER_INT8_FILE, threads=1), batches)
    failures = []
    if fp32["max_abs_diff"] > atol:
        failures.append(f"{PEER_FP32_FILE}: max |logit diff| {fp32['max_abs_diff']:.3g} > atol {atol:g}")
    if int8["argmax_agreement"] < min_agreement:
        failures.append(f"{PEER_INT8_FILE}: argmax agreement {int8['argmax_agreement']:.1%} < {min_agreement:.1%}")
    if failures:
        raise OnnxVerificationError("the peer does not match PyTorch: " + "; ".join(failures))
    info = {
        "what": "dense -> onnxruntime transformer optimizer (model_type=bert) -> dynamic int8 (per channel)",
        "folder": str(folder),
        "fused_operators": fused,
        "verification": {"fp32": fp32, "int8": int8, "atol": atol, "min_agreement": min_agreement},
        "bytes": {"fp32": (folder / PEER_FP32_FILE).stat().st_size, "int8": (folder / PEER_INT8_FILE).stat().st_size},
    }
    logger.info("peer: fused %s, fp32 max |diff| %.3g", fused, fp32["max_abs_diff"])
    peer = OnnxModel(folder / PEER_INT8_FILE, threads=threads or torch.get_num_threads())
    peer.config = model.config  # what bench_models reads to build its inputs
    return peer, info
