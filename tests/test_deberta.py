"""DeBERTa-v2 / v3: disentangled attention under surgery, its cost terms, save / load, and refusals.

The registry's tiny DeBERTa (v3 settings: share_att_key, c2p|p2c, relative-only positions) runs
through the shared suite; these tests cover what it does not: the position path's own projections
(share_att_key False), one score term only, a layer left without heads, the exact MACs of the
relative terms, and the settings and methods the adapter refuses, each saying why.
"""

import re

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForSequenceClassification, DebertaConfig

from conftest import make_inputs, make_tiny_model
from slimformer.arch import FAMILIES, get_adapter, get_adapter_for_config
from slimformer.axformer import AxConfig, axformer, set_hard_attention
from slimformer.cost import batch_macs, cost_of, per_forward_macs
from slimformer.export import load_slim, save_model
from slimformer.onnx_export import ExportConfig, export_onnx
from slimformer.skim import build_skim_model
from slimformer.structure import Structure
from slimformer.surgery import KeepPlan, apply_plan, masked
from test_cost import counted_macs
from test_export import plain_transformers_logits

ADAPTER = FAMILIES["deberta-v2"]
PLAN = {"heads": {0: [1, 2], 1: [0, 1, 2, 3]}, "neurons": {2: range(10)}}  # layer 1 left without heads


def deberta(*, shared: bool = True, types=("p2c", "c2p"), seed: int = 0, **fields):
    config = ADAPTER.tiny_config(layers=3, num_labels=3)
    config.share_att_key, config.pos_att_type = shared, list(types)
    for k, v in fields.items():
        setattr(config, k, v)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    with torch.no_grad():  # random init gives logits ~0.01 and flat attention: sharpen both
        model.classifier.weight.mul_(100)
        for layer in model.deberta.encoder.layer:
            for name in ("query_proj", "key_proj", "pos_query_proj", "pos_key_proj"):
                if hasattr(layer.attention.self, name):
                    getattr(layer.attention.self, name).weight.mul_(10)
    return model


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def head_masks(plan: dict, layers: int = 3, heads: int = 4) -> list[torch.Tensor]:
    masks = [torch.ones(heads) for _ in range(layers)]
    for i, hs in plan["heads"].items():
        masks[i][list(hs)] = 0
    return masks


def ffn_masks(plan: dict, layers: int = 3, width: int = 37) -> list[torch.Tensor]:
    masks = [torch.ones(width) for _ in range(layers)]
    for i, ns in plan["neurons"].items():
        masks[i][list(ns)] = 0
    return masks


@pytest.mark.parametrize(("shared", "types"), [(True, ("p2c", "c2p")), (False, ("p2c", "c2p")), (False, ("c2p",))])
def test_removing_heads_equals_masking_them_in_content_and_position_paths(shared, types):
    model = deberta(shared=shared, types=types)
    inputs = make_inputs(batch=2, seq=12, pad_last=3)
    dense = logits(model, inputs)
    with masked(model, head_masks(PLAN), ffn_masks(PLAN)):
        expected = logits(model, inputs)
    assert (expected - dense).abs().max() > 1e-3  # the cut is visible: the equality below can fail
    core0 = model.deberta.encoder.layer[0].attention.self
    own = {n: getattr(core0, n).weight.clone() for n in ("pos_query_proj", "pos_key_proj") if hasattr(core0, n)}
    assert bool(own) == (not shared) and ("pos_query_proj" in own) == ("p2c" in types and not shared)
    apply_plan(model, KeepPlan.removing(model, **PLAN))
    torch.testing.assert_close(logits(model, inputs), expected, rtol=1e-5, atol=1e-5)
    core0 = model.deberta.encoder.layer[0].attention.self
    assert (core0.num_attention_heads, core0.all_head_size, core0.attention_head_size) == (2, 16, 8)
    for name, w in own.items():  # the kept heads' rows (0 and 3), in order
        torch.testing.assert_close(getattr(core0, name).weight, w[[*range(8), *range(24, 32)]], rtol=0, atol=0)
    assert get_adapter(model).attention(model.deberta.encoder.layer[1]).num_heads == 0


@pytest.mark.parametrize(("shared", "types"), [(True, ("p2c", "c2p")), (False, ("p2c", "c2p")), (False, ("c2p",))])
@pytest.mark.parametrize("seq_len", [8, 40])
def test_cost_counts_the_relative_terms_exactly(shared, types, seq_len):
    model = deberta(shared=shared, types=types)
    for uneven in (False, True):
        if uneven:
            apply_plan(model, KeepPlan.removing(model, **PLAN))
        structure = Structure.from_model(model)
        cost = cost_of(structure, seq_len)
        assert cost.macs == counted_macs(model, seq_len)
        assert cost.params == sum(p.numel() for p in model.parameters())
    dims = structure.dims
    assert (dims.rel_rows, dims.rel_terms, dims.rel_projections) == (16, len(types), 2 if shared else len(types))
    # the relative terms are a real share of the count: without them the model would be off
    width = sum(s.heads for s in structure.layers) * dims.head_size
    per_width = dims.rel_terms * seq_len * dims.rel_rows + dims.rel_projections * dims.rel_rows * dims.hidden
    assert width * per_width > 0.05 * cost.macs


