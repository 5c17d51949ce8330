"""Tests of the wall-clock benchmark: timing primitive, config, inputs, runs and comparisons."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
import torch

from conftest import FAMILIES, make_tiny_model
from slimformer.bench import (
    BenchConfig,
    bench_model,
    bench_models,
    compare,
    environment,
    format_table,
    make_bench_inputs,
    parse_int_list,
    time_callable,
)

STAT_KEYS = {"median_ms", "mean_ms", "min_ms", "max_ms", "p10_ms", "p90_ms", "iqr_ms", "std_ms"}


def test_time_callable_sleep_counts_and_ordering():
    calls = []

    def fn():
        calls.append(time.perf_counter())
        time.sleep(0.005)

    stats = time_callable(fn, warmup=2, repeats=5)
    assert len(calls) == 2 + 5  # warmup calls happen, but only `repeats` are timed
    assert stats["repeats"] == 5 and len(stats["times_ms"]) == 5
    assert 4.5 <= stats["median_ms"] <= 30
    assert stats["min_ms"] <= stats["p10_ms"] <= stats["median_ms"] <= stats["p90_ms"] <= stats["max_ms"]
    assert stats["iqr_ms"] >= 0 and stats["std_ms"] >= 0
    assert STAT_KEYS <= set(stats)


def test_time_callable_warmup_not_timed():
    # The first (warmup) call is slow; if it were timed, max_ms would show it.
    state = {"n": 0}

    def fn():
        state["n"] += 1
        if state["n"] == 1:
            time.sleep(0.05)

    stats = time_callable(fn, warmup=1, repeats=3)
    assert state["n"] == 4
    assert stats["max_ms"] < 40


def test_time_callable_min_time_extends_repeats():
    stats = time_callable(lambda: time.sleep(0.002), warmup=0, repeats=1, min_time_s=0.02)
    assert stats["repeats"] > 1
    assert sum(stats["times_ms"]) >= 20


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"batch_sizes": ()}, "batch_sizes"),
        ({"batch_sizes": (1, 0)}, "batch_sizes"),
        ({"batch_sizes": (4, 4)}, "batch_sizes"),
        ({"seq_len": 1}, "seq_len"),
        ({"warmup": -1}, "warmup"),
        ({"repeats": 0}, "repeats"),
        ({"min_time_s": -0.5}, "min_time_s"),
        ({"min_time_s": float("nan")}, "min_time_s"),
        ({"threads": 0}, "threads"),
        ({"seed": -3}, "seed"),
        ({"seq_len": 2.5}, "seq_len"),
    ],
)
def test_config_validation_names_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        BenchConfig(**kwargs)


def test_config_round_trip_and_help():
    cfg = BenchConfig(batch_sizes=(1, 8), seq_len=64, warmup=1, repeats=5, min_time_s=0.1, threads=2, seed=7)
    back = BenchConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and isinstance(back.batch_sizes, tuple)
    assert BenchConfig.from_dict(BenchConfig().to_dict()) == BenchConfig()
    assert all(f.metadata.get("help") for f in dataclasses.fields(BenchConfig))
    with pytest.raises(ValueError, match="bogus"):
        BenchConfig.from_dict({"bogus": 1})


def test_parse_int_list():
    assert parse_int_list("1,32") == (1, 32)
    assert parse_int_list(" 4 , 8 ,16") == (4, 8, 16)
    assert parse_int_list("3") == (3,)
    for bad in ("", "1,,2", "1,x", "1.5"):
        with pytest.raises(ValueError, match=repr(bad).replace(".", r"\.")):
            parse_int_list(bad)


@pytest.mark.parametrize("family", FAMILIES)
def test_bench_inputs_fit_each_family(family):
    model = make_tiny_model(family)
    inputs = make_bench_inputs(model, 3, 16, seed=0)
    assert inputs["input_ids"].shape == (3, 16)
    assert int(inputs["input_ids"].min()) >= 11 and int(inputs["input_ids"].max()) < 99
    assert bool(inputs["attention_mask"].all())
    assert ("token_type_ids" in inputs) == (family not in ("distilbert", "modernbert", "deberta-v2"))
    with torch.inference_mode():
        model(**inputs)  # forward accepts exactly these arguments
    assert torch.equal(make_bench_inputs(model, 3, 16, seed=0)["input_ids"], inputs["input_ids"])


@pytest.mark.parametrize(("family", "limit", "positions"), [("bert", 64, 64), ("roberta", 68, 70)])
def test_bench_inputs_seq_len_limit(family, limit, positions):
    model = make_tiny_model(family)
    make_bench_inputs(model, 1, limit, seed=0)
    with torch.inference_mode():
        model(**make_bench_inputs(model, 1, limit, seed=0))  # the limit itself really works
    with pytest.raises(ValueError, match=rf"{limit + 1}.*{limit}.*{positions}"):
        make_bench_inputs(model, 1, limit + 1, seed=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_bench_model_all_families(family):
    model = make_tiny_model(family)
    model.train()
    cfg = BenchConfig(batch_sizes=(1, 4), seq_len=16, warmup=1, repeats=3)
    out = bench_model(model, cfg, progress=False)
    assert set(out) == {"config", "results", "environment", "model"}
    assert out["config"] == cfg.to_dict()
    assert [r["batch_size"] for r in out["results"]] == [1, 4]
    for r in out["results"]:
        assert r["seq_len"] == 16 and r["repeats"] == 3
        assert STAT_KEYS <= set(r)
        assert all(r[k] > 0 for k in ("median_ms", "min_ms", "p10_ms", "p90_ms"))
        assert r["throughput_seq_per_s"] == pytest.approx(r["batch_size"] / (r["median_ms"] / 1e3))
        assert r["ms_per_seq"] == pytest.approx(r["median_ms"] / r["batch_size"])
    assert out["model"]["params"] == sum(p.numel() for p in model.parameters())
    assert "SequenceClassification" in out["model"]["class"]
    assert model.training  # the caller's mode is restored
    json.dumps(out)  # JSON-ready


def test_bench_model_seq_len_too_long():
    with pytest.raises(ValueError, match="64"):
        bench_model(make_tiny_model("bert"), BenchConfig(seq_len=65, repeats=1), progress=False)


def test_threads_restored():
    before = torch.get_num_threads()
    out = bench_model(
        make_tiny_model("bert"),
        BenchConfig(batch_sizes=(1,), seq_len=8, warmup=0, repeats=1, threads=1),
        progress=True,
    )
    assert out["environment"]["torch_threads"] == 1  # it really ran with 1 thread
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError):  # restored on failure too
        bench_model(make_tiny_model("bert"), BenchConfig(seq_len=100, threads=1), progress=False)
    assert torch.get_num_threads() == before


def test_environment_fields():
    env = environment()
    for key in ("python", "platform", "processor", "logical_cores", "torch_threads", "torch", "datetime_utc"):
        assert env[key], key
    assert env["datetime_utc"].endswith("+00:00")


def _fake(medians: dict[int, float], seq_len: int = 16) -> dict:
    return {"results": [{"batch_size": b, "seq_len": seq_len, "median_ms": m} for b, m in medians.items()]}


def test_compare_direction_and_mismatch():
    rows = compare(_fake({1: 2.0, 32: 10.0}), _fake({1: 4.0, 32: 30.0}))
    assert [r["batch_size"] for r in rows] == [1, 32]
    assert rows[0]["speedup"] == pytest.approx(2.0) and rows[1]["speedup"] == pytest.approx(3.0)
    assert rows[0]["a_median_ms"] == 2.0 and rows[0]["b_median_ms"] == 4.0
    assert compare(_fake({1: 4.0}), _fake({1: 2.0}))[0]["speedup"] < 1  # slower candidate
    with pytest.raises(ValueError, match="batch_size"):
        compare(_fake({1: 1.0, 32: 1.0}), _fake({1: 1.0, 16: 1.0}))
    with pytest.raises(ValueError):
        compare(_fake({1: 1.0}, seq_len=16), _fake({1: 1.0}, seq_len=32))


class _TwiceForward(torch.nn.Module):
    """Does the same forward twice: a known 2x slowdown the benchmark must detect."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, **inputs):
        self.inner(**inputs)
        return self.inner(**inputs)


