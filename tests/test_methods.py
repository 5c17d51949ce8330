"""The method contract, checked for every method in the registry, and the one batch builder.

A newly registered method is covered by adding its example config to ``EXAMPLES`` (a test fails
until it has one): on a tiny model it must leave its input untouched, change the outputs, report
JSON, round-trip its config, and run as a recipe step.
"""

import json
import re

import pytest
import torch

from conftest import make_tiny_model
from slimformer.arch import get_adapter
from slimformer.batching import batches
from slimformer.compose import RecipeContext, RecipeError, compress, parse_recipe
from slimformer.data import load_task
from slimformer.methods import MethodData, Result, apply, available, get_method, method_for, run

# a config per method that really changes a tiny model, and runs in seconds
EXAMPLES = {
    "optin": {"budget": "macs=0.6"},
    "fisher": {"budget": "macs=0.6"},
    "magnitude": {"budget": "macs=0.6", "ffn_multiple": 1, "min_ffn": 0},
    "random": {"budget": "params=0.8"},
    "axformer": {"budget": "macs=0.7"},
    "slim": {
        "budget": "params=0.8",
        "epochs": 1,
        "max_steps": 2,
        "batch_size": 8,
        "group_size": 8,
        "init_examples": 16,
        "max_length": 16,
        "eval_budgets": [1.0],
    },
    "recover": {"max_steps": 2, "lr": 1e-3},
    "skim": {"max_steps": 2, "batch_size": 8, "max_length": 24, "keep": 0.5},
    "exits": {"max_steps": 2, "head_lr": 5e-3, "target": "depth", "value": 1.5},
    "int8": {},
    "bf16": {},
}
IDS = torch.tensor([[2, 10, 11, 12, 13, 14, 3], [2, 20, 21, 22, 3, 0, 0]])
MASK = (IDS != 0).long()


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    words = ["good", "bad", "fun", "dull", "movie", "plot", "great", "awful"]
    rows = ["text,label"] + [
        f"{words[i % 8]} {words[(i * 3) % 8]} {words[(i * 5) % 8]} {words[(i * 7) % 8]} {i},{'pos' if i % 2 else 'neg'}"
        for i in range(80)
    ]
    path = tmp_path_factory.mktemp("task") / "task.csv"
    path.write_text("\n".join(rows) + "\n")
    return load_task(str(path))


def _data(task, tokenizer) -> MethodData:
    return MethodData(tokenizer=tokenizer, task=task, max_length=32, calibration=16, progress=False)


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK).logits.float()


def test_every_registered_method_has_an_example():
    assert set(available()) == set(EXAMPLES), "add an example config for each new method to EXAMPLES"
    assert set(available("dynamic")) == {"skim", "exits"}
    assert set(available("precision")) == {"int8", "bf16"}


@pytest.mark.parametrize("name", available())
def test_method_contract(name, task, tiny_tokenizer):
    method = get_method(name)
    config = method.config_from(EXAMPLES[name])
    assert method_for(config) is method
    # the config round-trips through its dict, both through the recipe parser and its own class
    assert method.config_from(config.to_dict()) == config
    assert type(config).from_dict(config.to_dict()) == config
    json.dumps(config.to_dict())

    model = make_tiny_model("bert", num_labels=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dense = _logits(model)
    result = run(model, config, _data(task, tiny_tokenizer))
    assert isinstance(result, Result)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before), "input changed"
    assert result.model is not model
    assert not torch.allclose(_logits(result.model), dense, rtol=0, atol=1e-6), f"{name} did not change the outputs"
    assert isinstance(result.report, dict)
    json.dumps(result.report)  # JSON-ready, no default= needed


@pytest.mark.parametrize("name", available())
def test_every_method_runs_on_deberta_or_says_why(name, task, tiny_tokenizer):
    model = make_tiny_model("deberta-v2", num_labels=2)
    config = get_method(name).config_from(EXAMPLES[name])
    refused = get_adapter(model).refused
    if name in refused:
        with pytest.raises(
            ValueError, match=f"{name} is not available for deberta-v2 models: {re.escape(refused[name])}"
        ):
            run(model, config, _data(task, tiny_tokenizer))
        return
    result = run(model, config, _data(task, tiny_tokenizer))
    assert not torch.allclose(_logits(result.model), _logits(model), rtol=0, atol=1e-6), f"{name} changed nothing"
    json.dumps(result.report)


@pytest.mark.parametrize("name", available())
def test_method_runs_as_a_recipe_step(name, task, tiny_tokenizer):
    steps = parse_recipe([{"step": name, **EXAMPLES[name]}])
    assert steps[0].kind == name
    model = make_tiny_model("bert", num_labels=2)
    out, report = compress(model, steps, RecipeContext(tokenizer=tiny_tokenizer, task=task, max_length=32,
                                                       calibration=16, progress=False))  # fmt: skip
    assert [e["step"] for e in report["steps"]] == [name]
    assert isinstance(report["steps"][0]["report"], dict)
    json.dumps(report)
    assert not torch.allclose(_logits(out), _logits(model), rtol=0, atol=1e-6)


