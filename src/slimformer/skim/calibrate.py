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

import logging
import math
import statistics
import time
from collections.abc import Iterable

import torch

from slimformer.skim.measure import skim_macs

logger = logging.getLogger(__name__)


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

    given = {name: v for name, v in (("keep", keep), ("macs", macs), ("latency_ms", latency_ms)) if v is not None}
    if len(given) != 1:
        raise ValueError(
            "give exactly one target: keep=<fraction of tokens>, macs=<fraction of dense MACs> or "
            f"latency_ms=<milliseconds per batch>; got {', '.join(given) or 'none'}"
        )
    ((metric, target),) = given.items()
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not math.isfinite(target):
        raise ValueError(f"{metric}={target!r}: must be a number")
    if metric == "latency_ms" and not target > 0:
        raise ValueError(f"latency_ms={target!r}: must be > 0 milliseconds")
    if metric != "latency_ms" and not 0.0 < target <= 1.0:
        raise ValueError(f"{metric}={target!r}: must be a fraction in (0, 1]")
    if not tolerance > 0 or max_iter < 1 or repeats < 1:
        raise ValueError(f"tolerance={tolerance!r} must be > 0, max_iter={max_iter!r} and repeats={repeats!r} >= 1")
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        batches = [{k: v.to(param.device) for k, v in b.items() if k != "labels"} for b in batches]
        if not batches:
            raise ValueError("no batches to calibrate on")
        if metric == "latency_ms":
            tol = max(tolerance, 0.02) * target

            def value(shift: float) -> float:
                return _median_ms(model, batches, shift, repeats)

        else:
            tol = tolerance
            firsts = [
                model.skim_first_layer(**b)
                for b in tqdm(batches, desc="calibrate: first layer", disable=not progress, leave=False)
            ]
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

        trials: list[list[float]] = []

        def trial(shift: float) -> float:
            v = value(shift)
            trials.append([shift, v])
            bar.update(1)
            bar.set_postfix(shift=f"{shift:.3f}", **{metric: f"{v:.4f}"})
            return v

        bar = tqdm(total=max_iter, desc="calibrate", disable=not progress, leave=False)
        # bracket from the model's shift outwards: value(lo) >= target >= value(hi). Trials that keep
        # fewer tokens are the cheap ones, so search upwards first when the start keeps too many.
        start, step = model.skim_shift if math.isfinite(model.skim_shift) else 0.0, 1.0
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