def test_batched_forward_projects_the_table_once():
    model = deberta()
    apply_plan(model, KeepPlan.removing(model, **PLAN))
    structure = Structure.from_model(model)
    model.config._attn_implementation = "eager"
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(**make_inputs(batch=3, seq=10, pad_last=0))
    assert batch_macs(structure, 10, 3) == counter.get_total_flops() / 2
    assert batch_macs(structure, 10, 3) < 3 * cost_of(structure, 10).macs == batch_macs(structure, 10, 1) * 3
    plain = Structure.from_model(make_tiny_model("bert"))
    assert per_forward_macs(plain) == 0 and batch_macs(plain, 10, 3) == 3 * cost_of(plain, 10).macs


@pytest.mark.parametrize("shared", [True, False])
def test_uneven_model_saves_and_loads_with_plain_transformers(shared, tiny_tokenizer, tmp_path):
    model = deberta(shared=shared)
    apply_plan(model, KeepPlan.removing(model, layers=[2], **PLAN))
    inputs = make_inputs(batch=2, seq=12, pad_last=3)
    expected = logits(model, inputs)
    folder = save_model(model, tiny_tokenizer, tmp_path / "m")
    loaded = load_slim(folder)
    torch.testing.assert_close(logits(loaded, inputs), expected, rtol=0, atol=0)
    torch.testing.assert_close(plain_transformers_logits(folder, inputs), expected, rtol=1e-5, atol=1e-6)
    assert Structure.from_model(loaded) == Structure.from_model(model)


@pytest.mark.parametrize("shared", [True, False])
def test_uneven_model_exports_to_onnx_with_its_relative_gathers(shared, tiny_tokenizer, tmp_path):
    onnx = pytest.importorskip("onnx")
    model = deberta(shared=shared)
    apply_plan(model, KeepPlan.removing(model, layers=[2], **PLAN))
    report = export_onnx(model, tiny_tokenizer, tmp_path / "onnx", ExportConfig(int8=False), bench=None, progress=False)
    assert report["passed"] and report["verification"]["fp32"]["max_abs_diff"] <= 1e-4
    graph = onnx.load(str(tmp_path / "onnx" / "model.onnx")).graph
    # c2p and p2c each pick every pair's table row with one GatherElements, in the one layer with heads
    assert [n.op_type for n in graph.node].count("GatherElements") == 2


def test_relative_positions_reach_the_log_buckets_and_matter():
    model = deberta()
    inputs = make_inputs(batch=1, seq=40, pad_last=0)
    with torch.no_grad():
        rel = model.deberta.encoder.get_rel_pos(torch.zeros(1, 40, 32))  # (1, T, T) bucketed offsets
        base = logits(model, inputs)
        model.deberta.encoder.rel_embeddings.weight.normal_()  # another position table
    assert int(rel.abs().max()) > 4 and len(rel.unique()) < 2 * 40 - 1  # log buckets merge far offsets
    assert (logits(model, inputs) - base).abs().max() > 1e-3  # the position path is live


def test_refusals_say_why():
    model = deberta()
    with pytest.raises(ValueError, match="skim is not available for deberta-v2 models: .*relative positions"):
        build_skim_model(model)
    with pytest.raises(ValueError, match="hard_attention is not available for deberta-v2 models: .*c2p / p2c"):
        set_hard_attention(model, {0: 2})
    with pytest.raises(ValueError, match="needs at least one layer"):
        apply_plan(model, KeepPlan.removing(model, layers=[0, 1, 2]))
    with pytest.raises(ValueError, match=re.escape("model_type 'deberta': DeBERTa (v1) fuses q, k and v")):
        get_adapter_for_config(DebertaConfig())
    for field, value, message in (
        ("conv_kernel_size", 3, "conv_kernel_size=3 is not supported for deberta-v2 models"),
        ("pooler_hidden_size", 16, "pooler_hidden_size=16 is not supported for deberta-v2 models: it must be 32"),
        ("embedding_size", 16, "embedding_size=16 is not supported"),
    ):
        config = ADAPTER.tiny_config()
        setattr(config, field, value)
        with pytest.raises(ValueError, match=message):
            ADAPTER.dims(config)


def test_axformer_searches_without_hard_attention_and_reports_why(tiny_tokenizer):
    model = make_tiny_model("deberta-v2")
    batches = [{**make_inputs(batch=8, seq=10, seed=s), "labels": torch.arange(8) % 3} for s in range(2)]
    result = axformer(model, AxConfig(budget="macs=0.7"), batches, progress=False)
    assert result.report["hard_attention_skipped"] == ADAPTER.refused["hard_attention"]
    assert (
        result.topk == {}
        and cost_of(Structure.from_model(result.model), 10).macs < cost_of(Structure.from_model(model), 10).macs
    )
