"""Pick an exit rule's threshold on validation data, without retraining.

One pass computes every exit's logits on the validation batches; each candidate rule is then
replayed on them with the same decision function inference uses (:func:`rule_step`), which gives
its accuracy, average exit layer, expected MACs and (optionally) predicted batch-1 latency. The
candidates are quantiles of the rule's own scores (entropy or confidence) or every patience
``1..L-1``. :func:`calibrate_rule` picks one for a target (see :class:`CalibrateConfig`) and sets it
on the model.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from slimformer.bench import time_callable
from slimformer.exits.config import CalibrateConfig, ExitRule
from slimformer.exits.model import MultiExitModel, exit_cost_table, rule_step

logger = logging.getLogger(__name__)


@dataclass
class CalibrationResult:
    """The chosen rule, and the report: reference (full depth), chosen point and the whole curve."""

    rule: ExitRule
    report: dict


@torch.inference_mode()
def collect_exits(model: MultiExitModel, batches: list, *, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Every exit's logits ``(N, L, C)`` and the labels ``(N,)`` over ``batches`` (in order)."""
    from tqdm.auto import tqdm

    if not batches:
        raise ValueError("calibration needs at least one batch of validation data")
    if any("labels" not in b for b in batches):
        raise ValueError("calibration needs labelled batches (a 'labels' entry in every batch)")
    was = model.training
    model.eval()
    out, labels = [], []
    for b in tqdm(batches, desc="exits", disable=not progress, leave=False):
        logits, _ = model.all_exits(b["input_ids"], b["attention_mask"], b.get("token_type_ids"))
        out.append(torch.stack([z.float() for z in logits], dim=1))  # (B, L, C)
        labels.append(b["labels"])
    model.train(was)
    return torch.cat(out), torch.cat(labels)


