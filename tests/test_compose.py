"""Recipes: every mistake caught before any work, relative budgets of the input, a real chained run."""

import json

import pytest
import torch

from conftest import make_tiny_model
from slimformer import methods
from slimformer.compose import (
    STEPS,
    RecipeContext,
    RecipeError,
    available_steps,
    compress,
    load_recipe,
    parse_recipe,
    pruners,
    save_result,
)
from slimformer.cost import cost_of
from slimformer.data import load_task
from slimformer.structure import Structure


@pytest.fixture
def csv_task(tmp_path):
    rows = ["text,label"]
    words = ["good", "bad", "fun", "dull", "movie", "plot", "great", "awful"]
    for i in range(80):
        rows.append(f"{words[i % 8]} {words[(i * 3) % 8]} {words[(i * 5) % 8]} {i},{'pos' if i % 2 else 'neg'}")
    path = tmp_path / "task.csv"
    path.write_text("\n".join(rows) + "\n")
    return load_task(str(path))


def test_parse_recipe_accepts_list_and_file_forms(tmp_path):
    steps = [{"step": "prune", "method": "fisher", "budget": "macs=0.5"}, {"step": "prune", "budget": "macs=0.3"}]
    parsed = parse_recipe(steps)
    assert [s.kind for s in parsed] == ["prune", "prune"]
    assert parsed[0].config.method == "fisher" and parsed[1].config.method == "optin"  # optin is the default
    (tmp_path / "r.json").write_text(json.dumps({"steps": steps}))
    (tmp_path / "r.yaml").write_text(
        "steps:\n  - {step: prune, method: fisher, budget: macs=0.5}\n  - step: prune\n    budget: macs=0.3\n"
    )
    for name in ("r.json", "r.yaml"):
        assert [s.to_dict() for s in load_recipe(tmp_path / name)] == [s.to_dict() for s in parsed]


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ([], "non-empty list"),
        ({"stepz": []}, "unknown top-level key"),
        ([{"method": "optin"}], "step 1: need a mapping with a 'step' key"),
        ([{"step": "prune", "budget": "macs=0.5"}, {"step": "distill"}], "step 2: unknown step 'distill'"),
        ([{"step": "prune", "method": "optim", "budget": "macs=0.5"}], "step 1 \\(prune\\): unknown pruning method"),
        ([{"step": "prune", "budget": "macs=0.5", "repiar": False}], "step 1 \\(prune\\): .*unknown field.*repiar"),
        ([{"step": "prune", "budget": "macs=1.5"}], "step 1 \\(prune\\)"),
        ([{"step": "prune"}], "step 1 \\(prune\\): field 'budget' is required"),
        (
            [{"step": "prune", "budget": "macs=0.5"}, {"step": "prune", "budget": "macs=0.6"}],
            "step 2 \\(prune\\): budget .* is not tighter than step 1",
        ),
    ],
)
def test_bad_recipes_fail_before_any_work(recipe, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe(recipe)


def minimal_step(name: str) -> dict:
    """The smallest recipe step naming ``name``: no fields, or a budget where the step requires one."""
    try:
        parse_recipe([{"step": name}])
    except RecipeError as exc:
        if "'budget' is required" not in str(exc):
            raise
        return {"step": name, "budget": "params=0.5"}
    return {"step": name}


@pytest.mark.parametrize("name", methods.available())
def test_every_registered_method_is_a_recipe_step(name):
    (step,) = parse_recipe([minimal_step(name)])
    method = methods.get_method(name)
    assert step.kind == name and isinstance(step.config, method.config)
    assert methods.method_for(step.config) is method  # the step runs the method it names
    assert available_steps()[name] is method and method.help


def test_the_prune_step_names_the_registered_pruners():
    from slimformer.static.prune import METHODS

    assert pruners() == list(METHODS) and "optin" in pruners()
    assert f"(method: {', '.join(METHODS)})" in available_steps()["prune"].help
    for name in pruners():
        (step,) = parse_recipe([{"step": "prune", "method": name, "budget": "macs=0.5"}])
        assert step.config.method == name and type(step.config) is methods.get_method(name).config


def test_an_unregistered_step_is_named_with_every_allowed_one():
    with pytest.raises(RecipeError, match="step 1: unknown step 'prun'; available: ") as caught:
        parse_recipe([{"step": "prun", "budget": "macs=0.5"}])
    allowed = str(caught.value).split("available: ")[1].split(", ")
    assert allowed == list(available_steps()) and set(methods.available()) < set(allowed)


def test_a_method_registered_later_is_a_step_and_leaves_with_it(monkeypatch):
    from slimformer.quantize import Int8Config

    extra = methods.Method("int8_copy", Int8Config, lambda m, c, d: methods.Result(m, {}), kind="precision")
    monkeypatch.setitem(methods._METHODS, "int8_copy", extra)
    assert [s.kind for s in parse_recipe([{"step": "int8_copy"}])] == ["int8_copy"]
    monkeypatch.undo()
    with pytest.raises(RecipeError, match="unknown step 'int8_copy'"):
        parse_recipe([{"step": "int8_copy"}])


def test_int8_must_be_last():
    parse_recipe([{"step": "prune", "budget": "macs=0.5"}, {"step": "int8"}])
    assert STEPS["int8"].terminal
    with pytest.raises(RecipeError, match="step 1 \\(int8\\) must be the last step: step 2 \\(prune\\)"):
        parse_recipe([{"step": "int8"}, {"step": "prune", "budget": "macs=0.5"}])
    with pytest.raises(RecipeError, match="step 1 \\(int8\\): .*unknown field.*bits"):
        parse_recipe([{"step": "int8", "bits": 4}])


def test_load_recipe_errors(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    (tmp_path / "r.txt").write_text("steps: []")
    with pytest.raises(RecipeError, match="expected a .yaml"):
        load_recipe(tmp_path / "r.txt")
    (tmp_path / "bad.yaml").write_text("steps: [ {step: prune\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(tmp_path / "bad.yaml")


def test_chained_budgets_are_fractions_of_the_input(csv_task, tiny_tokenizer):
    model = make_tiny_model("bert", num_labels=2)
    dense = cost_of(Structure.from_model(model), 128)
    steps = parse_recipe(
        [
            {"step": "prune", "method": "magnitude", "budget": "macs=0.6", "ffn_multiple": 1, "min_ffn": 0},
            {"step": "prune", "method": "magnitude", "budget": "macs=0.4", "ffn_multiple": 1, "min_ffn": 0},
        ]
    )
    context = RecipeContext(tokenizer=tiny_tokenizer, task=csv_task, calibration=32, progress=False)
    out, report = compress(model, steps, context)
    final = cost_of(Structure.from_model(out), 128)
    assert 0.3 * dense.macs < final.macs <= 0.4 * dense.macs  # of the input: not 0.6 * 0.4 = 0.24
    assert [(e["index"], e["step"]) for e in report["steps"]] == [(1, "prune"), (2, "prune")]
    assert report["steps"][0]["macs"] > report["steps"][1]["macs"]
    # the input model is untouched, the output really changed
    assert cost_of(Structure.from_model(model), 128).macs == dense.macs
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, out(input_ids=ids).logits)


def test_prune_then_int8_saves_and_loads(csv_task, tiny_tokenizer, tmp_path):
    from slimformer.models import load_model
    from slimformer.quantize import is_quantized

    model = make_tiny_model("bert", num_labels=2)
    steps = parse_recipe([{"step": "prune", "method": "magnitude", "budget": "params=0.8"}, {"step": "int8"}])
    context = RecipeContext(tokenizer=tiny_tokenizer, task=csv_task, calibration=32, progress=False)
    out, report = compress(model, steps, context)
    assert is_quantized(out) and not is_quantized(model)
    assert [e["step"] for e in report["steps"]] == ["prune", "int8"]
    folder = save_result(out, tiny_tokenizer, tmp_path / "m", extra=report)
    loaded, _ = load_model(str(folder))
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, out(input_ids=ids).logits, rtol=0, atol=0)
    with pytest.raises(FileExistsError):
        save_result(out, tiny_tokenizer, tmp_path / "m")


def test_axformer_step_parses_and_runs_after_prune(csv_task, tiny_tokenizer):
    steps = parse_recipe(
        [{"step": "prune", "method": "magnitude", "budget": "macs=0.8"}, {"step": "axformer", "budget": "macs=0.6"}]
    )
    assert steps[1].config.budget.value == 0.6
    with pytest.raises(RecipeError, match="step 1 \\(axformer\\)"):
        parse_recipe([{"step": "axformer", "loss_tolerance": -1}])
    model = make_tiny_model("bert", num_labels=2)
    dense = cost_of(Structure.from_model(model), 128).macs
    context = RecipeContext(tokenizer=tiny_tokenizer, task=csv_task, calibration=16, progress=False)
    out, report = compress(model, steps, context)
    assert report["steps"][1]["macs"] <= 0.6 * dense * 1.05  # may overshoot the budget by one unit
    assert "validation" in context.cache


def test_recover_step_distils_from_the_recipe_input(csv_task, tiny_tokenizer, monkeypatch):
    from slimformer import recover as recover_module

    seen = {}
    real = recover_module.recover

    def spy(model, teacher, train_data, config, **kwargs):
        seen.update(teacher=teacher, examples=sum(len(b["labels"]) for b in train_data), config=config)
        return real(model, teacher, train_data, config, **kwargs)

    monkeypatch.setattr(recover_module, "recover", spy)
    steps = parse_recipe(
        [{"step": "prune", "method": "magnitude", "budget": "macs=0.7"}, {"step": "recover", "max_steps": 2}]
    )
    with pytest.raises(RecipeError, match="step 1 \\(recover\\)"):
        parse_recipe([{"step": "recover", "epoch": 1}])
    model = make_tiny_model("bert", num_labels=2)
    context = RecipeContext(tokenizer=tiny_tokenizer, task=csv_task, calibration=16, progress=False)
    out, report = compress(model, steps, context)
    assert seen["teacher"] is model  # the recipe's input, not the pruned model it follows
    assert seen["examples"] == len(csv_task.split("train")) and seen["config"].max_steps == 2
    assert report["steps"][1]["macs"] == report["steps"][0]["macs"]  # shapes unchanged
    pruned_only, _ = compress(model, steps[:1], context)
    trained, pruned = out.state_dict(), pruned_only.state_dict()
    assert any(not torch.equal(trained[k], pruned[k]) for k in pruned)


def test_prune_then_bf16_saves_half_size_and_loads_bf16(csv_task, tiny_tokenizer, tmp_path):
    from slimformer.models import load_model
    from slimformer.quantize import is_bf16

    with pytest.raises(RecipeError, match="step 1 \\(bf16\\) must be the last step"):
        parse_recipe([{"step": "bf16"}, {"step": "int8"}])
    assert STEPS["bf16"].terminal
    with pytest.raises(RecipeError, match="step 1 \\(bf16\\): .*no fields"):
        parse_recipe([{"step": "bf16", "keep": "classifier"}])
    model = make_tiny_model("roberta", num_labels=2)
    steps = parse_recipe([{"step": "prune", "method": "magnitude", "budget": "params=0.8"}, {"step": "bf16"}])
    context = RecipeContext(tokenizer=tiny_tokenizer, task=csv_task, calibration=32, progress=False)
    out, report = compress(model, steps, context)
    assert is_bf16(out) and not is_bf16(model)
    assert [e["step"] for e in report["steps"]] == ["prune", "bf16"]
    assert report["steps"][1]["params"] == report["steps"][0]["params"]  # shapes unchanged by the cast
    folder = save_result(out, tiny_tokenizer, tmp_path / "m", extra=report)
    loaded, _ = load_model(str(folder))
    assert is_bf16(loaded)
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, out(input_ids=ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("last", "fields"),
    [
        ("skim", {"max_steps": 2, "batch_size": 8, "keep": 0.5}),
        ("exits", {"max_steps": 2, "target": "depth", "value": 2}),
    ],
)
def test_prune_then_dynamic_step_saves_and_loads(csv_task, tiny_tokenizer, tmp_path, last, fields):
    from slimformer.models import load_model

    steps = parse_recipe([{"step": "magnitude", "budget": "params=0.8"}, {"step": last, **fields}])
    assert [s.kind for s in steps] == ["magnitude", last] and STEPS[last].kind == "dynamic"
    model = make_tiny_model("bert", num_labels=2)
    context = RecipeContext(tokenizer=tiny_tokenizer, task=csv_task, calibration=16, progress=False)
    out, report = compress(model, steps, context)
    assert [e["step"] for e in report["steps"]] == ["magnitude", last]
    json.dumps(report)
    folder = save_result(out, tiny_tokenizer, tmp_path / "m", extra=report)
    loaded, _ = load_model(str(folder))
    assert type(loaded).__name__ == type(out).__name__
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, out(input_ids=ids).logits)


def test_slim_step_extracts_the_recipe_budget(csv_task, tiny_tokenizer):
    fast = {"max_steps": 2, "batch_size": 8, "group_size": 8, "init_examples": 16, "max_length": 16}
    steps = parse_recipe([{"step": "slim", "budget": "params=0.7", "eval_budgets": [1.0], **fast}])
    model = make_tiny_model("bert", num_labels=2)
    dense = cost_of(Structure.from_model(model))
    context = RecipeContext(tokenizer=tiny_tokenizer, task=csv_task, calibration=16, progress=False)
    out, report = compress(model, steps, context)
    assert cost_of(Structure.from_model(out)).params <= 0.7 * dense.params
    assert report["steps"][0]["report"]["extract"]["achieved"] <= 0.7 * dense.params
    assert cost_of(Structure.from_model(model)).params == dense.params  # the input is untouched