def test_compare_detects_real_slowdown():
    model = make_tiny_model("bert")
    cfg = BenchConfig(batch_sizes=(1, 8), seq_len=32, warmup=3, repeats=25, threads=1)
    single = bench_model(model, cfg, progress=False)
    double = bench_model(_TwiceForward(model), cfg, progress=False)
    for row in compare(single, double):
        assert row["speedup"] > 1.3, row


def test_bench_models_interleaved_detects_slowdown_and_restores_state():
    model = make_tiny_model("bert")
    twice = _TwiceForward(model)
    model.train()
    cfg = BenchConfig(batch_sizes=(1, 4), seq_len=16, warmup=1, repeats=15, threads=1)
    out = bench_models({"single": model, "double": twice}, cfg, progress=False)
    assert set(out) == {"single", "double"}
    assert out["single"]["interleaved_with"] == ["double"]
    for row in compare(out["single"], out["double"]):
        assert row["speedup"] > 1.3, row
    for result in out.values():
        assert [r["batch_size"] for r in result["results"]] == [1, 4]
        assert all(r["repeats"] == 15 for r in result["results"])
    assert model.training, "bench_models must restore each model's train/eval mode"


def test_bench_models_needs_a_model():
    with pytest.raises(ValueError, match="empty"):
        bench_models({}, BenchConfig(), progress=False)


def test_format_table_lists_batch_sizes():
    model = make_tiny_model("distilbert")
    out = bench_model(model, BenchConfig(batch_sizes=(1, 3, 7), seq_len=8, warmup=0, repeats=2), progress=False)
    text = format_table(out)
    lines = text.splitlines()
    for b in (1, 3, 7):
        assert any(line.split() and line.split()[0] == str(b) for line in lines), text
    assert "median" in text and "wall clock" in text
    both = format_table(out, out)
    assert "speedup" in both and "1.00x" in both


def test_bench_models_times_a_non_torch_runtime_beside_pytorch():
    model = make_tiny_model("roberta")

    class Runtime:  # e.g. an ONNX Runtime session: callable with **inputs, has a config, no parameters
        config = model.config
        calls = 0

        def __call__(self, **inputs):
            Runtime.calls += 1
            return model(**inputs)

    cfg = BenchConfig(batch_sizes=(2,), seq_len=8, warmup=1, repeats=3, threads=1)
    out = bench_models({"torch": model, "runtime": Runtime()}, cfg, progress=False)
    assert Runtime.calls == 4 and out["runtime"]["model"]["params"] is None
    assert out["runtime"]["results"][0]["median_ms"] > 0
