"""onnxruntime static int8: weights and activations quantized ahead of time, scales from calibration data.

Dynamic int8 (:func:`slimformer.onnx_export.quantize_int8`) measures each activation's range on
every call; static int8 fixes the ranges once, from calibration batches of real training text, so
the per-call work is lower. Only the MatMuls are quantized (activations into softmax, LayerNorm
and GELU stay float, where fixed int8 ranges cost accuracy), weights per output channel. Whether it
is faster than dynamic depends on the CPU and the shapes: :func:`slimformer.fit.fit` times both
and keeps static only where the clock says so, and scores it on validation (a static file is an
approximation, checked by accuracy rather than by logits).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from slimformer.onnx_runtime import STATIC_INT8_FILE  # noqa: F401  (the file names live there)

logger = logging.getLogger(__name__)

#: QDQ: QuantizeLinear/DequantizeLinear pairs that onnxruntime fuses into integer kernels when it
#: loads the file; QOperator: QLinearMatMul nodes written directly.
FORMATS = ("qdq", "qoperator")


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over prepared feeds."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]]):
        self._feeds = list(feeds)
        self._next = iter(self._feeds)

    def get_next(self):
        return next(self._next, None)

    def rewind(self):
        self._next = iter(self._feeds)


def calibration_feeds(batches: Iterable[Mapping], names: Sequence[str], *, limit: int = 8) -> list[dict]:
    """int64 numpy feeds of the graph inputs ``names`` from tokenized batches (at most ``limit``)."""
    feeds = []
    for batch in batches:
        if len(feeds) >= limit:
            break
        feed = {n: np.asarray(batch[n].cpu().numpy() if hasattr(batch[n], "cpu") else batch[n], dtype=np.int64)
                for n in names if n in batch}  # fmt: skip
        if "token_type_ids" in names and "token_type_ids" not in feed:
            feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        feeds.append(feed)
    if not feeds:
        raise ValueError("no calibration batches: static int8 needs some real inputs to fix its ranges")
    return feeds


def quantize_static_int8(
    src: str | Path, dst: str | Path, feeds: Sequence[Mapping[str, np.ndarray]], *, fmt: str = "qdq",
    per_channel: bool = True,
) -> Path:  # fmt: skip
    """Static int8 of the MatMuls of ``src`` into ``dst``, activation ranges from ``feeds`` (MinMax).

    Raises:
        ValueError: ``fmt`` is not one of :data:`FORMATS`, or ``feeds`` is empty.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if fmt not in FORMATS:
        raise ValueError(f"fmt={fmt!r}: must be one of {', '.join(FORMATS)}")
    if not feeds:
        raise ValueError("feeds is empty: static int8 needs calibration inputs")
    graph = onnx.load(str(src), load_external_data=False).graph
    empty = {t.name for t in graph.initializer if 0 in tuple(t.dims)}
    skip = [n.name for n in graph.node if n.op_type == "MatMul" and any(i in empty for i in n.input)]
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # the quantizer logs every node it leaves alone
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_static(
                str(src), str(dst), _Reader(feeds),
                quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                op_types_to_quantize=["MatMul"], per_channel=per_channel, nodes_to_exclude=skip,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )  # fmt: skip
    finally:
        logging.disable(previous)
    return Path(dst)
