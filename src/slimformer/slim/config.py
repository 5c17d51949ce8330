"""Settings of differentiable slimming: one frozen, validated config that round-trips through JSON."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

#: Importance methods of :mod:`slimformer.static` that can seed the gate ranking (plus "uniform").
INIT_METHODS = ("fisher", "optin", "magnitude", "uniform")


@dataclass(frozen=True, kw_only=True)
class SlimConfig:
    """Hyper-parameters of :func:`slimformer.slim.slim`.

    Budgets are fractions of the *encoder's* memory (the layers' weights; embeddings and the
    classifier are handled by vocabulary pruning at extraction). Every step trains the network at
    one budget drawn uniformly from ``[min_budget, max_budget]``.
    """

    epochs: int = field(default=3, metadata={"help": "passes over the training split"})
    lr: float = field(default=5e-5, metadata={"help": "peak AdamW learning rate of the network weights"})
    gate_lr: float = field(default=3e-3, metadata={"help": "Adam learning rate of the gate logits"})
    batch_size: int = field(default=32, metadata={"help": "training examples per step"})
    max_length: int = field(default=64, metadata={"help": "inputs are truncated to this many tokens"})
    warmup_ratio: float = field(default=0.06, metadata={"help": "fraction of steps of linear LR warmup"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay of weight matrices"})
    seed: int = field(default=0, metadata={"help": "seed of shuffling, dropout and budget sampling"})
    max_steps: int | None = field(default=None, metadata={"help": "stop after this many steps (smoke runs)"})
    group_size: int = field(
        default=64, metadata={"help": "FFN neurons per gate (64 neurons weigh about one head in a BERT layer)"}
    )
    min_budget: float = field(default=0.15, metadata={"help": "smallest encoder-memory fraction sampled"})
    max_budget: float = field(default=1.0, metadata={"help": "largest encoder-memory fraction sampled"})
    task_weight: float = field(default=1.0, metadata={"help": "weight of the cross-entropy on the labels"})
    logit_weight: float = field(default=1.0, metadata={"help": "weight of the KL to the dense teacher's logits"})
    hidden_weight: float = field(
        default=0.5, metadata={"help": "weight of the normalised MSE to the teacher's per-layer hidden states"}
    )
    temperature: float = field(default=2.0, metadata={"help": "softmax temperature of logit distillation"})
    budget_weight: float = field(
        default=1.0, metadata={"help": "weight of (expected memory fraction - sampled budget)^2"}
    )
    sparsity_weight: float = field(
        default=0.01, metadata={"help": "weight of the sparsity prior: mean keep probability per byte"}
    )
    init: str = field(
        default="fisher", metadata={"help": f"importance that seeds the gate ranking: {', '.join(INIT_METHODS)}"}
    )
    init_examples: int = field(default=512, metadata={"help": "training examples scored for the initial ranking"})
    init_spread: float = field(
        default=2.0, metadata={"help": "initial gate logits span [-spread, +spread] by importance rank"}
    )
    eval_budgets: tuple[float, ...] = field(
        default=(1.0, 0.5, 0.3), metadata={"help": "encoder-memory fractions evaluated on validation each epoch"}
    )
    eval_batch_size: int = field(default=64, metadata={"help": "examples per forward pass when evaluating"})

    def __post_init__(self) -> None:
        if isinstance(self.eval_budgets, list):
            object.__setattr__(self, "eval_budgets", tuple(self.eval_budgets))
        for f in fields(self):
            value = getattr(self, f.name)
            rule = _RULES.get(f.name)
            if rule is None:
                continue
            kind, ok, allowed = rule
            if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
                object.__setattr__(self, f.name, value)
            if value is None and kind == "optional int":
                continue
            typed = _is_int(value) if kind in ("int", "optional int") else _is_float(value)
            if not typed or not ok(value):
                raise ValueError(f"SlimConfig.{f.name}={value!r} is not allowed: it must be {allowed}")
        if self.min_budget > self.max_budget:
            raise ValueError(
                f"SlimConfig.min_budget={self.min_budget!r} is above max_budget={self.max_budget!r}: "
                "it must be <= max_budget"
            )
        if self.init not in INIT_METHODS:
            raise ValueError(
                f"SlimConfig.init={self.init!r} is not allowed: it must be one of {', '.join(INIT_METHODS)}"
            )
        if not self.eval_budgets or not all(_is_float(b) and 0 < b <= 1 for b in self.eval_budgets):
            raise ValueError(
                f"SlimConfig.eval_budgets={self.eval_budgets!r} is not allowed: it must be a non-empty "
                "tuple of fractions in (0, 1]"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (``eval_budgets`` as a list)."""
        out = asdict(self)
        out["eval_budgets"] = list(self.eval_budgets)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SlimConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown SlimConfig key(s): {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
        return cls(**data)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_float(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# field -> (type, check, what is allowed)
_RULES = {
    "epochs": ("int", lambda v: v >= 1, "an integer >= 1"),
    "lr": ("float", lambda v: v > 0, "a finite number > 0"),
    "gate_lr": ("float", lambda v: v >= 0, "a finite number >= 0 (0 freezes the initial ranking)"),
    "batch_size": ("int", lambda v: v >= 1, "an integer >= 1"),
    "max_length": ("int", lambda v: v >= 2, "an integer >= 2"),
    "warmup_ratio": ("float", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "weight_decay": ("float", lambda v: v >= 0, "a finite number >= 0"),
    "seed": ("int", lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)"),
    "max_steps": ("optional int", lambda v: v >= 1, "None or an integer >= 1"),
    "group_size": ("int", lambda v: v >= 1, "an integer >= 1"),
    "min_budget": ("float", lambda v: 0 < v <= 1, "a fraction in (0, 1]"),
    "max_budget": ("float", lambda v: 0 < v <= 1, "a fraction in (0, 1]"),
    "task_weight": ("float", lambda v: v >= 0, "a finite number >= 0"),
    "logit_weight": ("float", lambda v: v >= 0, "a finite number >= 0"),
    "hidden_weight": ("float", lambda v: v >= 0, "a finite number >= 0"),
    "temperature": ("float", lambda v: v > 0, "a finite number > 0"),
    "budget_weight": ("float", lambda v: v >= 0, "a finite number >= 0"),
    "sparsity_weight": ("float", lambda v: v >= 0, "a finite number >= 0"),
    "init_examples": ("int", lambda v: v >= 1, "an integer >= 1"),
    "init_spread": ("float", lambda v: v >= 0, "a finite number >= 0"),
    "eval_batch_size": ("int", lambda v: v >= 1, "an integer >= 1"),
}
