"""Trade accuracy for speed without retraining: calibrate the inference threshold shift.

A token is kept when its predictor's keep-minus-skim logit exceeds the shift, so raising the shift
keeps fewer tokens (monotonically: a token dropped earlier is never re-admitted). Calibration
bisects the shift on validation data until the mean kept fraction of the skimmed layers (or the
MACs relative to the dense model, predictors included) reaches a target. The first layer sees
every token whatever the shift, so its output is computed once and reused by every trial.
"""

from __future__ import annotations

import logging
import math
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
    tolerance: float = 0.005,
    max_iter: int = 24,
    progress: bool = False,
) -> dict:
    """Set ``model.skim_shift`` so skimming on ``batches`` meets a target; return what was found.

    Args:
        batches: validation batches (``input_ids``, ``attention_mask``, ...; labels are ignored).
        keep: target mean kept fraction of real tokens over the skimmed layers, in (0, 1].
        macs: or a target of MACs relative to the dense model (predictors counted), in (0, 1].
        tolerance: stop when the achieved value is this close to the target.
        max_iter: at most this many bisection steps.

    Returns:
        ``{"shift", "target", "metric", "achieved", "trials": [[shift, value], ...]}``; the chosen
        shift is the trial closest to the target.

    Raises:
        ValueError: not exactly one target, a target outside (0, 1], or no batches.
    """
    from tqdm.auto import tqdm

    if (keep is None) == (macs is None):
        raise ValueError("give exactly one target: keep=<fraction of tokens> or macs=<fraction of dense MACs>")
    metric, target = ("keep", keep) if keep is not None else ("macs", macs)
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.0 < target <= 1.0:
        raise ValueError(f"{metric}={target!r}: must be a fraction in (0, 1]")
    if not tolerance > 0 or max_iter < 1:
        raise ValueError(f"tolerance={tolerance!r} must be > 0 and max_iter={max_iter!r} >= 1")
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        firsts = []
        for batch in tqdm(list(batches), desc="calibrate: first layer", disable=not progress, leave=False):
            inputs = {k: v.to(param.device) for k, v in batch.items() if k != "labels"}
            firsts.append(model.skim_first_layer(**inputs))
        if not firsts:
            raise ValueError("no batches to calibrate on")
        dense = None
        if metric == "macs":
            from slimformer.skim.measure import dense_macs

            n_real = torch.cat([m.sum(1).cpu() for _, m in firsts])
            dense = float(dense_macs(model, n_real).sum())

        def value(shift: float) -> float:
            tokens = torch.cat([model.skim_rest(h, m, shift=shift).tokens.cpu() for h, m in firsts])  # (N, L)
            if metric == "keep":
                return float(tokens[:, 1:].double().sum() / (tokens[:, :1].double().sum() * (tokens.shape[1] - 1)))
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
            if min(abs(v - target) for _, v in trials) <= tolerance or hi - lo < 1e-6:
                break
            mid = (lo + hi) / 2
            if trial(mid) > target:
                lo = mid
            else:
                hi = mid
        bar.close()
    model.train(was_training)
    shift, achieved = min(trials, key=lambda sv: (abs(sv[1] - target), sv[0]))
    if math.isfinite(shift):
        model.skim_shift = shift
    logger.info("calibrated skim shift %.4f: %s %.4f (target %.4f)", shift, metric, achieved, target)
    return {"shift": shift, "target": target, "metric": metric, "achieved": achieved, "trials": trials}
