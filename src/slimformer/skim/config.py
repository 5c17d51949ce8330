"""Token skimming's settings: one frozen dataclass, validated, round-tripping through JSON.

Importing this module is light (no torch), so the CLI can read the help texts from it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, kw_only=True)
class SkimConfig:
    """How :func:`slimformer.skim.skim` trains the skim predictors (and fine-tunes the model with them).

    The loss is ``(1 - distill) * cross-entropy + distill * KD + skim_weight * skim loss``, where
    the skim loss is the mean, over the skimmed layers and the batch, of the fraction of real
    (non-padding) tokens kept; KD is the temperature-scaled KL divergence to the dense model.
    """

    skim_weight: float = field(
        default=0.5,
        metadata={"help": "lambda: weight of the skim loss (mean kept-token fraction); larger skims more (>= 0)"},
    )
    predictor_hidden: int = field(
        default=64, metadata={"help": "hidden width of each skim predictor MLP (hidden -> this -> 2), >= 1"}
    )
    tau: float = field(default=1.0, metadata={"help": "Gumbel-softmax temperature of the training samples (> 0)"})
    init_keep_logit: float = field(
        default=2.0,
        metadata={"help": "initial keep-minus-skim logit of every predictor (2.0: 88% kept at the start)"},
    )
    distill: float = field(
        default=0.0,
        metadata={"help": "weight in [0, 1] of distillation from the dense model's logits (rest: cross-entropy)"},
    )
    temperature: float = field(default=2.0, metadata={"help": "distillation temperature (> 0)"})
    epochs: int = field(default=1, metadata={"help": "passes over the training data (>= 1)"})
    lr: float = field(default=2e-5, metadata={"help": "peak learning rate of the model's own weights (>= 0)"})
    predictor_lr: float = field(default=1e-3, metadata={"help": "peak learning rate of the skim predictors (> 0)"})
    batch_size: int = field(default=16, metadata={"help": "training examples per step (>= 1)"})
    max_length: int = field(default=128, metadata={"help": "inputs are truncated to this many tokens (>= 2)"})
    warmup_ratio: float = field(default=0.06, metadata={"help": "fraction of the steps of linear LR warmup, [0, 1)"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay of weight matrices (>= 0)"})
    freeze_embeddings: bool = field(default=True, metadata={"help": "keep the embedding weights fixed"})
    max_examples: int | None = field(
        default=None, metadata={"help": "train on a seeded random subset of this many examples (None: all)"}
    )
    max_steps: int | None = field(
        default=None, metadata={"help": "stop after this many optimizer steps (smoke runs); None: all epochs"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the subset, the batch order, the Gumbel noise (>= 0)"})

    def __post_init__(self) -> None:
        _number(self, "skim_weight", low=0.0)
        _number(self, "tau", low=0.0, open_low=True)
        _number(self, "init_keep_logit", low=-math.inf)
        _number(self, "distill", low=0.0, high=1.0)
        _number(self, "temperature", low=0.0, open_low=True)
        _number(self, "lr", low=0.0)
        _number(self, "predictor_lr", low=0.0, open_low=True)
        _number(self, "warmup_ratio", low=0.0, high=1.0, open_high=True)
        _number(self, "weight_decay", low=0.0)
        for name, low in (("predictor_hidden", 1), ("epochs", 1), ("batch_size", 1), ("max_length", 2), ("seed", 0)):
            _integer(self, name, low)
        for name in ("max_examples", "max_steps"):
            if getattr(self, name) is not None:
                _integer(self, name, 1, optional=True)
        if not isinstance(self.freeze_embeddings, bool):
            raise ValueError(f"SkimConfig.freeze_embeddings={self.freeze_embeddings!r}: must be true or false")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (JSON-serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SkimConfig:
        """Inverse of :meth:`to_dict`; missing keys take their defaults.

        Raises:
            ValueError: unknown keys (named, with the allowed ones) or an invalid value.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown SkimConfig field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
        return cls(**data)


def _number(
    config, name: str, *, low: float, high: float | None = None, open_low: bool = False, open_high: bool = False
) -> None:
    v = getattr(config, name)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    ok = ok and (v > low if open_low else v >= low)
    ok = ok and (high is None or (v < high if open_high else v <= high))
    if not ok:
        allowed = "a finite number"
        if low > -math.inf:
            allowed += f" {'>' if open_low else '>='} {low}"
        if high is not None:
            allowed += f" and {'<' if open_high else '<='} {high}"
        raise ValueError(f"SkimConfig.{name}={v!r} is not allowed: it must be {allowed}")
    object.__setattr__(config, name, float(v))  # lr=1 and lr=1.0 compare equal after a JSON round trip


def _integer(config, name: str, low: int, *, optional: bool = False) -> None:
    v = getattr(config, name)
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        allowed = f"{'None or ' if optional else ''}an integer >= {low}"
        raise ValueError(f"SkimConfig.{name}={v!r} is not allowed: it must be {allowed}")
