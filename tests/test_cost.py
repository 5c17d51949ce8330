"""The cost model against the models' real parameter counts and torch's FLOP counter."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from conftest import make_inputs
from slimformer.cost import cost_of, layer_macs, marginal_costs
from slimformer.structure import LayerShape, Structure
from slimformer.surgery import KeepPlan, apply_plan


def counted_macs(model, seq_len: int) -> float:
    """MACs of one real forward, counted by torch (eager attention so the matmuls are visible)."""
    model.config._attn_implementation = "eager"
    inputs = make_inputs(batch=1, seq=seq_len, pad_last=0)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(**inputs)
    return counter.get_total_flops() / 2


def uneven(model):
    plan = KeepPlan.removing(model, heads={0: [0, 2, 3], 1: [1]}, neurons={1: range(20), 2: [0, 5]}, ffn=[0])
    return apply_plan(model, plan)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_params_exact_dense_and_pruned(tiny_model):
    assert cost_of(Structure.from_model(tiny_model)).params == n_params(tiny_model)
    uneven(tiny_model)
    c = cost_of(Structure.from_model(tiny_model))
    assert c.params == n_params(tiny_model)
    assert c.params == c.encoder_params + c.embedding_params + c.head_params


@pytest.mark.parametrize("seq_len", [8, 40])
def test_macs_match_flop_counter(tiny_model, seq_len):
    dense = cost_of(Structure.from_model(tiny_model), seq_len).macs
    assert dense == pytest.approx(counted_macs(tiny_model, seq_len), rel=0.02)
    uneven(tiny_model)
    pruned = cost_of(Structure.from_model(tiny_model), seq_len).macs
    assert pruned == pytest.approx(counted_macs(tiny_model, seq_len), rel=0.02)
    assert pruned < dense


def test_removed_layer_costs_nothing(tiny_model):
    before = cost_of(Structure.from_model(tiny_model), 16)
    apply_plan(tiny_model, KeepPlan.removing(tiny_model, layers=[1]))
    after = cost_of(Structure.from_model(tiny_model), 16)
    assert before.macs - after.macs == before.layers[1]["macs"]
    assert before.params - after.params == before.layers[1]["params"]
    assert after.params == n_params(tiny_model)


def test_marginal_costs_are_differences(tiny_model):
    st = Structure.from_model(tiny_model)
    dims, t = st.dims, 24
    m = marginal_costs(st, t)
    full = LayerShape(4, 37, 0)
    one_head_less = LayerShape(3, 37, 0)
    one_neuron_less = LayerShape(4, 36, 0)
    assert m["head"]["macs"] == layer_macs(dims, full, t)["total"] - layer_macs(dims, one_head_less, t)["total"]
    assert m["neuron"]["macs"] == layer_macs(dims, full, t)["total"] - layer_macs(dims, one_neuron_less, t)["total"]
    assert m["token"][0] == layer_macs(dims, full, t + 1)["total"] - layer_macs(dims, full, t)["total"]
    assert sum(x["macs"] for x in m["layer"]) + dims.hidden * (dims.hidden + dims.num_labels) == cost_of(st, t).macs
    # params of one head: q, k, v rows + biases and the output projection's columns
    p = sum(x.numel() for x in tiny_model.parameters())
    apply_plan(tiny_model, KeepPlan.removing(tiny_model, heads={0: [0]}, neurons={1: [0]}))
    assert p - n_params(tiny_model) == m["head"]["params"] + m["neuron"]["params"]


def test_bytes_and_validation(tiny_model):
    c = cost_of(Structure.from_model(tiny_model))
    assert c.bytes_fp32 == 4 * c.params and c.bytes_fp16 == 2 * c.params
    assert c.params < c.bytes_int8 < c.bytes_fp32
    with pytest.raises(ValueError, match="seq_len"):
        cost_of(Structure.from_model(tiny_model), 0)
