"""Frontier sweep: Pareto flags by hand, a real sweep on a tiny model, config validation, plots."""

import pytest
import torch

from conftest import make_tiny_model
from slimformer.data import load_task
from slimformer.pareto import ParetoConfig, markdown, pareto_front, plot_frontier, sweep


def test_pareto_front_by_hand():
    pts = [
        {"lat": 10, "accuracy": 0.90},  # dense: best accuracy -> on the front
        {"lat": 5, "accuracy": 0.89},  # faster, slightly worse -> on the front
        {"lat": 6, "accuracy": 0.85},  # slower and worse than the one above -> dominated
        {"lat": 2, "accuracy": 0.70},  # fastest -> on the front
        {"lat": 5, "accuracy": 0.89},  # a tie with point 1: neither strictly better -> both stay
    ]
    assert pareto_front(pts, "lat", "accuracy") == [True, True, False, True, True]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"methods": ()}, r"methods=\(\): must be a non-empty tuple"),
        ({"methods": ("optim",)}, "unknown method 'optim'"),
        ({"budgets": (0.5, 1.2)}, "fraction in \\(0, 1\\]"),
        ({"kind": "latency"}, "kind='latency'"),
        ({"repeats": 0}, "repeats=0"),
        ({"batch_sizes": (1, 0)}, "batch_sizes"),
    ],
)
def test_config_errors_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ParetoConfig(**kwargs)


def test_config_accepts_comma_text():
    c = ParetoConfig(methods="optin,fisher+int8", budgets="0.5,0.3")
    assert c.methods == ("optin", "fisher+int8") and c.budgets == (0.5, 0.3)


def test_sweep_tiny_model(tmp_path, tiny_tokenizer):
    rows = ["text,label"] + [f"good fun movie {i},pos" if i % 2 else f"bad dull plot {i},neg" for i in range(60)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    task = load_task(str(tmp_path / "t.csv"))
    model = make_tiny_model("bert", num_labels=2)
    config = ParetoConfig(methods=("magnitude", "random"), budgets=(0.7, 0.4), seq_len=16, repeats=2, calibration=16)
    assert config.batch_sizes == (1,)
    seen = []
    out = sweep(model, tiny_tokenizer, task, config, progress=False, on_point=seen.append)
    points = out["points"]
    assert [p["method"] for p in points] == ["dense", "magnitude", "magnitude", "random", "random"]
    assert len(seen) == len(points)
    dense = points[0]
    for p in points[1:]:
        assert p["macs"] < dense["macs"] and p["bytes"] < dense["bytes"] and p["latency_ms"] > 0
    for axis, x in (("front_latency", "latency_ms"), ("front_memory", "bytes")):
        assert [p[axis] for p in points] == pareto_front(points, x, "accuracy")
        assert any(p[axis] for p in points)
    png = plot_frontier(points, "latency_ms", tmp_path / "f.png", xlabel="ms")
    assert png.stat().st_size > 1000
    table = markdown(points, batch_sizes=(1,))
    assert table.count("\n") == len(points) + 1 and "magnitude" in table


def test_sweep_precision_suffixes(tmp_path, tiny_tokenizer):
    rows = ["text,label"] + [f"good fun movie {i},pos" if i % 2 else f"bad dull plot {i},neg" for i in range(40)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    task = load_task(str(tmp_path / "t.csv"))
    model = make_tiny_model("bert", num_labels=2)
    config = ParetoConfig(
        methods=("magnitude", "magnitude+bf16", "magnitude+int8"), budgets=(0.6,), seq_len=16, repeats=1, calibration=16
    )
    points = sweep(model, tiny_tokenizer, task, config, progress=False)["points"]
    by = {p["key"]: p for p in points}
    assert set(by) == {
        "dense", "magnitude@0.6", "magnitude+bf16@0.6", "magnitude+int8@0.6", "dense+bf16@1.0", "dense+int8@1.0"
    }  # fmt: skip
    assert by["magnitude+bf16@0.6"]["macs"] == by["magnitude@0.6"]["macs"]
    assert 0.45 < by["magnitude+bf16@0.6"]["bytes"] / by["magnitude@0.6"]["bytes"] < 0.65  # pickle overhead
    assert 0.45 < by["dense+bf16@1.0"]["bytes"] / by["dense"]["bytes"] < 0.65
    assert all(p.dtype is torch.float32 for p in model.parameters())  # the versions are copies
    with pytest.raises(ValueError, match="each also \\+int8, \\+bf16"):
        ParetoConfig(methods=("magnitude+fp8",))


def test_sweep_methods_come_from_the_registry(tmp_path, tiny_tokenizer):
    from slimformer.methods import available
    from slimformer.pareto import available_methods, precisions

    names = available_methods()
    assert {"optin", "fisher", "magnitude", "random", "axformer", "slim"} <= set(names)
    assert not {"skim", "exits", "recover", "int8", "bf16"} & set(names)  # dynamic, budget-less, precision
    assert precisions() == available("precision")
    rows = ["text,label"] + [f"good fun movie {i},pos" if i % 2 else f"bad dull plot {i},neg" for i in range(40)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    task = load_task(str(tmp_path / "t.csv"))
    model = make_tiny_model("bert", num_labels=2)
    config = ParetoConfig(methods=("axformer", "axformer+int8"), budgets=(0.7,), seq_len=16, repeats=1, calibration=16)
    points = sweep(model, tiny_tokenizer, task, config, progress=False)["points"]
    by = {p["key"]: p for p in points}
    assert set(by) == {"dense", "axformer@0.7", "axformer+int8@0.7", "dense+int8@1.0"}
    assert by["axformer@0.7"]["macs"] <= 0.7 * by["dense"]["macs"] * 1.05  # one unit of overshoot allowed
    assert by["axformer+int8@0.7"]["bytes"] < by["axformer@0.7"]["bytes"]
