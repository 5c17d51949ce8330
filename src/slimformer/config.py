"""One base for every settings dataclass: a dict round trip, unknown keys refused, checks declared per field.

A config is a ``@dataclass(frozen=True, kw_only=True)`` subclass of :class:`ConfigBase` whose fields
are declared with :func:`option` (or ``field(metadata={"help": ..., "check": ...})``)::

    @dataclass(frozen=True, kw_only=True)
    class RecoverConfig(ConfigBase):
        epochs: int = option(1, "passes over the training batches", integer(1))
        lr: float = option(3e-5, "peak learning rate (AdamW)", positive())

The base ``__post_init__`` runs every field's :class:`Check` once (a check may also convert: ``1`` to
``1.0``, a list to a tuple, ``"macs=0.5"`` to a :class:`~slimformer.budget.Budget`, a dict to a nested
config), then the class's own cross-field rules in :meth:`ConfigBase._check`. A refused value raises
``ValueError`` naming ``Class.field``, the value and what is allowed. ``to_dict`` gives JSON-ready
values (budgets as text, tuples as lists, nested configs as dicts) and ``from_dict`` is its inverse.

This module imports no torch, so the CLI can read the help texts cheaply.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

C = TypeVar("C", bound="ConfigBase")


class Check:
    """A declared rule for one field: converts an accepted value, refuses others.

    Args:
        allowed: what is allowed, as the error message says it ("an integer >= 1").
        convert: returns the (possibly converted) value; raises ``ValueError`` or ``TypeError`` to
            refuse it (a non-empty message is quoted as the reason).
        encode: the value's JSON-ready form in ``to_dict`` (default: nested configs as dicts, tuples as lists).
    """

    def __init__(self, allowed: str, convert: Callable[[Any], Any], *, encode: Callable[[Any], Any] | None = None):
        self.allowed, self.convert, self.encode = allowed, convert, encode

    def apply(self, where: str, value: Any) -> Any:
        """The accepted value of field ``where`` (``"Class.field"``); ``ValueError`` when refused."""
        try:
            return self.convert(value)
        except (ValueError, TypeError) as e:
            reason = f" ({e})" if str(e) else ""
            raise ValueError(f"{where}={value!r}: must be {self.allowed}{reason}") from None

    def __repr__(self) -> str:
        return f"Check({self.allowed!r})"


def _refuse(reason: str = "") -> None:
    raise ValueError(reason)


def _optional(check: Check) -> Check:
    return Check(f"None or {check.allowed}", lambda v: None if v is None else check.convert(v), encode=check.encode)


def _bounds(low: float | None, high: float | None, open_low: bool, open_high: bool) -> str:
    if low is not None and high is not None:
        return f" in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    if low is not None:
        return f" {'>' if open_low else '>='} {low}"
    if high is not None:
        return f" {'<' if open_high else '<='} {high}"
    return ""


def _within(v: float, low: float | None, high: float | None, open_low: bool, open_high: bool) -> bool:
    return (low is None or (v > low if open_low else v >= low)) and (
        high is None or (v < high if open_high else v <= high)
    )


def integer(low: int | None = None, high: int | None = None, *, optional: bool = False) -> Check:
    """An integer (not a bool; numpy integers become ``int``) in ``[low, high]``; ``optional`` also allows None."""

    def convert(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not _within(v, low, high, False, False):
            _refuse()
        return int(v)  # numpy integers too

    check = Check(f"an integer{_bounds(low, high, False, False)}", convert)
    return _optional(check) if optional else check


def number(
    low: float | None = None,
    high: float | None = None,
    *,
    open_low: bool = False,
    open_high: bool = False,
    optional: bool = False,
    what: str = "a finite number",
) -> Check:
    """A finite number within the bounds, stored as ``float`` (so 1 and 1.0 round-trip alike)."""

    def convert(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            _refuse()
        if not _within(v, low, high, open_low, open_high):
            _refuse()
        return float(v)

    check = Check(f"{what}{_bounds(low, high, open_low, open_high)}", convert)
    return _optional(check) if optional else check


def positive(*, optional: bool = False) -> Check:
    """A finite number > 0."""
    return number(0, open_low=True, optional=optional)


def non_negative(*, optional: bool = False) -> Check:
    """A finite number >= 0."""
    return number(0, optional=optional)


def fraction(*, open_low: bool = False, open_high: bool = False, optional: bool = False) -> Check:
    """A number in [0, 1] (either end may be open)."""
    return number(0, 1, open_low=open_low, open_high=open_high, optional=optional, what="a fraction")


def boolean() -> Check:
    """``True`` or ``False`` (not 0 / 1, not text)."""
    return Check("true or false", lambda v: v if isinstance(v, bool) else _refuse())


def one_of(*choices: Any) -> Check:
    """One of ``choices`` exactly."""
    return Check(f"one of {', '.join(map(str, choices))}", lambda v: v if v in choices else _refuse())


def text(*, optional: bool = False) -> Check:
    """A non-empty string."""
    check = Check("a non-empty string", lambda v: v if isinstance(v, str) and v else _refuse())
    return _optional(check) if optional else check


def mapping() -> Check:
    """A dict of JSON-ready values (free-form records such as an environment)."""
    return Check("a dict", lambda v: dict(v) if isinstance(v, Mapping) else _refuse())


def tuple_of(
    item: Check, *, min_len: int = 0, distinct: bool = False, from_text: Callable[[str], Any] | None = None
) -> Check:
    """A tuple (or list, as JSON gives it back) whose items each pass ``item``.

    With ``from_text``, comma-separated text (``"0.5,0.3"``, each piece read by ``from_text``) and a
    single item are accepted too, as CLI options give them.
    """
    many = f"{'a non-empty' if min_len else 'a'} tuple{' of distinct items' if distinct else ''}"

    def convert(v: Any) -> tuple:
        if from_text is not None and isinstance(v, str):
            v = [from_text(p.strip()) for p in v.split(",") if p.strip()]
        elif from_text is not None and not isinstance(v, (tuple, list)):
            v = (v,)
        if not isinstance(v, (tuple, list)) or len(v) < min_len:
            _refuse()
        out = tuple(item.apply("item", x) for x in v)
        if distinct and len(set(out)) != len(out):
            _refuse("items repeat")
        return out

    return Check(f"{many}, each {item.allowed}", convert, encode=lambda v: [_encode(x, item) for x in v])


def budget_or_text(*, optional: bool = False, kinds: tuple[str, ...] | None = None) -> Check:
    """A :class:`~slimformer.budget.Budget` or its text form (``"macs=0.5"``), saved as text."""

    def convert(v: Any):
        from slimformer.budget import Budget

        b = Budget.parse(v) if isinstance(v, str) else v
        if not isinstance(b, Budget):
            _refuse()
        if kinds is not None and b.kind not in kinds:
            _refuse(f"this method supports {', '.join(kinds)} budgets")
        return b

    allowed = "a Budget or its text form such as 'macs=0.5'"
    if kinds is not None:
        allowed += f" (kinds: {', '.join(kinds)})"
    check = Check(allowed, convert, encode=str)
    return _optional(check) if optional else check


def nested(cls: type[ConfigBase], *, optional: bool = False) -> Check:
    """A nested config, or its dict form (read with ``cls.from_dict``)."""

    def convert(v: Any):
        if isinstance(v, Mapping):
            return cls.from_dict(v)
        return v if isinstance(v, cls) else _refuse()

    check = Check(f"a {cls.__name__} or its dict form", convert)
    return _optional(check) if optional else check


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    check: Check | None = None,
    *,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A dataclass field with its help text (the CLI reuses it) and its check; no default: required.

    ``factory`` builds a fresh mutable default (a dict, a list) per instance.
    """
    metadata = {"help": help, "check": check}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _encode(value: Any, check: Check | None) -> Any:
    if value is not None and check is not None and check.encode is not None:
        return check.encode(value)
    if isinstance(value, ConfigBase):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_encode(x, None) for x in value]
    return value


