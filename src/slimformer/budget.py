"""What the user asks for: one :class:`Budget` type that every compression method reuses.

A budget bounds one cost of the compressed model: ``macs`` (per sequence of ``seq_len`` tokens),
``params``, ``memory`` (weight bytes at ``dtype``) or ``latency`` (ms per batch of ``batch_size``
x ``seq_len``, predicted by a measured :class:`slimformer.latency.LatencyTable`). The value is
either ``relative`` (a fraction of the unpruned model's cost, in (0, 1]) or absolute (in MACs,
parameters, bytes or milliseconds). Every cost except latency comes from :mod:`slimformer.cost`.

Text forms (:meth:`Budget.parse`), modifiers after commas::

    macs=0.5   macs=300M   macs=1.2G,seq=256   params=12M   params=0.6
    memory=40MB   memory=35MiB,dtype=int8   memory=0.5   memory=40%   latency=8ms,batch=32,seq=128   latency=0.6

``seq`` is accepted by every kind (params and memory do not depend on it); ``batch`` only by
latency and ``dtype`` only by memory budgets. Memory units: ``B``, decimal ``kB``/``MB``/``GB``
(powers of 1000) and binary ``KiB``/``MiB``/``GiB`` (powers of 1024). Count suffixes
``k``/``M``/``G``/``T`` are powers of 1000.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from slimformer.config import ConfigBase, boolean, integer, one_of, option, positive
from slimformer.cost import cost_of
from slimformer.structure import LayerShape, Structure

if TYPE_CHECKING:
    from slimformer.latency import LatencyTable

KINDS = ("macs", "params", "memory", "latency")
DTYPES = ("fp32", "fp16", "int8")
UNITS = {"macs": "MACs", "params": "params", "memory": "bytes", "latency": "ms"}
DEFAULT_SEQ_LEN = 128

FORMS = (
    "accepted forms: KIND=VALUE[,seq=N][,batch=N][,dtype=D] with KIND one of macs, params, memory, latency; "
    "VALUE a fraction of the dense model in (0, 1] (e.g. macs=0.5, latency=0.6), a percentage (memory=40%) "
    "or absolute: "
    "macs=300M / macs=1.2G, params=12M (suffixes k, M, G, T), memory=40MB / 40MiB (B, kB, MB, GB decimal; "
    "KiB, MiB, GiB binary), latency=8ms (ms, s, us); seq=N for macs and latency (default 128), "
    "batch=N for latency (default 1), dtype=fp32|fp16|int8 for memory (default fp32)"
)
_COUNT = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_BYTES = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
_TIME = {"ms": 1, "s": 1000, "us": Decimal("0.001")}
_VALUE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)
_MODIFIERS = {
    "seq": "seq_len",
    "seq_len": "seq_len",
    "batch": "batch_size",
    "batch_size": "batch_size",
    "dtype": "dtype",
}


class InfeasibleBudget(ValueError):
    """Even the smallest structure selection can make does not fit the budget.

    Attributes:
        budget: the budget asked for.
        smallest: cost of the smallest achievable structure, in the budget's unit.
        dense: cost of the unpruned model, in the budget's unit.
    """

    def __init__(self, budget: Budget, smallest: float, dense: float, what: str):
        self.budget, self.smallest, self.dense = budget, smallest, dense
        super().__init__(
            f"{budget} is infeasible: the smallest model slimformer can make {what}, "
            f"{format_value(budget.kind, smallest)} ({smallest / dense:.0%} of dense, "
            f"{format_value(budget.kind, dense)}); the budget allows "
            f"{format_value(budget.kind, budget.limit_of(dense))}"
        )


@dataclass(frozen=True, kw_only=True)
class Budget(ConfigBase):
    """An upper bound on one cost of the compressed model (see the module docstring)."""

    kind: str = option(help="what is bounded: macs, params, memory (bytes) or latency (ms)", check=one_of(*KINDS))
    value: float = option(
        help="fraction of the dense model's cost in (0, 1] when relative, else absolute", check=positive()
    )
    relative: bool = option(help="value is a fraction of the dense (unpruned) model's cost", check=boolean())
    seq_len: int = option(DEFAULT_SEQ_LEN, "tokens per sequence for macs and latency", integer(1))
    batch_size: int = option(1, "sequences per batch, latency budgets only", integer(1))
    dtype: str = option("fp32", "weight storage for memory budgets: fp32, fp16 or int8", one_of(*DTYPES))

    def _check(self) -> None:
        v = self.value
        if self.relative and v > 1:
            self._fail("value", "a relative budget is a fraction of the dense model's cost, in (0, 1]")
        if not self.relative and self.kind in ("macs", "params", "memory") and v < 1:
            self._fail("value", f"an absolute {self.kind} budget counts {UNITS[self.kind]}, so must be >= 1")
        # Settings that do not affect the bounded cost are refused rather than silently ignored.
        if self.batch_size != 1 and self.kind != "latency":
            self._fail("batch_size", "only latency budgets depend on the batch size")
        if self.dtype != "fp32" and self.kind != "memory":
            self._fail("dtype", "only memory budgets depend on the dtype")

    # --- text and dict forms -------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str) -> Budget:
        """Parse ``"macs=0.5"``, ``"params=12M"``, ``"latency=8ms,batch=32"``, ... (see module docstring).

        Raises:
            ValueError: quoting ``text`` and listing the accepted forms.
        """

        def fail(why: str) -> ValueError:
            return ValueError(f"cannot parse budget {text!r}: {why}; {FORMS}")

        if not isinstance(text, str) or "=" not in text:
            raise fail("expected KIND=VALUE")
        head, *mods = [p.strip() for p in text.split(",")]
        kind, _, raw = (p.strip() for p in head.partition("="))
        kind = kind.lower()
        if kind not in KINDS:
            raise fail(f"unknown kind {kind!r}")
        kwargs: dict[str, Any] = {}
        for mod in mods:
            key, sep, val = (p.strip() for p in mod.partition("="))
            name = _MODIFIERS.get(key.lower())
            if not sep or name is None or not val:
                raise fail(f"bad modifier {mod!r}")
            if name in kwargs:
                raise fail(f"modifier {key!r} given twice")
            if name == "dtype":
                kwargs[name] = val.lower()
            elif val.isdigit():
                kwargs[name] = int(val)
            else:
                raise fail(f"{key} must be a positive integer, got {val!r}")
        value, relative = _parse_value(kind, raw, fail)
        try:
            return cls(kind=kind, value=value, relative=relative, **kwargs)
        except ValueError as e:
            raise fail(str(e)) from None

    def __str__(self) -> str:
        out = f"{self.kind}={self._value_text()}"
        if self.seq_len != DEFAULT_SEQ_LEN:
            out += f",seq={self.seq_len}"
        if self.batch_size != 1:
            out += f",batch={self.batch_size}"
        if self.dtype != "fp32":
            out += f",dtype={self.dtype}"
        return out

    def _value_text(self) -> str:
        if self.relative:
            return repr(float(self.value))
        if self.kind == "latency":
            scale, suffix = 1, "ms"
        else:
            table = _BYTES if self.kind == "memory" else _COUNT
            names = {"b": "B", "kb": "kB", "mb": "MB", "gb": "GB"} if self.kind == "memory" else {"k": "k"}
            units = [(s, names.get(k, k.upper())) for k, s in table.items() if "i" not in k and s <= self.value]
            scale, suffix = max(units)
        for digits in (6, 9, 12, 15, 17):  # shortest text that parses back to the same float
            text = f"{float(Decimal(repr(float(self.value))) / scale):.{digits}g}{suffix}"
            if _parse_value(self.kind, text, ValueError)[0] == float(self.value):
                return text
        return repr(float(self.value)) + ("ms" if self.kind == "latency" else "")

    # --- evaluation ----------------------------------------------------------------------------
    def measure(self, structure: Structure, *, latency_table: LatencyTable | None = None) -> float:
        """The cost of ``structure`` in this budget's unit (MACs, params, bytes or ms).

        Raises:
            ValueError: a latency budget without a table, or a table for other dims/batch/seq.
        """
        if self.kind == "latency":
            return self._table(structure, latency_table).predict(structure)
        cost = cost_of(structure, self.seq_len)
        if self.kind == "macs":
            return float(cost.macs)
        if self.kind == "params":
            return float(cost.params)
        return float(getattr(cost, f"bytes_{self.dtype}"))

    def limit(self, dense: Structure, *, latency_table: LatencyTable | None = None) -> float:
        """The absolute limit in this budget's unit.

        Args:
            dense: the reference a relative budget is a fraction of: the model being compressed
                (usually unpruned; an already-pruned model is compressed relative to its own size).
            latency_table: required for latency budgets.
        """
        if not self.relative:
            if self.kind == "latency":
                self._table(dense, latency_table)  # same checks as measure(), so mistakes show early
            return float(self.value)
        return self.limit_of(self.measure(dense, latency_table=latency_table))

    def limit_of(self, dense_cost: float) -> float:
        """The limit given the reference model's cost (in this budget's unit)."""
        return float(self.value) * dense_cost if self.relative else float(self.value)

    def fits(
        self,
        structure: Structure,
        *,
        reference: Structure | None = None,
        latency_table: LatencyTable | None = None,
    ) -> bool:
        """Whether ``structure`` costs at most :meth:`limit` of ``reference``.

        A relative budget is a fraction of the model being compressed (which may itself be pruned
        already), the same meaning :func:`~slimformer.static.prune` gives it, so it needs that model's
        structure as ``reference``; an absolute budget ignores it.

        Raises:
            ValueError: a relative budget without ``reference``.
        """
        if reference is None:
            if self.relative:
                raise ValueError(
                    f"{self} is relative: pass reference=Structure.from_model(model being compressed), "
                    "the structure the fraction is of"
                )
            reference = structure
        limit = self.limit(reference, latency_table=latency_table)
        return self.measure(structure, latency_table=latency_table) <= limit

    def _table(self, structure: Structure, table: LatencyTable | None) -> LatencyTable:
        if table is None:
            raise ValueError(
                f"{self} is a latency budget and needs a measured latency table: "
                f"slimformer.latency.measure_latency_table(model, batch_size={self.batch_size}, "
                f"seq_len={self.seq_len}) (cached after the first run), passed as latency_table=..."
            )
        table.check(structure.dims, batch_size=self.batch_size, seq_len=self.seq_len)
        return table


def smallest_structure(structure: Structure) -> Structure:
    """Every head and FFN neuron removed; layers, embeddings, LayerNorms and the classifier stay."""
    return Structure(structure.dims, tuple(LayerShape(0, 0, s.origin) for s in structure.layers))


def format_value(kind: str, value: float) -> str:
    """Human text of a cost in a budget kind's unit: ``12.07M params``, ``40.0 MB``, ``8.12 ms``."""
    if kind == "latency":
        return f"{value:.3g} ms"
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1, "")):
        if abs(value) >= div or div == 1:
            if kind == "memory":
                return f"{value / div:.2f} {unit}B"
            return f"{value / div:.2f}{unit} {UNITS[kind]}"
    raise AssertionError("unreachable")


