"""Latency lookup table: interpolation, persistence, and a fast measurement on tiny models."""

from __future__ import annotations

import dataclasses
import time

import pytest

from conftest import make_tiny_model
from slimformer.budget import smallest_structure
from slimformer.latency import LatencyTable, default_grid, measure_latency_table, time_layer_shapes
from slimformer.structure import LayerShape, Structure

GRID = {"heads": (0, 2, 4), "ffn": (0, 16, 37)}


def linear_table(dims, **kw) -> LatencyTable:
    """A table whose true layer time is bilinear, so interpolation must be exact everywhere."""
    rows = tuple(tuple(0.2 + 0.1 * h + 0.01 * w + 0.001 * h * w for w in GRID["ffn"]) for h in GRID["heads"])
    args = dict(dims=dims, batch_size=1, seq_len=128, layer_ms=rows, fixed_ms=0.5, **GRID)
    return LatencyTable(**{**args, **kw})


@pytest.fixture
def dims():
    return Structure.from_model(make_tiny_model("bert")).dims


def test_exact_at_grid_points_and_bilinear_between(dims):
    table = linear_table(dims)
    for i, h in enumerate(GRID["heads"]):
        for j, w in enumerate(GRID["ffn"]):
            assert table.layer_time(h, w) == pytest.approx(table.layer_ms[i][j])
    for h in range(5):
        for w in range(38):
            assert table.layer_time(h, w) == pytest.approx(0.2 + 0.1 * h + 0.01 * w + 0.001 * h * w)
    with pytest.raises(ValueError, match="outside"):
        table.layer_time(5, 0)
    with pytest.raises(ValueError, match="outside"):
        table.layer_time(0, 38)


def test_predict_sums_layers_and_fixed(dims):
    table = linear_table(dims)
    st = Structure(dims, (LayerShape(4, 37, 0), LayerShape(1, 5, 1)))  # one layer removed entirely
    expected = 0.5 + table.layer_time(4, 37) + table.layer_time(1, 5)
    assert table.predict(st) == pytest.approx(expected)
    assert table.predict(smallest_structure(Structure.dense(dims))) == pytest.approx(0.5 + 3 * 0.2)


def test_grid_and_shape_validation(dims):
    with pytest.raises(ValueError, match="heads grid"):
        linear_table(dims, heads=(1, 2, 4))
    with pytest.raises(ValueError, match="ffn grid"):
        linear_table(dims, ffn=(0, 16, 36))
    with pytest.raises(ValueError, match="layer_ms"):
        linear_table(dims, layer_ms=((1.0, 2.0),))
    with pytest.raises(ValueError, match="measured for"):
        linear_table(dims).check(dataclasses.replace(dims, hidden=64))
    with pytest.raises(ValueError, match="seq_len=128"):
        linear_table(dims).check(dims, seq_len=64)


def test_save_load_round_trip(dims, tmp_path):
    table = linear_table(dims, environment={"processor": "x"}, info={"rounds": 1})
    path = table.save(tmp_path / "t.json")
    assert LatencyTable.load(path) == table
    assert LatencyTable.from_dict(table.to_dict()) == table


def test_default_grid_covers_the_extremes():
    dims = Structure.from_model(make_tiny_model("bert")).dims
    heads, ffn = default_grid(dims)
    assert heads[0] == 0 and heads[1] == 1 and heads[-1] == 4
    assert ffn[0] == 0 and ffn[-1] == 37 and list(ffn) == sorted(set(ffn))
    big = dataclasses.replace(dims, num_heads=12, ffn=1536)
    heads, ffn = default_grid(big)
    assert heads == (0, 1, 2, 4, 6, 8, 10, 12)
    assert ffn[:4] == (0, 32, 64, 128) and ffn[-1] == 1536 and len(ffn) <= 13


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "deberta-v2"])
def test_measured_table_is_consistent_and_cached(family, tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMFORMER_CACHE", str(tmp_path))
    monkeypatch.setattr("slimformer.latency.MAX_CACHED_SPREAD", float("inf"))  # cache even on a busy machine
    model = make_tiny_model(family)
    # 8 x 64 tokens: enough matmul work that a full layer stands clear of timing noise on a busy machine
    kw = dict(batch_size=8, seq_len=64, rounds=1, repeats=3, progress=False, **GRID)
    table = measure_latency_table(model, **kw)
    assert table.dims == Structure.from_model(model).dims
    assert (table.batch_size, table.seq_len) == (8, 64)
    assert table.fixed_ms > 0 and all(v > 0 for row in table.layer_ms for v in row)
    # A full layer does several matmuls more than an empty one (two LayerNorms): clearly slower.
    assert table.layer_ms[-1][-1] > table.layer_ms[0][0]
    dense = Structure.dense(table.dims)
    assert table.predict(dense) > table.predict(smallest_structure(dense))
    assert table.environment["torch_threads"] >= 1
    files = list((tmp_path / "latency").glob("*.json"))
    assert len(files) == 1
    start = time.perf_counter()
    again = measure_latency_table(model, **kw)
    assert time.perf_counter() - start < 0.5  # from the cache, no timing
    assert again == table


def test_pruned_model_gives_the_same_architecture_table(tmp_path, monkeypatch):
    from slimformer.surgery import KeepPlan, apply_plan

    monkeypatch.setenv("SLIMFORMER_CACHE", str(tmp_path))
    model = make_tiny_model("bert")
    pruned = apply_plan(make_tiny_model("bert"), KeepPlan.removing(model, attention=[0], neurons={1: range(30)}))
    kw = dict(batch_size=1, seq_len=8, rounds=1, repeats=1, progress=False, **GRID)
    measure_latency_table(model, **kw)
    measure_latency_table(pruned, **kw)  # a pruned model still has the dense architecture's dims
    assert len(list((tmp_path / "latency").glob("*.json"))) == 1


def test_time_layer_shapes_reports_each_shape():
    model = make_tiny_model("bert")
    out = time_layer_shapes(model, [(4, 37), (0, 0), (4, 37)], batch_size=1, seq_len=8, rounds=2, repeats=1)
    assert set(out["layers"]) == {(4, 37), (0, 0)}
    assert out["fixed_ms"] > 0 and set(out["iqr"]) == set(out["layers"])
