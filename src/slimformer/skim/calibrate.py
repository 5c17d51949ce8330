"""Trade accuracy for speed without retraining: calibrate the inference threshold shift.

A token is kept when its predictor's keep-minus-skim logit exceeds the shift, so raising the shift
keeps fewer tokens (monotonically: a token dropped earlier is never re-admitted). Calibration
bisects the shift on validation data until the mean kept fraction of the skimmed layers, the
MACs relative to the dense model (predictors included), or the measured wall clock per batch
reaches a target. For the first two the first layer, which sees every token whatever the shift, is
computed once and reused by every trial; a latency trial times the whole forward pass (first
layer, predictors and repacking included) on the given batches, so their batch size is the batch
size the target is for.
"""

from __future__ import annotations

import copy
import logging
import math
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from slimformer.config import ConfigBase, fraction, integer, option, positive
from slimformer.skim.measure import skim_macs

logger = logging.getLogger(__name__)

TARGETS = ("keep", "macs", "latency_ms")


@dataclass(frozen=True, kw_only=True)
class ShiftConfig(ConfigBase):
    """The target of :func:`calibrate`: exactly one of ``keep``, ``macs`` or ``latency_ms``."""

    keep: float | None = option(None, "mean kept fraction of tokens, in (0, 1]", fraction(open_low=True, optional=True))
    macs: float | None = option(
        None, "MACs relative to the dense model, in (0, 1]", fraction(open_low=True, optional=True)
    )
    latency_ms: float | None = option(
        None, "median milliseconds per batch on this machine (> 0)", positive(optional=True)
    )
    tolerance: float = option(0.005, "stop this close to the target (> 0)", positive())
    repeats: int = option(3, "latency only: timed passes per trial (>= 1)", integer(1))
    max_iter: int = option(24, "at most this many bisection steps (>= 1)", integer(1))

    def _check(self) -> None:
        given = [name for name in TARGETS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one target: keep=<fraction of tokens>, macs=<fraction of dense MACs> or "
                f"latency_ms=<milliseconds per batch>; got {', '.join(given) or 'none'}"
            )


@dataclass
class ShiftResult:
    """A calibrated copy of the skimming model and what was found (see :func:`calibrate_shift`)."""

    model: Any
    report: dict


def calibrate(model, config: ShiftConfig, batches: Iterable[dict], *, progress: bool = False) -> ShiftResult:
    """A copy of the skimming ``model`` whose threshold shift meets ``config``'s target on ``batches``.

    The input keeps its shift. ``report`` is :func:`calibrate_shift`'s dict plus ``config``.

    Raises:
        ValueError: ``config`` is not a :class:`ShiftConfig`, or no batches.
    """
    if not isinstance(config, ShiftConfig):
        raise ValueError(f"config={config!r}: must be a ShiftConfig")
    model = copy.deepcopy(model)
    found = calibrate_shift(model, batches, **config.to_dict(), progress=progress)
    return ShiftResult(model=model, report={"config": config.to_dict(), **found})