def simulate(rule: ExitRule, exit_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Replay ``rule`` on precomputed exits: the chosen logits ``(N, C)`` and exit layers ``(N,)`` (1..L)."""
    n, depth, _ = exit_logits.shape
    exit_layers = torch.full((n,), depth, dtype=torch.long)
    alive = torch.ones(n, dtype=torch.bool)
    state: dict = {}
    for i in range(depth - 1):
        done = rule_step(rule, exit_logits[:, i], state) & alive  # state covers every row; only live ones count
        exit_layers[done] = i + 1
        alive &= ~done
    chosen = exit_logits[torch.arange(n), exit_layers - 1]  # (N, C)
    return chosen, exit_layers


def candidates(kind: str, exit_logits: torch.Tensor, grid: int = 200) -> list[ExitRule]:
    """Candidate rules of one kind, from never exiting early to always exiting at layer 1."""
    depth = exit_logits.shape[1]
    if kind == "patience":
        return [ExitRule(kind="patience", patience=k) for k in range(depth - 1, 0, -1)]
    logp = torch.log_softmax(exit_logits[:, :-1].float(), dim=-1)  # (N, L-1, C)
    if kind == "confidence":
        scores = logp.max(-1).values.exp().flatten()
        qs = torch.quantile(scores, torch.linspace(1, 0, grid)).tolist()
        values = [1.0, *qs]
    elif kind == "entropy":
        scores = (-(logp.exp() * logp).sum(-1) / math.log(exit_logits.shape[-1])).flatten()
        qs = torch.quantile(scores, torch.linspace(0, 1, grid)).tolist()
        values = [0.0, *qs]
    else:
        raise ValueError(f"rule kind {kind!r}: must be entropy, confidence or patience")
    seen, out = set(), []
    for v in values:
        v = min(max(float(v), 0.0), 1.0)
        if v not in seen:
            seen.add(v)
            out.append(ExitRule(kind=kind, threshold=v))
    return out


def sweep(
    model: MultiExitModel,
    rules: list[ExitRule],
    exit_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    seq_len: int,
    depth_latency_ms: list[float] | None = None,
) -> list[dict]:
    """Accuracy, average exit layer, expected MACs (fraction of the wrapped classifier's) and,
    given per-depth latencies, predicted mean latency, for each rule."""
    table = exit_cost_table(model, seq_len)
    by_depth = torch.tensor(table["macs_by_depth"], dtype=torch.float64)
    rows = []
    for rule in rules:
        chosen, layers = simulate(rule, exit_logits)
        row = {
            "rule": rule.to_dict(),
            "label": str(rule),
            "accuracy": float((chosen.argmax(-1) == labels).float().mean()),
            "avg_exit_layer": float(layers.float().mean()),
            "exit_histogram": torch.bincount(layers - 1, minlength=exit_logits.shape[1]).tolist(),
            "macs": float(by_depth[layers - 1].mean()),
        }
        row["macs_rel"] = row["macs"] / table["dense_macs"]
        if depth_latency_ms is not None:
            lat = torch.tensor(depth_latency_ms, dtype=torch.float64)
            row["predicted_latency_ms"] = float(lat[layers - 1].mean())
        rows.append(row)
    return rows


@torch.inference_mode()
def depth_latency(model: MultiExitModel, inputs: list[dict], *, repeats: int = 5) -> list[float]:
    """Measured ms of one batch-1 call that leaves after ``k`` layers, ``k = 1..L`` (mean over ``inputs``)."""
    model.eval()
    ad, bb = model.adapter, model.backbone
    layers = ad.layers(bb)
    always = ExitRule(kind="confidence", threshold=0.0)  # evaluated like a real rule, every row leaves

    def run(x: dict, k: int):
        hidden = ad.embed(bb, x["input_ids"], x.get("token_type_ids"))
        mask = ad.layer_mask(bb, hidden, x["attention_mask"])
        for i in range(k):
            hidden = ad.run_layer(layers[i], hidden, mask)
            if i < len(model.exits):
                logits = model.exits[i](hidden, x["attention_mask"])
                done = rule_step(always if i == k - 1 else ExitRule(kind="none"), logits, {})
                bool(done.any())
        if k == len(layers):
            ad.classify(bb, hidden)

    out = []
    for k in range(1, len(layers) + 1):
        times = [time_callable(lambda x=x, k=k: run(x, k), warmup=1, repeats=repeats)["median_ms"] for x in inputs]
        out.append(sum(times) / len(times))
    return out


def choose(curve: list[dict], config: CalibrateConfig, *, reference_accuracy: float | None = None) -> dict:
    """The row of a :func:`sweep` curve (first row: the rule ``none``) that meets ``config``'s target.

    ``accuracy_loss``: the shallowest row within ``config.value`` of the reference accuracy (the
    first row's, or ``reference_accuracy``), else the first row; ``depth`` / ``latency``: the most
    accurate row within the bound.

    Raises:
        ValueError: a depth / latency bound that no row meets (naming the smallest achievable).
    """
    reference, options = curve[0], curve[1:]
    if config.target == "accuracy_loss":
        base = reference["accuracy"] if reference_accuracy is None else float(reference_accuracy)
        ok = [r for r in options if r["accuracy"] >= base - config.value - 1e-12]
        return min(ok, key=lambda r: (r["avg_exit_layer"], -r["accuracy"])) if ok else reference
    key = "avg_exit_layer" if config.target == "depth" else "predicted_latency_ms"
    ok = [r for r in options if r[key] <= config.value]
    if not ok:
        low = min(r[key] for r in options)
        raise ValueError(
            f"no {config.rule} threshold meets {config.target} <= {config.value:g}; "
            f"the smallest achievable on this data is {low:.4g}"
        )
    return max(ok, key=lambda r: (r["accuracy"], -r[key]))


def calibrate_rule(
    model: MultiExitModel,
    batches: list,
    config: CalibrateConfig,
    *,
    seq_len: int = 128,
    latency_inputs: list[dict] | None = None,
    reference_accuracy: float | None = None,
    progress: bool = True,
) -> CalibrationResult:
    """Choose the rule of ``config.rule``'s kind that meets ``config``'s target on ``batches``
    (validation data), and set it on ``model``.

    Args:
        model: a trained multi-exit model.
        batches: labelled validation batches (never test).
        config: rule kind and target.
        seq_len: tokens per sequence for the MACs in the report.
        latency_inputs: batch-1 inputs timed per depth (required for a latency target; their
            mean sets the prediction). Default for other targets: no latency prediction.
        reference_accuracy: an ``accuracy_loss`` target counts from this accuracy on ``batches``
            (e.g. the dense model's, when ``model`` is slender) instead of the model's own at full depth.
        progress: show a progress bar.

    Returns:
        :class:`CalibrationResult` (the model now carries ``result.rule``).

    Raises:
        ValueError: no batches, a latency target without ``latency_inputs``, or a depth / latency
            target that no threshold meets (the message gives the smallest achievable value).
    """
    if not isinstance(model, MultiExitModel):
        raise ValueError(f"calibrate needs a MultiExitModel, got {type(model).__name__}")
    if config.target == "latency" and not latency_inputs:
        raise ValueError("a latency target needs latency_inputs: batch-1 inputs to time each depth on")
    exit_logits, labels = collect_exits(model, batches, progress=progress)
    lat = depth_latency(model, latency_inputs) if latency_inputs else None
    rules = [ExitRule(kind="none"), *candidates(config.rule, exit_logits, config.grid)]
    curve = sweep(model, rules, exit_logits, labels, seq_len=seq_len, depth_latency_ms=lat)
    reference = curve[0]
    best = choose(curve, config, reference_accuracy=reference_accuracy)
    rule = ExitRule.from_dict(best["rule"])
    model.set_rule(rule)
    report = {
        "config": config.to_dict(),
        "examples": int(labels.numel()),
        "seq_len": seq_len,
        "reference": reference,
        "reference_accuracy": reference_accuracy,
        "chosen": best,
        "depth_latency_ms": lat,
        "curve": curve,
    }
    logger.info(
        "calibrated %s: validation accuracy %.4f (full depth %.4f), average exit layer %.2f of %d",
        rule, best["accuracy"], reference["accuracy"], best["avg_exit_layer"], model.num_layers,
    )  # fmt: skip
    return CalibrationResult(rule=rule, report=report)
