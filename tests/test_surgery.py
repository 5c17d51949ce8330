"""Surgery: removing masked units equals the masked model; removing nothing changes nothing."""

import pytest
import torch

from conftest import make_inputs
from slimformer.arch import get_adapter
from slimformer.structure import Structure
from slimformer.surgery import KeepPlan, apply_plan, masked


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def masks_for(plan: KeepPlan, heads: int = 4, ffn: int = 37):
    hm = [torch.tensor([float(h in keep) for h in range(heads)]) for keep in plan.heads]
    fm = [torch.tensor([float(j in keep) for j in range(ffn)]) for keep in plan.ffn]
    return hm, fm


PLANS = {
    "some heads and neurons": dict(heads={0: [1, 3], 2: [0]}, neurons={1: range(0, 37, 3)}),
    "whole attention sublayer": dict(attention=[1], neurons={0: [4]}),
    "whole ffn sublayer": dict(ffn=[2], heads={1: [2]}),
    "everything in a layer": dict(attention=[0], ffn=[0]),
}


@pytest.mark.parametrize("name", PLANS)
def test_removal_equals_masking(tiny_model, tiny_inputs, name):
    dense = logits(tiny_model, tiny_inputs)
    plan = KeepPlan.removing(tiny_model, **PLANS[name])
    hm, fm = masks_for(plan)
    with masked(tiny_model, hm, fm):
        expected = logits(tiny_model, tiny_inputs)
    apply_plan(tiny_model, plan)
    got = logits(tiny_model, tiny_inputs)
    torch.testing.assert_close(got, expected)
    assert (got - dense).abs().max() > 1e-6, "a real removal must change the outputs"
    shapes = Structure.from_model(tiny_model).layers
    assert [s.heads for s in shapes] == [len(h) for h in plan.heads]
    assert [s.ffn for s in shapes] == [len(f) for f in plan.ffn]


def test_layer_removal_equals_skipping_it(tiny_model, tiny_inputs):
    with masked(tiny_model, layer_mask=[True, False, True]):
        expected = logits(tiny_model, tiny_inputs)
    apply_plan(tiny_model, KeepPlan.removing(tiny_model, layers=[1]))
    torch.testing.assert_close(logits(tiny_model, tiny_inputs), expected)
    st = Structure.from_model(tiny_model)
    assert st.num_layers == 2 and [s.origin for s in st.layers] == [0, 2]
    assert tiny_model.config.slimformer["origin"] == [0, 2]


def test_removing_nothing_changes_nothing(tiny_model, tiny_inputs):
    before = logits(tiny_model, tiny_inputs)
    n = sum(p.numel() for p in tiny_model.parameters())
    apply_plan(tiny_model, KeepPlan.full(tiny_model))
    torch.testing.assert_close(logits(tiny_model, tiny_inputs), before, rtol=0, atol=0)
    assert sum(p.numel() for p in tiny_model.parameters()) == n


def test_pruning_twice_composes(tiny_model, tiny_inputs):
    apply_plan(tiny_model, KeepPlan.removing(tiny_model, heads={0: [0]}, neurons={0: [1, 2]}))
    plan = KeepPlan.removing(tiny_model, heads={0: [0]}, neurons={0: [0]})
    hm, fm = masks_for(plan, heads=3, ffn=35)
    hm = [hm[0], *[torch.ones(4)] * 2]
    fm = [fm[0], *[torch.ones(37)] * 2]
    with masked(tiny_model, hm, fm):
        expected = logits(tiny_model, tiny_inputs)
    apply_plan(tiny_model, plan)
    torch.testing.assert_close(logits(tiny_model, tiny_inputs), expected)
    assert [s.heads for s in Structure.from_model(tiny_model).layers] == [2, 4, 4]


def test_masked_hooks_are_removed(tiny_model, tiny_inputs):
    before = logits(tiny_model, tiny_inputs)
    with masked(tiny_model, [torch.zeros(4)] * 3, [torch.zeros(37)] * 3):
        assert not torch.allclose(logits(tiny_model, tiny_inputs), before)
    torch.testing.assert_close(logits(tiny_model, tiny_inputs), before)


def test_headless_layer_still_trains(tiny_model):
    apply_plan(tiny_model, KeepPlan.removing(tiny_model, attention=[0], ffn=[1]))
    tiny_model.train()
    out = tiny_model(**make_inputs(), labels=torch.tensor([0, 1]))
    out.loss.backward()
    adapter = get_adapter(tiny_model)
    out_proj = adapter.attention(adapter.layers(tiny_model)[0]).o
    assert out_proj.weight.numel() == 0
    if out_proj.bias is not None:  # a bias-free family (ModernBERT) leaves nothing to train there
        assert out_proj.bias.grad is not None
    assert adapter.ffn(adapter.layers(tiny_model)[0]).fc_out.weight.grad is not None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(heads={5: [0]}), "layer index 5 out of range"),
        (dict(heads={0: [4]}), "heads 0..3, got 4"),
        (dict(neurons={1: [99]}), "neurons 0..36, got 99"),
        (dict(layers=[-1]), "layer index -1"),
    ],
)
def test_bad_plans_are_rejected(tiny_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        KeepPlan.removing(tiny_model, **kwargs)


def test_plan_for_other_model_is_rejected(tiny_model):
    plan = KeepPlan(heads=((0,),), ffn=((0,),), layers=(True,))
    with pytest.raises(ValueError, match="the model has 3"):
        apply_plan(tiny_model, plan)
