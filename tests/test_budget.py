"""Budget: parsing every text form, round trips, validation messages, and limit/measure/fits."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import make_tiny_model
from slimformer.budget import Budget, InfeasibleBudget, format_value, smallest_structure
from slimformer.cost import cost_of
from slimformer.latency import LatencyTable
from slimformer.structure import LayerShape, Structure

PARSED = [
    ("macs=0.5", dict(kind="macs", value=0.5, relative=True)),
    ("macs=1", dict(kind="macs", value=1.0, relative=True)),
    ("macs=300M", dict(kind="macs", value=300e6, relative=False)),
    ("macs=1.2G", dict(kind="macs", value=1.2e9, relative=False)),
    ("macs=750k", dict(kind="macs", value=750e3, relative=False)),
    ("macs=0.5,seq=128", dict(kind="macs", value=0.5, relative=True, seq_len=128)),
    ("macs=0.5,seq=256", dict(kind="macs", value=0.5, relative=True, seq_len=256)),
    ("params=12M", dict(kind="params", value=12e6, relative=False)),
    ("params=12000000", dict(kind="params", value=12e6, relative=False)),
    ("params=0.6", dict(kind="params", value=0.6, relative=True)),
    ("memory=40MB", dict(kind="memory", value=40e6, relative=False)),
    ("memory=1.5GB", dict(kind="memory", value=1.5e9, relative=False)),
    ("memory=512kB", dict(kind="memory", value=512e3, relative=False)),
    ("memory=35MiB", dict(kind="memory", value=35 * 2**20, relative=False)),
    ("memory=1GiB", dict(kind="memory", value=2.0**30, relative=False)),
    ("memory=100KiB", dict(kind="memory", value=100 * 1024, relative=False)),
    ("memory=5000B", dict(kind="memory", value=5000, relative=False)),
    ("memory=0.5", dict(kind="memory", value=0.5, relative=True)),
    ("memory=40MB,dtype=int8", dict(kind="memory", value=40e6, relative=False, dtype="int8")),
    ("memory=0.3,dtype=fp16", dict(kind="memory", value=0.3, relative=True, dtype="fp16")),
    ("latency=8ms", dict(kind="latency", value=8.0, relative=False)),
    ("latency=0.6", dict(kind="latency", value=0.6, relative=True)),
    ("latency=0.5s", dict(kind="latency", value=500.0, relative=False)),
    ("latency=800us", dict(kind="latency", value=0.8, relative=False)),
    ("latency=8ms,batch=32,seq=128", dict(kind="latency", value=8.0, relative=False, batch_size=32)),
    ("latency=0.6,seq=64,batch=4", dict(kind="latency", value=0.6, relative=True, batch_size=4, seq_len=64)),
    (" MACS = 0.5 , Seq=64 ", dict(kind="macs", value=0.5, relative=True, seq_len=64)),
    ("memory=40mb,DTYPE=INT8", dict(kind="memory", value=40e6, relative=False, dtype="int8")),
]

BAD = [
    "",
    "macs",
    "0.5",
    "flops=0.5",
    "macs=",
    "macs=0",
    "macs=-1",
    "macs=1.5",
    "macs=2x",
    "macs=nan",
    "macs=inf",
    "params=0.0001k",  # absolute params below 1
    "memory=40",
    "memory=40ms",
    "latency=8",
    "latency=8MB",
    "params=12MB",
    "macs=0.5,seq=0",
    "macs=0.5,seq=abc",
    "macs=0.5,seq",
    "macs=0.5,foo=1",
    "macs=0.5,batch=4",
    "params=0.5,dtype=int8",
    "memory=0.5,dtype=int4",
    "macs=0.5,seq=1,seq=2",
    "macs=0.5,,seq=2",
]


@pytest.mark.parametrize(("text", "expected"), PARSED)
def test_parse_every_form(text, expected):
    assert Budget.parse(text) == Budget(**expected)


@pytest.mark.parametrize(("text", "expected"), PARSED)
def test_str_and_dict_round_trip(text, expected):
    b = Budget(**expected)
    assert Budget.parse(str(b)) == b
    assert Budget.from_dict(b.to_dict()) == b


def test_str_is_readable():
    assert str(Budget.parse("macs=0.5")) == "macs=0.5"
    assert str(Budget.parse("macs=300M")) == "macs=300M"
    assert str(Budget.parse("memory=40MB,dtype=int8")) == "memory=40MB,dtype=int8"
    assert str(Budget.parse("latency=8ms,batch=32,seq=128")) == "latency=8ms,batch=32"
    assert str(Budget(kind="params", value=12_345_679, relative=False)) == "params=12.345679M"


@pytest.mark.parametrize("text", BAD)
def test_bad_text_names_the_text_and_the_forms(text):
    with pytest.raises(ValueError) as err:
        Budget.parse(text)
    assert repr(text) in str(err.value)
    assert "accepted forms" in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(kind="flops", value=0.5, relative=True), "kind"),
        (dict(kind="macs", value=1.5, relative=True), "value"),
        (dict(kind="macs", value=0.0, relative=True), "value"),
        (dict(kind="macs", value=float("nan"), relative=False), "value"),
        (dict(kind="macs", value=True, relative=True), "value"),
        (dict(kind="macs", value=0.5, relative=1), "relative"),
        (dict(kind="macs", value=0.5, relative=True, seq_len=0), "seq_len"),
        (dict(kind="latency", value=0.5, relative=True, batch_size=0), "batch_size"),
        (dict(kind="macs", value=0.5, relative=True, batch_size=2), "batch_size"),
        (dict(kind="memory", value=0.5, relative=True, dtype="bf16"), "dtype"),
        (dict(kind="params", value=0.5, relative=True, dtype="int8"), "dtype"),
    ],
)
def test_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Budget(**kwargs)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="Budget: unknown field"):
        Budget.from_dict({"kind": "macs", "value": 0.5, "relative": True, "seq": 3})


@pytest.fixture
def tiny_structure():
    return Structure.from_model(make_tiny_model("bert"))


def test_limit_measure_fits_match_the_cost_model(tiny_structure):
    dense = tiny_structure
    pruned = Structure(dense.dims, (LayerShape(2, 10, 0), LayerShape(0, 37, 1), LayerShape(4, 0, 2)))
    full, small = cost_of(dense, 32), cost_of(pruned, 32)
    b = Budget.parse("macs=0.5,seq=32")
    assert b.limit(dense) == 0.5 * full.macs
    assert b.limit(pruned) == 0.5 * small.macs  # relative to the model being compressed
    assert b.measure(pruned) == small.macs
    assert b.fits(pruned, reference=dense) == (small.macs <= 0.5 * full.macs)
    assert not b.fits(pruned, reference=pruned)
    with pytest.raises(ValueError, match="relative: pass reference"):
        b.fits(pruned)  # a fraction of what? refused rather than guessed
    assert Budget.parse("params=0.9").measure(pruned) == cost_of(pruned).params
    for dtype in ("fp32", "fp16", "int8"):
        m = Budget.parse(f"memory=0.5,dtype={dtype}")
        assert m.measure(pruned) == getattr(cost_of(pruned), f"bytes_{dtype}")
        assert m.limit(dense) == 0.5 * getattr(cost_of(dense), f"bytes_{dtype}")
    absolute = Budget.parse(f"params={cost_of(pruned).params}")
    assert absolute.limit(dense) == cost_of(pruned).params
    assert absolute.fits(pruned)
    assert not absolute.fits(dense)


def test_seq_len_changes_macs_not_params(tiny_structure):
    assert Budget.parse("macs=0.5,seq=16").measure(tiny_structure) == cost_of(tiny_structure, 16).macs
    assert Budget.parse("macs=0.5,seq=64").measure(tiny_structure) == cost_of(tiny_structure, 64).macs
    assert Budget.parse("params=0.5,seq=16").measure(tiny_structure) == cost_of(tiny_structure).params


def synthetic_table(dims, *, batch_size=1, seq_len=128) -> LatencyTable:
    heads, ffn = (0, 2, dims.num_heads), (0, 16, dims.ffn)
    rows = tuple(tuple(0.1 + 0.05 * h + 0.01 * w for w in ffn) for h in heads)
    return LatencyTable(
        dims=dims, batch_size=batch_size, seq_len=seq_len, heads=heads, ffn=ffn, layer_ms=rows, fixed_ms=0.5
    )


def test_latency_budget_uses_the_table(tiny_structure):
    table = synthetic_table(tiny_structure.dims)
    b = Budget.parse("latency=0.6")
    dense_ms = 0.5 + 3 * (0.1 + 0.05 * 4 + 0.01 * 37)
    assert b.measure(tiny_structure, latency_table=table) == pytest.approx(dense_ms)
    assert b.limit(tiny_structure, latency_table=table) == pytest.approx(0.6 * dense_ms)
    assert not b.fits(tiny_structure, reference=tiny_structure, latency_table=table)
    assert Budget.parse("latency=5ms").fits(tiny_structure, latency_table=table)


def test_latency_budget_without_table_explains(tiny_structure):
    with pytest.raises(ValueError, match="measure_latency_table"):
        Budget.parse("latency=8ms").measure(tiny_structure)
    with pytest.raises(ValueError, match="measure_latency_table"):
        Budget.parse("latency=0.5").limit(tiny_structure)


def test_latency_table_must_match_batch_and_seq(tiny_structure):
    table = synthetic_table(tiny_structure.dims, batch_size=32)
    with pytest.raises(ValueError, match="batch_size=32"):
        Budget.parse("latency=8ms").measure(tiny_structure, latency_table=table)
    other = synthetic_table(dataclasses.replace(tiny_structure.dims, ffn=64))
    with pytest.raises(ValueError, match="measured for"):
        Budget.parse("latency=8ms").measure(tiny_structure, latency_table=other)


def test_infeasible_message_states_smallest(tiny_structure):
    b = Budget.parse("params=1k")
    smallest = cost_of(smallest_structure(tiny_structure)).params
    dense = cost_of(tiny_structure).params
    err = InfeasibleBudget(b, smallest, dense, "keeps the embeddings and classifier")
    text = str(err)
    assert isinstance(err, ValueError)
    assert text.startswith("params=1k is infeasible: the smallest model slimformer can make keeps")
    assert format_value("params", smallest) in text
    assert f"{smallest / dense:.0%} of dense" in text
    assert err.smallest == smallest and err.dense == dense


def test_format_value():
    assert format_value("params", 12_070_000) == "12.07M params"
    assert format_value("macs", 1.5e9) == "1.50G MACs"
    assert format_value("memory", 40e6) == "40.00 MB"
    assert format_value("latency", 8.123) == "8.12 ms"
