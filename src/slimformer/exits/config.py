"""Settings of slenderized multi-exit models: frozen dataclasses, validated, round-tripping through dicts.

* :class:`ExitRule`: when a row leaves (entropy, confidence, patience, or never).
* :class:`ExitConfig`: joint training of the backbone and every exit, distilled from the dense model.
* :class:`SlenderConfig`: width reduction (heads and FFN neurons) under a :class:`~slimformer.budget.Budget`.
* :class:`CalibrateConfig`: which threshold to pick on validation data, and for what target.

This module imports no torch, so the CLI can read the help texts cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass

from slimformer.budget import Budget
from slimformer.config import (
    ConfigBase,
    boolean,
    budget_or_text,
    fraction,
    integer,
    non_negative,
    one_of,
    option,
    positive,
)

RULE_KINDS = ("none", "entropy", "confidence", "patience")
HEAD_KINDS = ("mean", "pooler", "linear")
SLENDER_METHODS = ("optin", "fisher")
TARGET_KINDS = ("accuracy_loss", "depth", "latency")


@dataclass(frozen=True, kw_only=True)
class ExitRule(ConfigBase):
    """When a row stops: checked after every layer but the last (the last exit always answers).

    * ``entropy``: the exit's softmax entropy, divided by ``log(num_labels)`` (so in [0, 1]), is at
      most ``threshold``.
    * ``confidence``: the exit's largest softmax probability is at least ``threshold``.
    * ``patience``: the last ``patience`` exits (this one included) agree on the class (PABEE).
    * ``none``: never exit early (the model runs every layer, like the plain classifier).
    """

    kind: str = option("entropy", "none, entropy, confidence or patience", one_of(*RULE_KINDS))
    threshold: float = option(
        0.0, "entropy: exit when normalised entropy <= this; confidence: when max p >= this", fraction()
    )
    patience: int = option(2, "patience: exit once this many exits in a row agree (>= 1)", integer(1))

    def __str__(self) -> str:
        if self.kind == "none":
            return "none"
        if self.kind == "patience":
            return f"patience={self.patience}"
        return f"{self.kind}={self.threshold:.4g}"


@dataclass(frozen=True, kw_only=True)
class ExitConfig(ConfigBase):
    """Joint training of the backbone and an exit classifier after every layer (:func:`early_exit`).

    The loss of exit ``i`` (1-based, of ``L``) is weighted by ``i`` (deeper exits weigh more):
    ``(1 - alpha) * CE(labels) + alpha * T^2 * KL(teacher's final logits || exit logits)``, plus
    ``hidden_weight`` times the per-layer hidden-state distillation (MSE to the teacher's layer
    output at the same depth, over real tokens, divided by the teacher's mean squared norm).
    """

    head: str = option(
        "mean",
        "exit head: mean (of the tokens) or pooler ([CLS]), each dense + tanh then linear; or linear ([CLS])",
        one_of(*HEAD_KINDS),
    )
    epochs: int = option(1, "passes over the training batches (>= 1)", integer(1))
    max_steps: int | None = option(None, "stop after this many steps (smoke runs)", integer(1, optional=True))
    lr: float = option(5e-5, "peak learning rate of the backbone (AdamW)", positive())
    head_lr: float = option(5e-4, "peak learning rate of the new exit heads", positive())
    warmup_ratio: float = option(0.06, "share of steps with a linear warmup, in [0, 1)", fraction(open_high=True))
    weight_decay: float = option(0.01, "AdamW weight decay (not on biases and norms)", non_negative())
    alpha: float = option(0.5, "weight of logit distillation next to the task loss, [0, 1]", fraction())
    temperature: float = option(2.0, "distillation temperature (> 0)", positive())
    hidden_weight: float = option(1.0, "weight of the layer-by-layer hidden-state distillation (>= 0)", non_negative())
    seed: int = option(0, "seed of batch order, dropout and head initialisation", integer(0))


@dataclass(frozen=True, kw_only=True)
class SlenderConfig(ConfigBase):
    """Width reduction that keeps every layer (:func:`slenderize`): heads and FFN neurons only.

    The hidden size is not reduced: every exit reads the same residual stream, and slicing it
    would change every LayerNorm's statistics (not an exact removal).
    """

    budget: Budget = option(
        help="what the slender model must fit, e.g. macs=0.4,seq=48 or params=15M", check=budget_or_text()
    )
    method: str = option("optin", "importance scores: optin or fisher", one_of(*SLENDER_METHODS))
    repair: bool = option(True, "least-squares refit of the kept units' output projections", boolean())
    seed: int = option(0, "seed of sampling inside the scorer", integer(0))


@dataclass(frozen=True, kw_only=True)
class CalibrateConfig(ConfigBase):
    """Pick an exit rule's threshold on validation data, without retraining (:func:`calibrate_rule`).

    Targets: ``accuracy_loss`` (at most this many accuracy points *as a fraction*, e.g. 0.01, below
    the full-depth model: the shallowest such threshold wins), ``depth`` (average exit layer at
    most this: the most accurate such threshold wins) or ``latency`` (predicted ms per example at
    batch 1 at most this, from per-depth timings measured on this machine: the most accurate wins).
    """

    rule: str = option("entropy", "entropy, confidence or patience", one_of(*RULE_KINDS[1:]))
    target: str = option("accuracy_loss", "accuracy_loss, depth or latency", one_of(*TARGET_KINDS))
    value: float = option(0.01, "the target's bound (fraction, layers, or ms)", non_negative())
    grid: int = option(200, "candidate thresholds (quantiles of the validation scores)", integer(2))

    def _check(self) -> None:
        if self.target != "accuracy_loss" and self.value <= 0:
            self._fail("value", f"a {self.target} target must be > 0")

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