def _parse_value(kind: str, raw: str, fail) -> tuple[float, bool]:
    """``(value, relative)`` from the text after ``KIND=``."""
    if raw.strip().endswith("%"):  # "memory=40%": a percentage of the dense model's cost
        pct = raw.strip()[:-1].strip()
        try:
            number = Decimal(pct)
        except InvalidOperation:
            raise fail(f"bad percentage {raw!r}") from None
        if not 0 < number <= 100:
            raise fail(f"a percentage must be in (0, 100], got {raw!r}")
        return float(number / 100), True
    m = _VALUE.match(raw)
    if not m:
        raise fail(f"bad value {raw!r}")
    try:
        number = Decimal(m.group(1))
    except InvalidOperation:
        raise fail(f"bad number {m.group(1)!r}") from None
    unit = m.group(2).lower()
    if not unit:
        if 0 < number <= 1:
            return float(number), True
        if kind in ("macs", "params") and number > 1 and number == number.to_integral_value():
            return float(number), False  # a plain count like params=12000000
        raise fail(f"{raw!r} is neither a fraction in (0, 1] nor a value with a unit")
    table = {"macs": _COUNT, "params": _COUNT, "memory": _BYTES, "latency": _TIME}[kind]
    if unit not in table or (kind != "memory" and unit == ""):
        raise fail(f"unit {m.group(2)!r} is not valid for {kind} (use {', '.join(k for k in table if k)})")
    return float(number * table[unit]), False