def calibrate_shift(
    model,
    batches: Iterable[dict],
    *,
    keep: float | None = None,
    macs: float | None = None,
    latency_ms: float | None = None,
    tolerance: float = 0.005,
    repeats: int = 3,
    max_iter: int = 24,
    progress: bool = False,
) -> dict:
    """Set ``model.skim_shift`` so skimming on ``batches`` meets a target; return what was found.

    Args:
        batches: validation batches (``input_ids``, ``attention_mask``, ...; labels are ignored).
        keep: target mean kept fraction of real tokens over the skimmed layers, in (0, 1].
        macs: or a target of MACs relative to the dense model (predictors counted), in (0, 1].
        latency_ms: or a target of wall-clock milliseconds per batch (median over ``batches``),
            measured on this machine at the batches' own batch size; > 0.
        tolerance: stop when the achieved value is this close to the target (for ``latency_ms``:
            this fraction of the target, and at least 0.02).
        repeats: latency only: timed passes over ``batches`` per trial (after one untimed pass).
        max_iter: at most this many bisection steps.

    Returns:
        ``{"shift", "target", "metric", "achieved", "trials": [[shift, value], ...]}``; the chosen
        shift is the trial closest to the target (for latency: of the trials within the tolerance
        the one keeping the most tokens, else the closest; a target below what skimming everything costs is reported by
        ``achieved`` staying above it).

    Raises:
        ValueError: not exactly one target, a fraction outside (0, 1] or a latency <= 0, or no batches.
    """
    from tqdm.auto import tqdm

    checked = ShiftConfig(
        keep=keep, macs=macs, latency_ms=latency_ms, tolerance=tolerance, repeats=repeats, max_iter=max_iter
    )
    metric = next(name for name in TARGETS if getattr(checked, name) is not None)
    target = getattr(checked, metric)
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        batches = [{k: v.to(param.device) for k, v in b.items() if k != "labels"} for b in batches]
        if not batches:
            raise ValueError("no batches to calibrate on")
        value = _objective(model, batches, metric, repeats=repeats, progress=progress)
        tol = max(tolerance, 0.02) * target if metric == "latency_ms" else tolerance
        trials: list[list[float]] = []
        bar = tqdm(total=max_iter, desc="calibrate", disable=not progress, leave=False)

        def trial(shift: float) -> float:
            v = value(shift)
            trials.append([shift, v])
            bar.update(1)
            bar.set_postfix(shift=f"{shift:.3f}", **{metric: f"{v:.4f}"})
            return v

        start = model.skim_shift if math.isfinite(model.skim_shift) else 0.0
        _bisect(trial, trials, start, target, tol, max_iter)
        bar.close()
    model.train(was_training)
    within = [sv for sv in trials if abs(sv[1] - target) <= tol]
    if metric == "latency_ms" and within:  # timings are noisy: of the trials that meet it, the one keeping most
        shift, achieved = min(within, key=lambda sv: sv[0])
    else:
        shift, achieved = min(trials, key=lambda sv: (abs(sv[1] - target), sv[0]))
    if math.isfinite(shift):
        model.skim_shift = shift
    logger.info("calibrated skim shift %.4f: %s %.4f (target %.4f)", shift, metric, achieved, target)
    return {"shift": shift, "target": target, "metric": metric, "achieved": achieved, "trials": trials}


def _objective(model, batches: list[dict], metric: str, *, repeats: int, progress: bool):
    """``shift -> achieved value`` of ``metric``; keep and MACs reuse one first-layer pass per batch."""
    from tqdm.auto import tqdm

    if metric == "latency_ms":
        return lambda shift: _median_ms(model, batches, shift, repeats)
    firsts = [
        model.skim_first_layer(**b)
        for b in tqdm(batches, desc="calibrate: first layer", disable=not progress, leave=False)
    ]
    dense = None
    if metric == "macs":
        from slimformer.skim.measure import dense_macs

        n_real = torch.cat([m.sum(1).cpu() for _, m in firsts])
        dense = float(dense_macs(model, n_real).sum())

    def value(shift: float) -> float:
        tokens = torch.cat([model.skim_rest(h, m, shift=shift).tokens.cpu() for h, m in firsts])  # (N, L)
        if metric == "keep":
            n_skimmed = tokens[:, :1].double().sum() * (tokens.shape[1] - 1)
            return float(tokens[:, 1:].double().sum() / n_skimmed)
        return float(skim_macs(model, tokens).sum()) / dense

    return value


def _bisect(trial, trials: list[list[float]], start: float, target: float, tol: float, max_iter: int) -> None:
    """Bracket the target from ``start`` outwards (value(lo) >= target >= value(hi)), then bisect.

    Trials that keep fewer tokens are the cheap ones, so it searches upwards first when the start
    keeps too many. Every trial lands in ``trials`` (``trial`` appends it).
    """
    step = 1.0
    if trial(start) > target:
        lo, hi = start, start + step
        while trial(hi) > target and step < 1024:
            lo, step = hi, 2 * step
            hi = start + step
    else:
        lo, hi = start - step, start
        while trial(lo) < target and step < 1024:
            hi, step = lo, 2 * step
            lo = start - step
    for _ in range(max_iter):
        if min(abs(v - target) for _, v in trials) <= tol or hi - lo < 1e-6:
            break
        mid = (lo + hi) / 2
        if trial(mid) > target:
            lo = mid
        else:
            hi = mid


def _median_ms(model, batches: list[dict], shift: float, repeats: int) -> float:
    """:func:`median_forward_ms` of a skimming model at ``shift`` (its own shift is restored)."""
    old = model.skim_shift
    model.skim_shift = shift
    try:
        return median_forward_ms(model, batches, repeats=repeats)
    finally:
        model.skim_shift = old


@torch.inference_mode()
def median_forward_ms(model, batches: list[dict], *, repeats: int) -> float:
    """Median wall-clock milliseconds of one forward pass per batch, over ``repeats`` passes after an
    untimed one (any classifier; ``labels`` are dropped)."""
    batches = [{k: v for k, v in b.items() if k != "labels"} for b in batches]
    times = []
    for r in range(repeats + 1):
        for b in batches:
            start = time.perf_counter()
            model(**b)
            if r > 0:
                times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)
