"""The config base: declared checks, dict round trip, unknown keys, and every config class built on it."""

from __future__ import annotations

import dataclasses
import json

import pytest

from slimformer.budget import Budget
from slimformer.config import (
    Check,
    ConfigBase,
    FlatConfig,
    boolean,
    budget_or_text,
    fraction,
    integer,
    nested,
    number,
    one_of,
    option,
    positive,
    text,
    tuple_of,
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Inner(ConfigBase):
    width: int = option(4, "units", integer(1))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Outer(ConfigBase):
    name: str = option("x", "a name", text())
    rate: float = option(0.5, "a rate", fraction(open_high=True))
    lr: float = option(1e-3, "learning rate", positive())
    steps: int | None = option(None, "optional steps", integer(1, optional=True))
    mode: str = option("fast", "speed", one_of("fast", "slow"))
    flag: bool = option(True, "a switch", boolean())
    sizes: tuple[int, ...] = option((1, 2), "sizes", tuple_of(integer(1), min_len=1, distinct=True))
    budget: Budget | None = option(None, "a budget", budget_or_text(optional=True))
    inner: Inner | None = option(None, "nested settings", nested(Inner, optional=True))
    low: float = option(0.0, "at most high", number())
    high: float = option(1.0, "at least low", number())
    tags: dict = option(help="free-form", factory=dict)

    def _check(self) -> None:
        if self.low > self.high:
            self._fail("low", f"must be <= high={self.high!r}")


def test_defaults_convert_and_round_trip_through_json():
    c = Outer(lr=1, sizes=[3, 4], budget="macs=0.5", inner={"width": 8})
    assert c.lr == 1.0 and isinstance(c.lr, float)
    assert c.sizes == (3, 4)
    assert c.budget == Budget.parse("macs=0.5")
    assert c.inner == Inner(width=8)
    d = c.to_dict()
    assert d["budget"] == "macs=0.5" and d["sizes"] == [3, 4] and d["inner"] == {"width": 8}
    assert Outer.from_dict(json.loads(json.dumps(d))) == c
    assert Outer.from_dict({}) == Outer()
    assert Outer().tags is not Outer().tags  # a fresh mutable default each time


@pytest.mark.parametrize(
    ("changes", "allowed"),
    [
        ({"rate": 1.0}, r"a fraction in \[0, 1\)"),
        ({"lr": float("nan")}, "finite"),
        ({"lr": 0}, "> 0"),
        ({"lr": True}, "> 0"),
        ({"steps": 0}, "None or an integer >= 1"),
        ({"steps": 2.0}, "integer"),
        ({"mode": "medium"}, "one of fast, slow"),
        ({"flag": 1}, "true or false"),
        ({"sizes": ()}, "non-empty tuple"),
        ({"sizes": (1, 1)}, "items repeat"),
        ({"sizes": (1, 0)}, "each an integer >= 1"),
        ({"budget": "macs=abc"}, "cannot parse budget"),
        ({"budget": 0.5}, "a Budget or its text form"),
        ({"inner": {"width": 0}}, r"Inner\.width=0"),
        ({"inner": {"depth": 1}}, "unknown field"),
        ({"name": ""}, "non-empty string"),
    ],
)
def test_refused_values_name_class_field_value_and_what_is_allowed(changes, allowed):
    ((name, value),) = changes.items()
    with pytest.raises(ValueError, match=allowed) as info:
        Outer(**changes)
    assert f"Outer.{name}={value!r}" in str(info.value) or name == "inner"


def test_cross_field_rule_runs_after_the_field_checks():
    with pytest.raises(ValueError, match=r"Outer\.low=2\.0: must be <= high=1\.0"):
        Outer(low=2)
    assert Outer(low=-1.0, high=-0.5).low == -1.0


def test_from_dict_refuses_unknown_keys_and_non_mappings():
    with pytest.raises(ValueError, match=r"Outer: unknown field\(s\) bogus, zzz; allowed: name, rate"):
        Outer.from_dict({"bogus": 1, "zzz": 2, "rate": 0.1})
    with pytest.raises(ValueError, match="expected a mapping"):
        Outer.from_dict([("rate", 0.1)])


def test_configs_are_frozen_and_help_texts_are_readable():
    c = Outer()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.rate = 0.2  # type: ignore[misc]
    helps = Outer.field_help()
    assert helps["lr"] == "learning rate" and set(helps) == {f.name for f in dataclasses.fields(Outer)}


def _slimformer_classes() -> list[type]:
    """Every class defined in a slimformer module (each module imported, so none is missed)."""
    import importlib
    import pkgutil

    import slimformer

    found = set()
    for info in pkgutil.walk_packages(slimformer.__path__, "slimformer."):
        for obj in vars(importlib.import_module(info.name)).values():
            if isinstance(obj, type) and obj.__module__.startswith("slimformer."):
                found.add(obj)
    return sorted(found, key=lambda c: f"{c.__module__}.{c.__qualname__}")


#: Configs whose required fields need a test of their own (below).
OWN_TEST = {"LatencyTable"}


def _config_classes() -> list[type[ConfigBase]]:
    return [
        c
        for c in _slimformer_classes()
        if issubclass(c, ConfigBase)
        and c not in (ConfigBase, FlatConfig)
        and getattr(c, "method", None) != ""
        and c.__name__ not in OWN_TEST
    ]  # PruneConfig (method "") is the abstract base of the pruning methods


def test_every_config_dataclass_is_on_the_base():
    configs = [c for c in _slimformer_classes() if dataclasses.is_dataclass(c) and c.__name__.endswith("Config")]
    assert len(configs) >= 15  # the walk found them (19 when this was written)
    assert [c.__name__ for c in configs if not issubclass(c, ConfigBase)] == []


#: A value for each field that has no default, by field name.
REQUIRED = {"budget": "macs=0.5", "kind": "macs", "value": 0.5, "relative": True}
# classes whose fields all have defaults but which need one of them given (a rule across fields)
EXAMPLES = {"ShiftConfig": {"keep": 0.5}}


@pytest.mark.parametrize("cls", _config_classes(), ids=lambda c: c.__name__)
def test_every_config_round_trips_refuses_unknown_keys_and_has_help(cls):
    required = {f.name: REQUIRED[f.name] for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING}  # fmt: skip
    config = cls(**required, **EXAMPLES.get(cls.__name__, {}))
    _check_round_trip(cls, config)


def test_latency_table_round_trips_with_its_format_version():
    from slimformer.latency import FORMAT, LatencyTable

    dims = {"family": "bert", "hidden": 32, "num_heads": 4, "head_size": 8, "ffn": 64, "num_layers": 2,
            "vocab_size": 99, "max_positions": 64, "type_vocab_size": 2, "num_labels": 2}  # fmt: skip
    table = LatencyTable(dims=dims, batch_size=1, seq_len=16, heads=[0, 4], ffn=(0, 32, 64),
                         layer_ms=[[0.0, 1, 2], [1, 2, 3]], fixed_ms=0.5, info={"repeats": 3})  # fmt: skip
    assert table.heads == (0, 4) and table.layer_ms[1] == (1.0, 2.0, 3.0) and table.dims.ffn == 64
    saved = table.to_dict()["dims"]  # every ModelDims field, the layout terms at their defaults
    assert table.to_dict()["format"] == FORMAT and {k: saved[k] for k in dims} == dims
    assert saved["biases"] and not saved["gated_ffn"] and saved["embedding_size"] == 0
    _check_round_trip(LatencyTable, table)
    with pytest.raises(ValueError, match="format must be"):
        LatencyTable.from_dict({**table.to_dict(), "format": FORMAT + 1})
    with pytest.raises(ValueError, match=r"LatencyTable\.layer_ms=.*must be 2 x 3"):
        dataclasses.replace(table, layer_ms=((0.0, 1.0), (1.0, 2.0)))


def _check_round_trip(cls, config) -> None:
    data = json.loads(json.dumps(config.to_dict()))
    assert cls.from_dict(data) == config
    with pytest.raises(ValueError, match=f"{cls.__name__}: unknown field"):
        cls.from_dict({**data, "no_such_field": 1})
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"
        assert isinstance(f.metadata.get("check"), Check), f"{cls.__name__}.{f.name} declares no check"


# Dicts as the configs wrote them before they shared a base (saved in run folders and reports).
SAVED = [
    ("slimformer.static.prune:PruneConfig", {"budget": "macs=0.5", "ffn_multiple": 8, "head_examples": 64,
     "method": "optin", "min_ffn": 32, "neuron_examples": None, "probes": 1, "repair": True, "seed": 0,
     "trajectory_weight": 1.0}),
    ("slimformer.axformer.config:AxConfig", {"attention": True, "budget": "macs=0.5", "budget_step": 0.1,
     "change_eps": 0.0001, "compensate": False, "eval_rows": 128, "ffn": True, "hard_attention": True, "holdout": 0.0,
     "loss_tolerance": 0.0, "max_accuracy_drop": None, "max_passes": 4, "max_worse_fraction": 0.5,
     "neuron_groups": 8, "reject_z": 1.5, "remove_layers": True, "repair": True, "repair_ridge": 0.01,
     "screen_fraction": 0.25, "tolerance_from": "previous", "topk": [8, 0.25], "topk_min_gain": 0.0}),
    ("slimformer.exits.config:ExitRule", {"kind": "entropy", "patience": 2, "threshold": 0.0}),
    ("slimformer.exits.config:SlenderConfig", {"budget": "params=15M", "method": "optin", "repair": True, "seed": 0}),
    ("slimformer.budget:Budget", {"batch_size": 1, "dtype": "fp32", "kind": "params", "relative": False,
     "seq_len": 128, "value": 12000000.0}),
]  # fmt: skip


@pytest.mark.parametrize(("target", "saved"), SAVED, ids=[t.rpartition(":")[2] for t, _ in SAVED])
def test_dicts_saved_before_the_base_still_load_and_are_written_the_same(target, saved):
    import importlib

    module, _, name = target.partition(":")
    cls = getattr(importlib.import_module(module), name)
    config = cls.from_dict(saved)
    assert config.to_dict() == saved
    assert json.dumps(config.to_dict(), sort_keys=True) == json.dumps(saved, sort_keys=True)  # 1.0 stays 1.0
