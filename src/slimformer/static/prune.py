"""One verb for every one-shot pruning method: ``prune(model, OptinConfig(budget=...), calibration)``.

Each method is a frozen config dataclass registered with its importance scorer (torchao style:
the config's type picks the handler). The flow is the same for all of them::

    importance (scorer) -> KeepPlan under the Budget (select) -> surgery (apply_plan)
    -> optional least-squares repair of the output projections -> report

The input model is never modified: ``prune`` returns a physically smaller copy.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from slimformer.budget import Budget
from slimformer.config import ConfigBase, boolean, budget_or_text, integer, non_negative, option
from slimformer.static.importance import Batches, Importance
from slimformer.static.select import FFN_MULTIPLE, MIN_FFN, check_feasible

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class PruneConfig(ConfigBase):
    """Settings shared by every one-shot pruning method."""

    method: ClassVar[str] = ""
    budget: Budget = option(
        help="what the pruned model must fit, e.g. macs=0.5, params=12M, latency=8ms", check=budget_or_text()
    )
    repair: bool = option(True, "refit the kept units' output projections by least squares afterwards", boolean())
    seed: int = option(0, "seed of sampling inside the method (and of random scores)", integer(0))
    ffn_multiple: int = option(
        FFN_MULTIPLE,
        "round each layer's kept FFN width to a multiple of this (measured: odd widths are slow)",
        integer(1),
    )
    min_ffn: int = option(
        MIN_FFN, "a layer keeps 0 or at least this many FFN neurons (narrow FFNs are slow)", integer(0)
    )

    def scorer_options(self) -> dict[str, Any]:
        """The fields this method adds to :class:`PruneConfig` (passed to its scorer)."""
        base = {f.name for f in dataclasses.fields(PruneConfig)}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in base}

    def to_dict(self) -> dict[str, Any]:
        """The method's name, then every field (the budget as text)."""
        return {"method": self.method, **super().to_dict()}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> PruneConfig:
        """Build the config of ``data["method"]``; unknown methods or keys raise ``ValueError``."""
        data = dict(data)
        method = data.pop("method", None)
        if method not in METHODS:
            raise ValueError(f"unknown pruning method {method!r}; available: {', '.join(METHODS)}")
        return ConfigBase.from_dict.__func__(METHODS[method][0], data)


@dataclass(frozen=True, kw_only=True)
class OptinConfig(PruneConfig):
    """OPTIN (Khaki & Plataniotis, ICLR 2024): damage to logits and later layers' features."""

    method: ClassVar[str] = "optin"
    trajectory_weight: float = option(
        1.0, "weight of the later-layer feature distillation term next to the logit KL", non_negative()
    )
    head_examples: int | None = option(
        64, "calibration examples for the exact per-head masking scores (None = all)", integer(1, optional=True)
    )
    neuron_examples: int | None = option(
        None, "calibration examples for the neuron estimate (None = all)", integer(1, optional=True)
    )
    probes: int = option(1, "random projections per batch for the feature term of neurons", integer(1))


@dataclass(frozen=True, kw_only=True)
class FisherConfig(PruneConfig):
    """Empirical Fisher of the mask variables with the true labels (Kwon et al., NeurIPS 2022)."""

    method: ClassVar[str] = "fisher"


@dataclass(frozen=True, kw_only=True)
class MagnitudeConfig(PruneConfig):
    """Weight magnitude of each head's and neuron's projections (no data needed)."""

    method: ClassVar[str] = "magnitude"


@dataclass(frozen=True, kw_only=True)
class RandomConfig(PruneConfig):
    """Random scores: the floor every method must clear."""

    method: ClassVar[str] = "random"


Scorer = Callable[..., Importance]
#: method name -> (config class, "module:function" of its scorer). Tests iterate this registry.
METHODS: dict[str, tuple[type[PruneConfig], str]] = {}


def register(config_cls: type[PruneConfig], scorer: str) -> None:
    """Register a method: its config class and its scorer ``"module:function"`` (imported on use)."""
    if not config_cls.method:
        raise ValueError(f"{config_cls.__name__} has no method name")
    METHODS[config_cls.method] = (config_cls, scorer)


register(OptinConfig, "slimformer.static.optin:score_optin")
register(FisherConfig, "slimformer.static.fisher:score_fisher")
register(MagnitudeConfig, "slimformer.static.magnitude:score_magnitude")
register(RandomConfig, "slimformer.static.random_mask:score_random")


def _scorer(config: PruneConfig) -> Scorer:
    import importlib

    for cls, target in METHODS.values():
        if type(config) is cls:
            module, _, name = target.partition(":")
            return getattr(importlib.import_module(module), name)
    raise ValueError(f"{type(config).__name__} is not a registered pruning config; available: {', '.join(METHODS)}")


def score(model, config: PruneConfig, calibration: Batches, *, progress: bool = True) -> Importance:
    """Importance of every head and neuron of ``model`` by ``config``'s method (model unchanged)."""
    t0 = time.perf_counter()
    importance = _scorer(config)(model, calibration, seed=config.seed, progress=progress, **config.scorer_options())
    importance.info.setdefault("seconds", round(time.perf_counter() - t0, 3))
    return importance


