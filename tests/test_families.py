"""What each registered family declares about itself, checked against the real transformers classes.

The shared suite (test_arch, test_cost, test_surgery, test_export, test_onnx_export, ...) runs on a
tiny model of every family in the registry; these tests check the family facts that code outside
``arch/`` reads (position offset, inputs, head modules, exit warm start), ELECTRA-small's
narrower embeddings, which the registry's tiny ELECTRA (embeddings as wide as the layers) lacks,
and ModernBERT's fused projections, layer kinds and refusals.
"""

import dataclasses

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForSequenceClassification

from conftest import FAMILIES, IMAGE_FAMILIES, make_inputs, make_tiny_model
from slimformer.arch import FAMILIES as ADAPTER_FAMILIES
from slimformer.arch import get_adapter
from slimformer.bench import max_seq_len
from slimformer.cost import cost_of
from slimformer.exits import MultiExitModel, exit_cost_table
from slimformer.export import load_slim, save_model
from slimformer.hf_remote.modeling_slimformer import FAMILY_PATHS, SLIM_CLASSES
from slimformer.models import load_model
from slimformer.onnx_export import ExportConfig, export_onnx, input_names
from slimformer.skim import build_skim_model, skim_macs
from slimformer.static import METHODS, PruneConfig, prune
from slimformer.structure import Structure
from slimformer.surgery import KeepPlan, apply_plan
from test_export import plain_transformers_logits
from test_vit import make_tiny_vit


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def test_every_family_is_registered_for_loading_and_saving():
    assert FAMILIES + IMAGE_FAMILIES == tuple(ADAPTER_FAMILIES)
    for family, adapter in ADAPTER_FAMILIES.items():
        model = make_tiny_model(family) if family in FAMILIES else make_tiny_vit(family)
        assert model.config.model_type in adapter.model_types and get_adapter(model) is adapter
        assert family in FAMILY_PATHS and issubclass(SLIM_CLASSES[family], type(model))
        assert SLIM_CLASSES[family].__name__.startswith("Slim")


def test_position_offset_gives_the_longest_sequence_that_runs(family):
    model = make_tiny_model(family)
    limit = max_seq_len(model)
    assert limit == model.config.max_position_embeddings - get_adapter(model).position_offset(model.config)
    ids = torch.full((1, limit), 20)
    with torch.no_grad():
        model(input_ids=ids)  # the limit itself runs
        if not get_adapter(model).dims(model.config).position_table:
            return  # rotary (ModernBERT) or relative-only (DeBERTa-v3) positions: no table to run past
        with pytest.raises((IndexError, RuntimeError)):
            model(input_ids=torch.full((1, limit + 1), 20))  # one more token is past the position table


def test_input_names_are_what_the_forward_takes(family):
    model = make_tiny_model(family)
    names = get_adapter(model).input_names(model.config)
    assert input_names(model) == list(names)
    inputs = make_inputs()
    segments = logits(model, {**inputs, "token_type_ids": torch.ones_like(inputs["input_ids"])})
    # a family with segment embeddings reads them; one without ignores the argument
    assert torch.allclose(segments, logits(model, inputs)) != ("token_type_ids" in names)


def test_exit_head_paths_are_the_dense_and_output_layers(family):
    model = make_tiny_model(family, num_labels=5)
    paths = get_adapter(model).exit_head_paths
    if paths is None:
        pytest.skip(f"{family}: exits start from random heads")
    dense, out = (model.get_submodule(p) for p in paths)
    assert isinstance(dense, nn.Linear) and (dense.in_features, dense.out_features) == (32, 32)
    assert isinstance(out, nn.Linear) and (out.in_features, out.out_features) == (32, 5)


def test_a_base_checkpoint_is_refused_naming_its_head(family, tiny_tokenizer, tmp_path):
    model = make_tiny_model(family, num_labels=2)
    adapter = get_adapter(model)
    adapter.base_model(model).save_pretrained(tmp_path / "base")  # what a pretrained encoder checkpoint holds
    tiny_tokenizer.save_pretrained(tmp_path / "base")
    with pytest.raises(ValueError, match="no fine-tuned classification head") as info:
        load_model(str(tmp_path / "base"), require_head=True)
    named = str(info.value).split("(", 1)[1].split(")", 1)[0].split(", ")  # the keys that would be random
    assert named and all(adapter.is_head_key(k) for k in named)
    assert any(k.startswith(adapter.head_paths[-1] + ".") for k in named)  # the output layer always is
    save_model(model, tiny_tokenizer, tmp_path / "full")
    loaded, _ = load_model(str(tmp_path / "full"), require_head=True)  # a fine-tuned one loads
    torch.testing.assert_close(logits(loaded, make_inputs()), logits(model, make_inputs()))