def test_apply_checks_the_config_type(task, tiny_tokenizer):
    model = make_tiny_model("bert", num_labels=2)
    with pytest.raises(ValueError, match="method 'optin' takes a OptinConfig, got Int8Config"):
        apply("optin", model, get_method("int8").config_from({}), _data(task, tiny_tokenizer))
    with pytest.raises(ValueError, match="unknown method 'optim'; available: optin"):
        get_method("optim")
    with pytest.raises(ValueError, match="no method takes a dict"):
        method_for({"budget": "macs=0.5"})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"step": "slim"}, "field 'budget' is required"),
        ({"step": "slim", "budget": "latency=5ms"}, "supports memory, params, macs budgets"),
        ({"step": "skim", "kep": 0.5}, "unknown field.*kep.*allowed:.*keep"),
        ({"step": "skim", "keep": 0.5, "macs": 0.5}, "exactly one target"),
        ({"step": "exits", "rule": "sometimes"}, "rule='sometimes'"),
        ({"step": "optin", "method": "fisher", "budget": "macs=0.5"}, "does not match the step 'optin'"),
    ],
)
def test_step_config_errors_name_the_field(fields, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe([fields])


def test_dynamic_steps_only_last():
    parse_recipe([{"step": "optin", "budget": "macs=0.5"}, {"step": "skim"}])
    for first, second in (("skim", "int8"), ("exits", "skim"), ("int8", "exits")):
        with pytest.raises(RecipeError, match=f"step 1 \\({first}\\) must be the last step: step 2 \\({second}\\)"):
            parse_recipe([{"step": first}, {"step": second}])
    with pytest.raises(RecipeError, match="dynamic"):
        parse_recipe([{"step": "exits"}, {"step": "recover"}])


# ---- the one batch builder ---------------------------------------------------------------------------------


def test_batches_of_a_split_a_list_and_texts(task, tiny_tokenizer):
    train = task.split("train")
    every = batches(task, tiny_tokenizer, split="train", batch_size=8)
    assert sum(len(b["labels"]) for b in every) == len(train)
    assert sum(len(b["labels"]) for b in batches(train, tiny_tokenizer, size=10)) == 10
    assert sum(len(b["labels"]) for b in batches(train, tiny_tokenizer, limit=5)) == 5
    ordered = batches(train, tiny_tokenizer, batch_size=4, grouped=False)
    first = tiny_tokenizer([e.text for e in train[:4]], padding="longest", return_tensors="pt")
    torch.testing.assert_close(ordered[0]["input_ids"], first["input_ids"])
    assert ordered[0]["labels"].tolist() == [e.label for e in train[:4]]
    texts = batches(["good movie", "bad plot twist"], tiny_tokenizer)
    assert "labels" not in texts[0] and texts[0]["input_ids"].shape[0] == 2


def test_batches_errors(task, tiny_tokenizer):
    with pytest.raises(ValueError, match="split='dev': task .* has the splits train"):
        batches(task, tiny_tokenizer, split="dev")
    with pytest.raises(ValueError, match="not both"):
        batches(task, tiny_tokenizer, size=4, limit=4)
    with pytest.raises(ValueError, match="size=0: must be None or an integer >= 1"):
        batches(task, tiny_tokenizer, size=0)
    with pytest.raises(ValueError, match="no examples in the given examples"):
        batches([], tiny_tokenizer)


def test_old_batch_builders_are_aliases(task, tiny_tokenizer):
    from slimformer.axformer import validation_batches
    from slimformer.exits import training_batches
    from slimformer.skim import tokenized_batches
    from slimformer.static import calibration_batches

    train = task.split("train")
    pairs = [
        (calibration_batches(train, tiny_tokenizer, size=12, seed=3), batches(train, tiny_tokenizer, size=12, seed=3)),
        (validation_batches(train, tiny_tokenizer, limit=9), batches(train, tiny_tokenizer, limit=9)),
        (training_batches(train, tiny_tokenizer, seed=1), batches(train, tiny_tokenizer, seed=1)),
        (tokenized_batches(train, tiny_tokenizer), batches(train, tiny_tokenizer, grouped=False)),
    ]
    for old, new in pairs:
        assert len(old) == len(new)
        for a, b in zip(old, new, strict=True):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_skim_calibrate_takes_a_config_and_returns_a_copy(task, tiny_tokenizer):
    from slimformer.skim import build_skim_model
    from slimformer.skim.calibrate import ShiftConfig, calibrate

    skimmer = build_skim_model(make_tiny_model("bert", num_labels=2))
    val = batches(task, tiny_tokenizer, split="validation")
    result = calibrate(skimmer, ShiftConfig(keep=0.5, tolerance=0.05), val)
    assert skimmer.skim_shift == 0.0 and result.model is not skimmer
    assert result.model.skim_shift == result.report["shift"] != 0.0
    assert result.report["config"]["keep"] == 0.5 and abs(result.report["achieved"] - 0.5) <= 0.05
    json.dumps(result.report)
    with pytest.raises(ValueError, match="must be a ShiftConfig"):
        calibrate(skimmer, {"keep": 0.5}, val)


def test_a_new_pruner_becomes_a_method_and_a_step(monkeypatch, task, tiny_tokenizer):
    from dataclasses import dataclass
    from typing import ClassVar

    from slimformer import compose, methods
    from slimformer.static import METHODS as PRUNERS
    from slimformer.static import MagnitudeConfig, register

    @dataclass(frozen=True, kw_only=True)
    class Magnitude2Config(MagnitudeConfig):
        method: ClassVar[str] = "magnitude2"

    for registry in (PRUNERS, methods._METHODS, compose.STEPS):
        monkeypatch.setitem(registry, "magnitude2", None)  # removed again after the test
    register(Magnitude2Config, "slimformer.static.magnitude:score_magnitude")
    assert get_method("magnitude2").config is Magnitude2Config and "magnitude2" in available("static")
    (step,) = parse_recipe([{"step": "magnitude2", "budget": "params=0.8"}])
    out, _ = compress(make_tiny_model("bert", num_labels=2), [step], _data(task, tiny_tokenizer))
    assert isinstance(step.config, Magnitude2Config) and out is not None