def _require(cls: type, given: Mapping[str, Any]) -> None:
    """Refuse a dict that lacks a field without a default, naming it (instead of a ``TypeError``)."""
    for f in dataclasses.fields(cls):
        if f.name not in given and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"{cls.__name__}: field {f.name!r} is required ({f.metadata.get('help', '')})")


class ConfigBase:
    """Base of every slimformer config dataclass: checks on construction, ``to_dict`` / ``from_dict``.

    Subclasses are ``@dataclass(frozen=True, kw_only=True)``, declare each field with :func:`option`,
    and put rules that involve several fields in :meth:`_check`.
    """

    def __post_init__(self) -> None:
        name = type(self).__name__
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            check = f.metadata.get("check")
            if check is not None:
                object.__setattr__(self, f.name, check.apply(f"{name}.{f.name}", getattr(self, f.name)))
        self._check()

    def _check(self) -> None:
        """Rules that involve several fields (subclasses); raise ``ValueError`` via :meth:`_fail`."""

    def _fail(self, name: str, why: str) -> None:
        """Raise the standard error for field ``name``: ``Class.name=value: why`` (what is wrong, what is allowed)."""
        raise ValueError(f"{type(self).__name__}.{name}={getattr(self, name)!r}: {why}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (budgets as text, tuples as lists, nested configs as dicts)."""
        return {
            f.name: _encode(getattr(self, f.name), f.metadata.get("check"))
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
        }

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Inverse of :meth:`to_dict`; missing keys take their defaults.

        Raises:
            ValueError: ``data`` is not a mapping, has keys that are not fields (named, with the
                allowed ones), or a value a field's check refuses.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"{cls.__name__}: expected a mapping of field names to values, got {data!r}")
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(names))
        if unknown:
            allowed = f"allowed: {', '.join(names)}" if names else f"{cls.__name__} takes no fields"
            raise ValueError(f"{cls.__name__}: unknown field(s) {', '.join(map(str, unknown))}; {allowed}")
        _require(cls, data)
        return cls(**data)

    @classmethod
    def field_help(cls) -> dict[str, str]:
        """Each field's help text, by name (for CLI options)."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}  # type: ignore[arg-type]


def part(cls: type[ConfigBase], help: str, *, optional: bool = False) -> Any:
    """A field of a :class:`FlatConfig` holding another config (``None`` unless given, when ``optional``)."""
    metadata = {"help": help, "check": nested(cls, optional=optional), "part": cls, "optional": optional}
    if optional:
        return dataclasses.field(default=None, metadata=metadata)
    return dataclasses.field(default_factory=cls, metadata=metadata)


class FlatConfig(ConfigBase):
    """A config built from other configs (fields declared with :func:`part`), as one flat dict.

    The parts' fields appear at the top level of ``to_dict`` (their names must not collide); an
    optional part is ``None`` unless one of its fields is given to ``from_dict``.
    """

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if "part" in f.metadata:
                out.update(value.to_dict() if value is not None else {})
            else:
                out[f.name] = _encode(value, f.metadata.get("check"))
        return out

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        if not isinstance(data, Mapping):
            raise ValueError(f"{cls.__name__}: expected a mapping of field names to values, got {data!r}")
        data, kwargs, allowed = dict(data), {}, []
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            piece = f.metadata.get("part")
            if piece is None:
                allowed.append(f.name)
                if f.name in data:
                    kwargs[f.name] = data.pop(f.name)
                continue
            names = [g.name for g in dataclasses.fields(piece)]
            allowed += names
            given = {k: data.pop(k) for k in names if k in data}
            if given or not f.metadata.get("optional"):
                kwargs[f.name] = piece.from_dict(given)
        if data:
            raise ValueError(
                f"{cls.__name__}: unknown field(s) {', '.join(sorted(data))}; allowed: {', '.join(sorted(allowed))}"
            )
        _require(cls, kwargs)
        return cls(**kwargs)