# --- ELECTRA-small: embeddings narrower than the layers, lifted by embeddings_project ------------


def electra_small(seed: int = 0):
    config = ADAPTER_FAMILIES["electra"].tiny_config(layers=3, num_labels=3)
    config.embedding_size = 16
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    with torch.no_grad():  # random init gives logits ~0.01; scale the output so differences show
        model.classifier.out_proj.weight.mul_(100)
    return model


def cut(model):
    plan = KeepPlan.removing(model, heads={0: [1, 2]}, neurons={1: range(9)}, attention=[2], layers=[1])
    return apply_plan(model, plan)


def counted_macs(model, seq_len: int) -> float:
    model.config._attn_implementation = "eager"  # so the attention matmuls are visible to the counter
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(**make_inputs(batch=1, seq=seq_len, pad_last=0))
    return counter.get_total_flops() / 2


def test_electra_small_has_a_projection_and_the_adapter_runs_it():
    model = electra_small()
    dims = get_adapter(model).dims(model.config)
    assert isinstance(model.electra.embeddings_project, nn.Linear) and dims.embedding_size == 16
    assert dataclasses.replace(dims, embedding_size=0) == get_adapter(model).dims(make_tiny_model("electra").config)
    inputs = make_inputs(pad_last=3)
    with torch.no_grad():
        torch.testing.assert_close(get_adapter(model).forward(model, **inputs), model(**inputs).logits)


@pytest.mark.parametrize("seq_len", [8, 40])
def test_electra_small_cost_counts_the_projection(seq_len):
    model = electra_small()
    dense = cost_of(Structure.from_model(model), seq_len)
    assert dense.params == sum(p.numel() for p in model.parameters())
    assert dense.macs == pytest.approx(counted_macs(model, seq_len), rel=0.02)
    wide = cost_of(Structure.from_model(make_tiny_model("electra")), seq_len)
    assert dense.macs == wide.macs + seq_len * 16 * 32  # the same layers, one more Linear per token
    cut(model)
    pruned = cost_of(Structure.from_model(model), seq_len)
    assert pruned.params == sum(p.numel() for p in model.parameters())
    assert pruned.macs == pytest.approx(counted_macs(model, seq_len), rel=0.02) and pruned.macs < dense.macs


def test_electra_small_pruned_saves_loads_and_exports(tiny_tokenizer, tmp_path):
    model = electra_small()
    inputs = make_inputs()
    dense = logits(model, inputs)
    cut(model)
    expected = logits(model, inputs)
    assert (expected - dense).abs().max() > 1e-3  # pruning changed it: the equalities below can fail
    folder = save_model(model, tiny_tokenizer, tmp_path / "m")
    torch.testing.assert_close(logits(load_slim(folder), inputs), expected, rtol=0, atol=0)
    torch.testing.assert_close(plain_transformers_logits(folder, inputs), expected, rtol=1e-5, atol=1e-6)
    report = export_onnx(model, tiny_tokenizer, tmp_path / "onnx", ExportConfig(int8=False), bench=None, progress=False)
    assert report["passed"] and report["verification"]["fp32"]["max_abs_diff"] <= 1e-4


@pytest.mark.parametrize("method", sorted(METHODS))
def test_electra_small_prunes_to_budget_with_every_method(method):
    model = electra_small()
    cal = [{**make_inputs(batch=8, seq=12, seed=s), "labels": torch.arange(8) % 3} for s in range(3)]
    result = prune(model, PruneConfig.from_dict({"method": method, "budget": "macs=0.6,seq=12"}), cal, progress=False)
    small = Structure.from_model(result.model)
    assert cost_of(small, 12).macs <= 0.6 * cost_of(Structure.from_model(model), 12).macs
    assert sum(p.numel() for p in result.model.parameters()) == cost_of(small).params


def test_electra_small_skim_and_exit_costs_count_the_projection():
    skimmer = build_skim_model(electra_small())
    structure, per_token = Structure.from_model(skimmer), skimmer.skim_predictors[0].macs_per_token()
    full = torch.tensor([[9, 9, 9]])  # every token through every layer
    assert skim_macs(skimmer, full).item() == cost_of(structure, 9).macs + 2 * 9 * per_token
    wrapped = MultiExitModel.from_classifier(electra_small())
    table, dense = exit_cost_table(wrapped, 16), cost_of(Structure.from_model(wrapped.backbone), 16)
    assert table["dense_macs"] == dense.macs
    assert table["macs_by_depth"][-1] == dense.macs + sum(table["exit_macs"])
    assert table["macs_by_depth"][0] == 16 * 16 * 32 + dense.layers[0]["macs"] + table["exit_macs"][0]