@dataclass
class PruneResult:
    """The pruned model, the plan that made it, and a JSON-ready report."""

    model: Any
    plan: Any
    report: dict


def prune(
    model,
    config: PruneConfig,
    calibration: Batches,
    *,
    importance: Importance | None = None,
    latency_table=None,
    progress: bool = True,
) -> PruneResult:
    """Prune a copy of ``model`` to fit ``config.budget``; the input model is not modified.

    Args:
        model: a fine-tuned sequence classifier of a supported family.
        config: the method and its settings (e.g. ``OptinConfig(budget=Budget.parse("macs=0.5"))``).
        calibration: tokenized batches (see :func:`calibration_batches`); labels are needed by Fisher.
        importance: scores computed before with :func:`score` (reuse them across budgets).
        latency_table: a :class:`slimformer.latency.LatencyTable` for latency budgets (measured
            and cached on first use when omitted).
        progress: show progress bars.

    Returns:
        :class:`PruneResult` with the smaller model (weights physically removed), its
        :class:`~slimformer.surgery.KeepPlan` and the report (method, budget, achieved cost
        against dense, calibration size, time taken per phase, repair errors).

    Raises:
        slimformer.budget.InfeasibleBudget: the budget is below the smallest achievable model.
    """
    from slimformer.arch import get_adapter
    from slimformer.cost import cost_of
    from slimformer.static.repair import repair as refit
    from slimformer.static.select import select
    from slimformer.structure import Structure
    from slimformer.surgery import apply_plan

    t0 = time.perf_counter()
    dense_structure = Structure.from_model(model)
    if config.budget.kind == "latency" and latency_table is None:
        from slimformer.latency import measure_latency_table

        latency_table = measure_latency_table(
            model, batch_size=config.budget.batch_size, seq_len=config.budget.seq_len, progress=progress
        )  # cached under $SLIMFORMER_CACHE/latency after the first measurement
    check_feasible(dense_structure, config.budget, latency_table=latency_table)  # before the (slow) scoring
    reused = importance is not None
    if importance is None:
        importance = score(model, config, calibration, progress=progress)
    t_score = importance.info["seconds"]
    t1 = time.perf_counter()
    plan = select(
        dense_structure,
        importance,
        config.budget,
        latency_table=latency_table,
        ffn_multiple=config.ffn_multiple,
        min_ffn=config.min_ffn,
    )
    pruned = apply_plan(copy.deepcopy(model), plan)
    t_select = time.perf_counter() - t1
    repair_stats = None
    if config.repair:
        repair_stats = refit(pruned, model, calibration, progress=progress)
    structure = Structure.from_model(pruned)
    seq_len = config.budget.seq_len
    dense_cost, cost = cost_of(dense_structure, seq_len), cost_of(structure, seq_len)
    n_examples = sum(get_adapter(model).batch_rows(b) for b in calibration)
    report = {
        "method": config.method,
        "config": config.to_dict(),
        "budget": str(config.budget),
        "budget_limit": config.budget.limit(dense_structure, latency_table=latency_table),
        "achieved": config.budget.measure(structure, latency_table=latency_table),
        "seq_len": cost.seq_len,  # an image family's own token count
        "params": cost.params,
        "macs": cost.macs,
        "bytes_fp32": cost.bytes_fp32,
        "relative": {
            "params": cost.params / dense_cost.params,
            "macs": cost.macs / dense_cost.macs,
            "bytes_fp32": cost.bytes_fp32 / dense_cost.bytes_fp32,
        },
        "dense": {"params": dense_cost.params, "macs": dense_cost.macs, "bytes_fp32": dense_cost.bytes_fp32},
        "layers": [{"heads": s.heads, "ffn": s.ffn, "origin": s.origin} for s in structure.layers],
        "calibration_examples": n_examples,
        "seconds": {
            "score": round(t_score, 3),
            "select_and_surgery": round(t_select, 3),
            "repair": round(repair_stats["seconds"], 3) if repair_stats else 0.0,
            # end to end, as if the scores had been computed in this call
            "total": round(time.perf_counter() - t0 + (t_score if reused else 0.0), 3),
        },
        "importance_reused": reused,
        "importance_info": {k: v for k, v in importance.info.items() if isinstance(v, (int, float, str))},
        "repair": repair_stats,
    }
    logger.info(
        "%s pruned to %s: MACs %.1f%%, params %.1f%% of dense in %.1fs",
        config.method,
        config.budget,
        100 * report["relative"]["macs"],
        100 * report["relative"]["params"],
        report["seconds"]["total"],
    )
    return PruneResult(model=pruned.eval(), plan=plan, report=report)


def calibration_batches(
    examples, tokenizer, *, size: int = 1024, seed: int = 0, batch_size: int = 32, max_length: int = 128
) -> Batches:
    """A seeded random sample of ``size`` examples, tokenized into padded batches (with labels)."""
    from slimformer.batching import batches

    return batches(examples, tokenizer, size=size, seed=seed, batch_size=batch_size, max_length=max_length)
