"""The fused onnxruntime graphs: one Attention node per layer with that layer's heads, equal to PyTorch."""

from __future__ import annotations

import pytest
import torch

from conftest import make_inputs, make_tiny_model
from slimformer.onnx_export import ExportConfig, OnnxModel, export_onnx, input_names, quantize_int8, torch_to_onnx
from slimformer.onnx_runtime import OPT_FILE, OPT_INT8_FILE, load_onnx
from slimformer.ort_fuse import FusedClassifier, FusedSelfAttention, operator_counts, optimize_fused
from slimformer.surgery import KeepPlan, apply_plan

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

#: Uneven heads per layer (3, 0, 1 and 4 of 4 heads; one head is its own edge case), one halved FFN: what OPTIN leaves.
UNEVEN = {"heads": {0: [1], 1: [0, 1, 2, 3], 2: [0, 2, 3]}, "neurons": {0: range(0, 37, 2)}}


def refused(model) -> bool:
    """A family whose adapter refuses fused attention says why, and is not fused."""
    from slimformer.arch import get_adapter

    if "fused_onnx_attention" not in get_adapter(model).refused:
        return False
    with pytest.raises(ValueError, match="fused_onnx_attention is not available"):
        FusedClassifier(model, input_names(model))
    return True


def tiny(family: str, *, pruned: bool):
    model = make_tiny_model(family, layers=4)
    if pruned:
        apply_plan(model, KeepPlan.removing(model, **UNEVEN))
    return model