# --- ModernBERT: fused Wqkv, GLU pairs, local / global layers, first layer without attention norm --


def modernbert(seed: int = 0):
    model = make_tiny_model("modernbert", seed=seed)
    with torch.no_grad():  # outputs differ visibly once units go
        model.classifier.weight.mul_(10)
    return model


def test_modernbert_head_removal_takes_its_q_k_v_slices_and_neuron_removal_its_glu_pair():
    model = modernbert()
    layer = get_adapter(model).layers(model)[1]
    wqkv, wi = layer.attn.Wqkv.weight.clone(), layer.mlp.Wi.weight.clone()  # (3 * 32, 32), (2 * 37, 32)
    apply_plan(model, KeepPlan.removing(model, heads={1: [0, 2]}, neurons={1: range(30)}))
    q, k, v = wqkv.view(3, 4, 8, 32).unbind(0)  # (heads, head size, hidden) each
    expected = torch.cat([x[[1, 3]].reshape(16, 32) for x in (q, k, v)])
    torch.testing.assert_close(layer.attn.Wqkv.weight, expected, rtol=0, atol=0)
    torch.testing.assert_close(layer.mlp.Wi.weight, wi[[*range(30, 37), *range(67, 74)]], rtol=0, atol=0)
    att, ffn = get_adapter(model).attention(layer), get_adapter(model).ffn(layer)
    assert (att.num_heads, att.q.out_features, ffn.width, ffn.gate.out_features) == (2, 16, 7, 7)
    assert layer.attn.Wqkv.bias is None and layer.mlp.Wi.bias is None  # still bias-free


def test_modernbert_local_layers_attend_within_their_window():
    model = modernbert()
    assert model.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    inputs = make_inputs(batch=1, seq=12, pad_last=0)
    with torch.no_grad():
        windowed = model(**inputs).logits
        model.config.layer_types = ["full_attention"] * 3
        for layer in get_adapter(model).layers(model):
            layer.attention_type, layer.attn.sliding_window = "full_attention", None
        assert (model(**inputs).logits - windowed).abs().max() > 1e-3  # the window is real at 12 tokens


def test_modernbert_without_its_first_layer_saves_loads_and_exports(tiny_tokenizer, tmp_path):
    model = modernbert()
    inputs = make_inputs(batch=2, seq=12, pad_last=3)
    dense = logits(model, inputs)
    apply_plan(model, KeepPlan.removing(model, layers=[0], heads={1: [3]}, neurons={2: range(20)}))
    assert model.config.layer_types == ["sliding_attention", "sliding_attention"]
    assert isinstance(get_adapter(model).layers(model)[0].attn_norm, nn.LayerNorm)  # the old layer 1's norm
    expected = logits(model, inputs)
    assert (expected - dense).abs().max() > 1e-3
    folder = save_model(model, tiny_tokenizer, tmp_path / "m")
    loaded = load_slim(folder)
    assert isinstance(get_adapter(loaded).layers(loaded)[0].attn_norm, nn.LayerNorm)
    torch.testing.assert_close(logits(loaded, inputs), expected, rtol=0, atol=0)
    torch.testing.assert_close(plain_transformers_logits(folder, inputs), expected, rtol=1e-5, atol=1e-6)
    assert cost_of(Structure.from_model(loaded)).params == sum(p.numel() for p in loaded.parameters())
    report = export_onnx(model, tiny_tokenizer, tmp_path / "onnx", ExportConfig(int8=False), bench=None, progress=False)
    assert report["passed"] and report["verification"]["fp32"]["max_abs_diff"] <= 1e-4


def test_modernbert_refuses_skimming_and_mean_pooling_saying_why():
    with pytest.raises(ValueError, match="skim is not available for modernbert models: .*rotary"):
        build_skim_model(modernbert())
    model = modernbert()
    model.config.classifier_pooling = "mean"
    with pytest.raises(ValueError, match="classifier_pooling='mean'.*'cls'"):
        get_adapter(model).forward(model, **make_inputs())


def test_modernbert_with_mixed_biases_is_refused_by_the_cost_model():
    config = ADAPTER_FAMILIES["modernbert"].tiny_config()
    config.mlp_bias = True
    with pytest.raises(ValueError, match="attention_bias=False, mlp_bias=True"):
        ADAPTER_FAMILIES["modernbert"].dims(config)
