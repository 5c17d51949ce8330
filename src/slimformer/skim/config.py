"""Token skimming's settings: one frozen dataclass, validated, round-tripping through JSON.

Importing this module is light (no torch), so the CLI can read the help texts from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from slimformer.config import ConfigBase, boolean, fraction, integer, non_negative, number, option, positive


@dataclass(frozen=True, kw_only=True)
class SkimConfig(ConfigBase):
    """How :func:`slimformer.skim.skim` trains the skim predictors (and fine-tunes the model with them).

    The loss is ``(1 - distill) * cross-entropy + distill * KD + skim_weight * skim loss``, where
    the skim loss is the mean, over the skimmed layers and the batch, of the fraction of real
    (non-padding) tokens kept; KD is the temperature-scaled KL divergence to the dense model.
    """

    skim_weight: float = option(
        0.5, "lambda: weight of the skim loss (mean kept-token fraction); larger skims more (>= 0)", non_negative()
    )
    predictor_hidden: int = option(
        64, "hidden width of each skim predictor MLP (hidden -> this -> 2), >= 1", integer(1)
    )
    tau: float = option(1.0, "Gumbel-softmax temperature of the training samples (> 0)", positive())
    init_keep_logit: float = option(
        2.0, "initial keep-minus-skim logit of every predictor (2.0: 88% kept at the start)", number()
    )
    distill: float = option(
        0.0, "weight in [0, 1] of distillation from the dense model's logits (rest: cross-entropy)", fraction()
    )
    temperature: float = option(2.0, "distillation temperature (> 0)", positive())
    epochs: int = option(1, "passes over the training data (>= 1)", integer(1))
    lr: float = option(2e-5, "peak learning rate of the model's own weights (>= 0)", non_negative())
    predictor_lr: float = option(1e-3, "peak learning rate of the skim predictors (> 0)", positive())
    batch_size: int = option(16, "training examples per step (>= 1)", integer(1))
    max_length: int = option(128, "inputs are truncated to this many tokens (>= 2)", integer(2))
    warmup_ratio: float = option(0.06, "fraction of the steps of linear LR warmup, [0, 1)", fraction(open_high=True))
    weight_decay: float = option(0.01, "AdamW weight decay of weight matrices (>= 0)", non_negative())
    freeze_embeddings: bool = option(True, "keep the embedding weights fixed", boolean())
    max_examples: int | None = option(
        None, "train on a seeded random subset of this many examples (None: all)", integer(1, optional=True)
    )
    max_steps: int | None = option(
        None, "stop after this many optimizer steps (smoke runs); None: all epochs", integer(1, optional=True)
    )
    seed: int = option(0, "seed of the subset, the batch order, the Gumbel noise (>= 0)", integer(0))