def inputs_for(model, batch: int, seq: int, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random ids, row 0 padded over its last ~third, token types where the family has them."""
    x = make_inputs(batch, seq, seed=seed, pad_last=max(1, seq // 3) if batch > 1 else 0)
    if "token_type_ids" in input_names(model):
        x["token_type_ids"] = torch.zeros_like(x["input_ids"])
    return x


def max_diff(model, onnx_model: OnnxModel, shapes=((1, 5), (3, 9), (4, 23), (2, 40))) -> float:
    """Max |logit difference| over padded batches of several lengths."""
    worst = 0.0
    for i, (b, t) in enumerate(shapes):
        x = inputs_for(model, b, t, seed=i)
        with torch.inference_mode():
            ref = model(**x).logits
        worst = max(worst, float((onnx_model(**x) - ref).abs().max()))
    return worst


@pytest.mark.parametrize("pruned", [False, True], ids=["dense", "uneven"])
def test_fused_graph_matches_pytorch_with_per_layer_heads(family, pruned, tmp_path):
    model = tiny(family, pruned=pruned)
    if refused(model):
        return
    heads = [3, 0, 1, 4] if pruned else [4, 4, 4, 4]
    raw, opt = tmp_path / "fused.onnx", tmp_path / OPT_FILE
    torch_to_onnx(model, raw, inputs_for(model, 3, 11), fused=True)
    counts = optimize_fused(raw, opt)
    assert counts["Attention"] == sum(h > 0 for h in heads) == operator_counts(opt)["Attention"]
    assert counts["SkipLayerNormalization"] >= 4  # the optimizer fused the rest too
    nodes = [n for n in onnx.load(str(opt)).graph.node if n.op_type == "Attention"]
    got = [next(a.i for a in n.attribute if a.name == "num_heads") for n in nodes]
    assert got == [h for h in heads if h]
    assert max_diff(model, OnnxModel(opt, threads=1)) <= 1e-5


def test_fused_int8_quantizes_attention_and_stays_close(tmp_path):
    model = tiny("bert", pruned=True)
    raw, opt, q = tmp_path / "fused.onnx", tmp_path / OPT_FILE, tmp_path / OPT_INT8_FILE
    torch_to_onnx(model, raw, inputs_for(model, 3, 11), fused=True)
    optimize_fused(raw, opt)
    quantize_int8(opt, q, fused=True)
    assert operator_counts(q) == {"Attention": 0, "QAttention": 3}
    diff = max_diff(model, OnnxModel(q, threads=1))
    assert 0 < diff < 0.05  # really quantized, and still close on a tiny random model


def test_fused_pytorch_copy_equals_the_model_and_leaves_it_alone(family):
    model = tiny(family, pruned=True)
    if refused(model):
        return
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = input_names(model)
    wrapper = FusedClassifier(model, names)
    assert wrapper.heads == [3, 1, 4] and all(isinstance(f, FusedSelfAttention) for f in wrapper.fused)
    x = inputs_for(model, 3, 13)
    with torch.inference_mode():
        torch.testing.assert_close(wrapper(*(x[n] for n in names)), model(**x).logits, rtol=1e-5, atol=1e-6)
    assert not any(isinstance(m, FusedSelfAttention) for m in model.modules())
    torch.testing.assert_close(model.state_dict(), before)
    with pytest.raises(RuntimeError, match="key_mask is unset"):
        wrapper.fused[0](torch.zeros(1, 2, 32))


def test_fused_attention_rejects_bad_heads_and_missing_mask_input():
    q = torch.nn.Linear(32, 24)
    with pytest.raises(ValueError, match="num_heads=5"):
        FusedSelfAttention(q, q, q, num_heads=5, scale=1.0)
    with pytest.raises(ValueError, match="lack attention_mask"):
        FusedClassifier(make_tiny_model("bert"), ["input_ids"])


def test_export_writes_verified_fused_files_and_load_finds_them(tiny_tokenizer, tmp_path):
    model = tiny("roberta", pruned=True)
    config = ExportConfig(int8=True, int8_min_agreement=0.0)
    report = export_onnx(model, tiny_tokenizer, tmp_path / "out", config, bench=None, progress=False)
    assert report["files"]["opt_fp32"] == OPT_FILE and report["files"]["opt_int8"] == OPT_INT8_FILE
    assert report["verification"]["opt_fp32"]["max_abs_diff"] <= 1e-4 and report["passed"]
    assert report["fusion"]["attention_nodes"] == 3 and report["fusion"]["heads_per_attention_node"] == [3, 1, 4]
    assert not (tmp_path / "out" / "model.fused.onnx").exists()  # the intermediate graph is gone
    assert load_onnx(tmp_path / "out", optimized=True)[0].path.name == OPT_FILE
    assert load_onnx(tmp_path / "out", int8=True, optimized=True)[0].path.name == OPT_INT8_FILE
    assert load_onnx(tmp_path / "out")[0].path.name == "model.onnx"  # the portable file unless asked

    plain = export_onnx(
        model, tiny_tokenizer, tmp_path / "plain", ExportConfig(optimize=False), bench=None, progress=False
    )
    assert set(plain["files"]) == {"fp32"} and plain["fusion"] is None
    assert load_onnx(tmp_path / "plain")[0].path.name == "model.onnx"
    with pytest.raises(FileNotFoundError, match="optimize"):
        load_onnx(tmp_path / "plain", optimized=True)


def test_export_keeps_the_portable_files_when_fusion_fails(tiny_tokenizer, tmp_path, monkeypatch):
    import slimformer.ort_fuse as ort_fuse

    def broken(src, dst):
        raise RuntimeError("optimizer exploded")

    monkeypatch.setattr(ort_fuse, "optimize_fused", broken)
    model = tiny("bert", pruned=True)
    report = export_onnx(model, tiny_tokenizer, tmp_path / "out", ExportConfig(), bench=None, progress=False)
    assert set(report["files"]) == {"fp32"} and report["passed"]
    assert report["fusion"] == {"error": "RuntimeError: optimizer exploded"}
    assert load_onnx(tmp_path / "out")[0].path.name == "model.onnx"


@pytest.mark.real
def test_real_minilm_uneven_fused_matches_within_1e_4(tmp_path):
    from slimformer.models import load_model

    torch.manual_seed(0)
    model, _ = load_model("minilm-l6", label_names=["rotten", "fresh"])
    plan = KeepPlan.removing(model, heads={0: range(6), 2: range(11), 3: range(12)}, neurons={1: range(0, 1536, 2)})
    apply_plan(model, plan)
    raw, opt = tmp_path / "fused.onnx", tmp_path / OPT_FILE
    torch_to_onnx(model, raw, inputs_for(model, 2, 16), fused=True)
    counts = optimize_fused(raw, opt)
    assert counts["Attention"] == 5 and counts["SkipLayerNormalization"] == 12
    assert max_diff(model, OnnxModel(opt, threads=1), shapes=((1, 48), (4, 48), (2, 128))) <= 1e-4
