"""Settings of slenderized multi-exit models: frozen dataclasses, validated, round-tripping through dicts.

* :class:`ExitRule`: when a row leaves (entropy, confidence, patience, or never).
* :class:`ExitConfig`: joint training of the backbone and every exit, distilled from the dense model.
* :class:`SlenderConfig`: width reduction (heads and FFN neurons) under a :class:`~slimformer.budget.Budget`.
* :class:`CalibrateConfig`: which threshold to pick on validation data, and for what target.

This module imports no torch, so the CLI can read the help texts cheaply.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from slimformer.budget import Budget

RULE_KINDS = ("none", "entropy", "confidence", "patience")
HEAD_KINDS = ("mean", "pooler", "linear")
SLENDER_METHODS = ("optin", "fisher")
TARGET_KINDS = ("accuracy_loss", "depth", "latency")


def _num(obj, name: str, *, low: float | None = None, high: float | None = None, open_low: bool = False) -> None:
    v = getattr(obj, name)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if ok and low is not None:
        ok = v > low if open_low else v >= low
    if ok and high is not None:
        ok = v <= high
    if not ok:
        parts = [f"> {low}" if open_low else f">= {low}"] if low is not None else []
        parts += [f"<= {high}"] if high is not None else []
        raise ValueError(f"{name}={v!r}: must be a finite number{' ' + ' and '.join(parts) if parts else ''}")
    object.__setattr__(obj, name, float(v))


def _int(obj, name: str, low: int, *, optional: bool = False) -> None:
    v = getattr(obj, name)
    if optional and v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{name}={v!r}: must be an integer >= {low}{' or None' if optional else ''}")


def _from_dict(cls, data: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
    return cls(**data)


@dataclass(frozen=True, kw_only=True)
class ExitRule:
    """When a row stops: checked after every layer but the last (the last exit always answers).

    * ``entropy``: the exit's softmax entropy, divided by ``log(num_labels)`` (so in [0, 1]), is at
      most ``threshold``.
    * ``confidence``: the exit's largest softmax probability is at least ``threshold``.
    * ``patience``: the last ``patience`` exits (this one included) agree on the class (PABEE).
    * ``none``: never exit early (the model runs every layer, like the plain classifier).
    """

    kind: str = field(default="entropy", metadata={"help": "none, entropy, confidence or patience"})
    threshold: float = field(
        default=0.0, metadata={"help": "entropy: exit when normalised entropy <= this; confidence: when max p >= this"}
    )
    patience: int = field(default=2, metadata={"help": "patience: exit once this many exits in a row agree (>= 1)"})

    def __post_init__(self) -> None:
        if self.kind not in RULE_KINDS:
            raise ValueError(f"kind={self.kind!r}: must be one of {', '.join(RULE_KINDS)}")
        _num(self, "threshold", low=0.0, high=1.0)
        _int(self, "patience", 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExitRule:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        return _from_dict(cls, data)

    def __str__(self) -> str:
        if self.kind == "none":
            return "none"
        if self.kind == "patience":
            return f"patience={self.patience}"
        return f"{self.kind}={self.threshold:.4g}"


@dataclass(frozen=True, kw_only=True)
class ExitConfig:
    """Joint training of the backbone and an exit classifier after every layer (:func:`early_exit`).

    The loss of exit ``i`` (1-based, of ``L``) is weighted by ``i`` (deeper exits weigh more):
    ``(1 - alpha) * CE(labels) + alpha * T^2 * KL(teacher's final logits || exit logits)``, plus
    ``hidden_weight`` times the per-layer hidden-state distillation (MSE to the teacher's layer
    output at the same depth, over real tokens, divided by the teacher's mean squared norm).
    """

    head: str = field(
        default="mean",
        metadata={
            "help": "exit head: mean (of the tokens) or pooler ([CLS]), each dense + tanh then linear; "
            "or linear ([CLS])"
        },
    )
    epochs: int = field(default=1, metadata={"help": "passes over the training batches (>= 1)"})
    max_steps: int | None = field(default=None, metadata={"help": "stop after this many steps (smoke runs)"})
    lr: float = field(default=5e-5, metadata={"help": "peak learning rate of the backbone (AdamW)"})
    head_lr: float = field(default=5e-4, metadata={"help": "peak learning rate of the new exit heads"})
    warmup_ratio: float = field(default=0.06, metadata={"help": "share of steps with a linear warmup, in [0, 1)"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not on biases and norms)"})
    alpha: float = field(default=0.5, metadata={"help": "weight of logit distillation next to the task loss, [0, 1]"})
    temperature: float = field(default=2.0, metadata={"help": "distillation temperature (> 0)"})
    hidden_weight: float = field(
        default=1.0, metadata={"help": "weight of the layer-by-layer hidden-state distillation (>= 0)"}
    )
    seed: int = field(default=0, metadata={"help": "seed of batch order, dropout and head initialisation"})

    def __post_init__(self) -> None:
        if self.head not in HEAD_KINDS:
            raise ValueError(f"head={self.head!r}: must be one of {', '.join(HEAD_KINDS)}")
        _int(self, "epochs", 1)
        _int(self, "max_steps", 1, optional=True)
        _int(self, "seed", 0)
        _num(self, "lr", low=0.0, open_low=True)
        _num(self, "head_lr", low=0.0, open_low=True)
        _num(self, "weight_decay", low=0.0)
        _num(self, "alpha", low=0.0, high=1.0)
        _num(self, "temperature", low=0.0, open_low=True)
        _num(self, "hidden_weight", low=0.0)
        _num(self, "warmup_ratio", low=0.0)
        if self.warmup_ratio >= 1:
            raise ValueError(f"warmup_ratio={self.warmup_ratio!r}: must be in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExitConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        return _from_dict(cls, data)


@dataclass(frozen=True, kw_only=True)
class SlenderConfig:
    """Width reduction that keeps every layer (:func:`slenderize`): heads and FFN neurons only.

    The hidden size is not reduced: every exit reads the same residual stream, and slicing it
    would change every LayerNorm's statistics (not an exact removal).
    """

    budget: Budget = field(metadata={"help": "what the slender model must fit, e.g. macs=0.4,seq=48 or params=15M"})
    method: str = field(default="optin", metadata={"help": "importance scores: optin or fisher"})
    repair: bool = field(default=True, metadata={"help": "least-squares refit of the kept units' output projections"})
    seed: int = field(default=0, metadata={"help": "seed of sampling inside the scorer"})

    def __post_init__(self) -> None:
        if isinstance(self.budget, str):
            object.__setattr__(self, "budget", Budget.parse(self.budget))
        if not isinstance(self.budget, Budget):
            raise ValueError(f"budget={self.budget!r}: must be a Budget or its text form such as 'macs=0.5'")
        if self.method not in SLENDER_METHODS:
            raise ValueError(f"method={self.method!r}: must be one of {', '.join(SLENDER_METHODS)}")
        if not isinstance(self.repair, bool):
            raise ValueError(f"repair={self.repair!r}: must be true or false")
        _int(self, "seed", 0)

    def to_dict(self) -> dict[str, Any]:
        return {"budget": str(self.budget), "method": self.method, "repair": self.repair, "seed": self.seed}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SlenderConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        return _from_dict(cls, data)


@dataclass(frozen=True, kw_only=True)
class CalibrateConfig:
    """Pick an exit rule's threshold on validation data, without retraining (:func:`calibrate_rule`).

    Targets: ``accuracy_loss`` (at most this many accuracy points *as a fraction*, e.g. 0.01, below
    the full-depth model: the shallowest such threshold wins), ``depth`` (average exit layer at
    most this: the most accurate such threshold wins) or ``latency`` (predicted ms per example at
    batch 1 at most this, from per-depth timings measured on this machine: the most accurate wins).
    """

    rule: str = field(default="entropy", metadata={"help": "entropy, confidence or patience"})
    target: str = field(default="accuracy_loss", metadata={"help": "accuracy_loss, depth or latency"})
    value: float = field(default=0.01, metadata={"help": "the target's bound (fraction, layers, or ms)"})
    grid: int = field(default=200, metadata={"help": "candidate thresholds (quantiles of the validation scores)"})

    def __post_init__(self) -> None:
        if self.rule not in RULE_KINDS or self.rule == "none":
            raise ValueError(f"rule={self.rule!r}: must be one of entropy, confidence, patience")
        if self.target not in TARGET_KINDS:
            raise ValueError(f"target={self.target!r}: must be one of {', '.join(TARGET_KINDS)}")
        _num(self, "value", low=0.0)
        if self.target != "accuracy_loss" and self.value <= 0:
            raise ValueError(f"value={self.value!r}: a {self.target} target must be > 0")
        _int(self, "grid", 2)

    @classmethod
    def parse(cls, rule: str, target: str, **kwargs) -> CalibrateConfig:
        """From CLI text: ``target`` is ``accuracy_loss=0.01``, ``depth=3`` or ``latency=5ms``.

        Raises:
            ValueError: quoting the bad text and listing the accepted forms.
        """
        kind, sep, raw = (p.strip() for p in str(target).partition("="))
        kind = kind.replace("-", "_").lower()
        forms = "accepted: accuracy_loss=0.01 (a fraction), depth=3 (layers), latency=5ms (batch 1)"
        if not sep or kind not in TARGET_KINDS:
            raise ValueError(f"cannot parse target {target!r}; {forms}")
        raw = raw.lower().removesuffix("ms") if kind == "latency" else raw
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"cannot parse target {target!r}: bad number {raw!r}; {forms}") from None
        return cls(rule=rule, target=kind, value=value, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
