"""Settings of differentiable slimming: one frozen, validated config that round-trips through JSON."""

from __future__ import annotations

from dataclasses import dataclass

from slimformer.config import ConfigBase, fraction, integer, non_negative, one_of, option, positive, tuple_of

#: Importance methods of :mod:`slimformer.static` that can seed the gate ranking (plus "uniform").
INIT_METHODS = ("fisher", "optin", "magnitude", "uniform")


@dataclass(frozen=True, kw_only=True)
class SlimConfig(ConfigBase):
    """Hyper-parameters of :func:`slimformer.slim.slim`.

    Budgets are fractions of the *encoder's* memory (the layers' weights; embeddings and the
    classifier are handled by vocabulary pruning at extraction). Every step trains the network at
    one budget drawn uniformly from ``[min_budget, max_budget]``.
    """

    epochs: int = option(3, "passes over the training split", integer(1))
    lr: float = option(5e-5, "peak AdamW learning rate of the network weights", positive())
    gate_lr: float = option(
        3e-3, "Adam learning rate of the gate logits (0 freezes the initial ranking)", non_negative()
    )
    batch_size: int = option(32, "training examples per step", integer(1))
    max_length: int = option(64, "inputs are truncated to this many tokens", integer(2))
    warmup_ratio: float = option(0.06, "fraction of steps of linear LR warmup", fraction(open_high=True))
    weight_decay: float = option(0.01, "AdamW weight decay of weight matrices", non_negative())
    seed: int = option(0, "seed of shuffling, dropout and budget sampling", integer(0, 2**32 - 1))
    max_steps: int | None = option(None, "stop after this many steps (smoke runs)", integer(1, optional=True))
    group_size: int = option(64, "FFN neurons per gate (64 neurons weigh about one head in a BERT layer)", integer(1))
    min_budget: float = option(0.15, "smallest encoder-memory fraction sampled", fraction(open_low=True))
    max_budget: float = option(1.0, "largest encoder-memory fraction sampled", fraction(open_low=True))
    task_weight: float = option(1.0, "weight of the cross-entropy on the labels", non_negative())
    logit_weight: float = option(1.0, "weight of the KL to the dense teacher's logits", non_negative())
    hidden_weight: float = option(
        0.5, "weight of the normalised MSE to the teacher's per-layer hidden states", non_negative()
    )
    temperature: float = option(2.0, "softmax temperature of logit distillation", positive())
    budget_weight: float = option(1.0, "weight of (expected memory fraction - sampled budget)^2", non_negative())
    sparsity_weight: float = option(
        0.01, "weight of the sparsity prior: mean keep probability per byte", non_negative()
    )
    init: str = option(
        "fisher", f"importance that seeds the gate ranking: {', '.join(INIT_METHODS)}", one_of(*INIT_METHODS)
    )
    init_examples: int = option(512, "training examples scored for the initial ranking", integer(1))
    init_spread: float = option(2.0, "initial gate logits span [-spread, +spread] by importance rank", non_negative())
    eval_budgets: tuple[float, ...] = option(
        (1.0, 0.5, 0.3),
        "encoder-memory fractions evaluated on validation each epoch",
        tuple_of(fraction(open_low=True), min_len=1),
    )
    eval_batch_size: int = option(64, "examples per forward pass when evaluating", integer(1))

    def _check(self) -> None:
        if self.min_budget > self.max_budget:
            self._fail("min_budget", f"must be <= max_budget={self.max_budget!r}")
