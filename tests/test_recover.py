"""Recovery fine-tuning: distils a pruned copy towards its teacher, keeps its shape, refuses bad input."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import make_inputs, make_tiny_model
from slimformer.axformer import hard_attention_of, set_hard_attention
from slimformer.exits.train import teacher_outputs
from slimformer.recover import RecoverConfig, recover
from slimformer.structure import Structure
from slimformer.surgery import KeepPlan, apply_plan


def _pruned(teacher):
    """Heads, neurons, a whole attention sublayer and the middle layer removed."""
    full = tuple(range(37))
    plan = KeepPlan(
        heads=((0, 2), (0, 1, 2, 3), ()),
        ffn=(tuple(range(0, 37, 3)), full, full),
        layers=(True, False, True),
    )
    return apply_plan(copy.deepcopy(teacher), plan)


def _sharp(family: str, **kwargs):
    """A tiny teacher whose logits differ clearly between inputs (random heads are nearly uniform)."""
    model = make_tiny_model(family, **kwargs)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear) and m.out_features == model.config.num_labels:
                m.weight.mul_(50.0)
    return model


def _batches(teacher, n: int = 6) -> list[dict]:
    """Random padded inputs labelled by the teacher (so labels and distillation agree)."""
    out = []
    for i in range(n):
        x = make_inputs(8, 10, seed=i)
        with torch.no_grad():
            x["labels"] = teacher(**x).logits.argmax(-1)
        out.append(x)
    return out


def _kl(student, teacher, batches) -> float:
    with torch.no_grad():
        return sum(
            F.kl_div(
                F.log_softmax(student(**{k: v for k, v in b.items() if k != "labels"}).logits, -1),
                F.softmax(teacher(**{k: v for k, v in b.items() if k != "labels"}).logits, -1),
                reduction="batchmean",
            ).item()
            for b in batches
        )


def test_recovery_moves_a_pruned_copy_towards_its_teacher(family):
    teacher = _sharp(family)
    student = _pruned(_sharp(family, seed=1))  # far from the teacher to start with
    before_state = {k: v.clone() for k, v in student.state_dict().items()}
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    data = _batches(teacher)
    kl_before = _kl(student, teacher, data)
    config = RecoverConfig(epochs=8, lr=3e-3, warmup_ratio=0.0, alpha=1.0)  # distillation only
    result = recover(student, teacher, data, config, progress=False)
    kl_after = _kl(result.model, teacher, data)
    assert kl_after < 0.2 * kl_before, (kl_before, kl_after)
    # a copy was trained: the inputs are untouched, the shape is the same, the output is in eval mode
    for k, v in student.state_dict().items():
        torch.testing.assert_close(v, before_state[k], rtol=0, atol=0)
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, teacher_state[k], rtol=0, atol=0)
    assert Structure.from_model(result.model).to_dict() == Structure.from_model(student).to_dict()
    assert not result.model.training
    rep = result.report
    assert rep["steps"] == 8 * len(data) and len(rep["epochs"]) == 8
    assert rep["hidden_pairs"] == 2  # the two layers left, each matched to the layer it came from
    assert rep["epochs"][-1]["hidden"] < 0.5 * rep["epochs"][0]["hidden"]


def test_layers_are_matched_by_origin_not_position(monkeypatch):
    from slimformer import recover as mod

    teacher = make_tiny_model("bert")
    full = KeepPlan(heads=((0, 1, 2, 3),) * 3, ffn=(tuple(range(37)),) * 3, layers=(True, False, True))
    student = apply_plan(copy.deepcopy(teacher), full)  # teacher layers 0 and 2, nothing else removed
    seen = []
    real = mod.exit_loss

    def spy(logits, hidden, t_logits, t_hidden, *args, **kwargs):
        seen.append(([s.detach() for s in hidden], list(t_hidden)))
        return real(logits, hidden, t_logits, t_hidden, *args, **kwargs)

    monkeypatch.setattr(mod, "exit_loss", spy)
    data = _batches(teacher, 1)
    recover(student, teacher, data, RecoverConfig(max_steps=1), progress=False)
    x = {k: v for k, v in data[0].items() if k != "labels"}
    with torch.no_grad():
        t_states = teacher_outputs(teacher, x)[1]
    ((s_states, targets),) = seen
    assert len(targets) == 2
    # student layer 0 is teacher layer 0; student layer 1 (origin 2) is held to teacher layer 2, not 1
    torch.testing.assert_close(targets[0], t_states[0])
    torch.testing.assert_close(targets[1], t_states[2])
    assert not torch.allclose(t_states[1], t_states[2])


def test_top_k_settings_survive_recovery():
    teacher = make_tiny_model("bert")
    student = set_hard_attention(_pruned(teacher), {0: 0.5})
    result = recover(student, teacher, _batches(teacher, 2), RecoverConfig(max_steps=2), progress=False)
    assert hard_attention_of(result.model) == {0: 0.5}


def test_recovery_refuses_bad_input():
    teacher = make_tiny_model("bert")
    student = _pruned(teacher)
    data = _batches(teacher, 1)
    with pytest.raises(ValueError, match="training batches"):
        recover(student, teacher, [], progress=False)
    with pytest.raises(ValueError, match="labelled"):
        recover(student, teacher, [{k: v for k, v in data[0].items() if k != "labels"}], progress=False)
    with pytest.raises(ValueError, match="classes"):
        recover(student, make_tiny_model("bert", num_labels=2), data, progress=False)
    # the teacher lacks the student's original layer 2: a hidden target cannot be found
    shallow = apply_plan(
        copy.deepcopy(teacher),
        KeepPlan(heads=((0, 1, 2, 3),) * 3, ffn=(tuple(range(37)),) * 3, layers=(True, True, False)),
    )
    with pytest.raises(ValueError, match="original layer 2"):
        recover(student, shallow, data, progress=False)
    recover(student, shallow, data, RecoverConfig(hidden_weight=0.0, max_steps=1), progress=False)  # logits only


@pytest.mark.parametrize(
    ("field", "value"),
    [("epochs", 0), ("lr", 0.0), ("alpha", 1.5), ("temperature", 0.0), ("hidden_weight", -1.0), ("warmup_ratio", 1.0)],
)
def test_bad_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        RecoverConfig(**{field: value})
    with pytest.raises(ValueError, match="unknown field"):
        RecoverConfig.from_dict({"epoch": 1})
