"""onnxruntime static int8 and the peer: files that change the graph, stay close to fp32, and refuse bad input."""

from __future__ import annotations

import pytest
import torch

from conftest import make_inputs, make_tiny_model
from slimformer.onnx_export import OnnxModel, input_names, torch_to_onnx
from slimformer.surgery import KeepPlan, apply_plan

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def _inputs(batch: int, seq: int, seed: int) -> dict[str, torch.Tensor]:
    x = make_inputs(batch, seq, seed=seed)
    return {**x, "token_type_ids": torch.zeros_like(x["input_ids"])}


def _batches(count: int = 4) -> list[dict[str, torch.Tensor]]:
    return [_inputs(4, 12, s) for s in range(count)]


@pytest.mark.parametrize("fmt, op", [("qdq", "QuantizeLinear"), ("qoperator", "QLinearMatMul")])
def test_static_int8_quantizes_the_matmuls_and_stays_close_to_fp32(fmt, op, tmp_path):
    from slimformer.ort_static import calibration_feeds, quantize_static_int8

    model = make_tiny_model("bert", layers=3).eval()
    apply_plan(model, KeepPlan.removing(model, heads={1: [0, 1, 2, 3]}, neurons={0: range(0, 37, 2)}))  # uneven
    batches = _batches()
    fp32 = torch_to_onnx(model, tmp_path / "model.onnx", batches[0])
    feeds = calibration_feeds(batches, input_names(model))
    out = quantize_static_int8(fp32, tmp_path / "s.onnx", feeds, fmt=fmt)
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert op in ops and op not in [n.op_type for n in onnx.load(str(fp32)).graph.node]
    test = _inputs(3, 12, 99)
    with torch.inference_mode():
        ref = model(**test).logits
    got = OnnxModel(out, threads=1)(**test)
    assert not torch.equal(got, OnnxModel(fp32, threads=1)(**test))  # it is quantized
    assert (got - ref).abs().max() <= 0.1 * ref.abs().max() + 1e-3  # ... and still close


def test_static_int8_refuses_bad_input(tmp_path):
    from slimformer.ort_static import calibration_feeds, quantize_static_int8

    with pytest.raises(ValueError, match="fmt='int4'.*qdq, qoperator"):
        quantize_static_int8(tmp_path / "m.onnx", tmp_path / "s.onnx", [{"x": 1}], fmt="int4")
    with pytest.raises(ValueError, match="no calibration batches"):
        calibration_feeds([], ["input_ids"])


def test_peer_is_verified_against_pytorch_and_int8(tiny_tokenizer, tmp_path):
    from slimformer.ort_peer import PEER_INT8_FILE, build_peer

    model = make_tiny_model("bert", layers=2, num_labels=2)
    peer, info = build_peer(model, tiny_tokenizer, tmp_path / "peer", max_length=16)
    assert peer.path.name == PEER_INT8_FILE and info["verification"]["fp32"]["max_abs_diff"] <= 1e-4
    assert info["fused_operators"].get("SkipLayerNormalization", 0) > 0  # the optimizer did fuse something
    assert info["bytes"]["int8"] < info["bytes"]["fp32"]
    batch = _inputs(2, 10, 0)
    assert peer(**batch).shape == (2, 2)
