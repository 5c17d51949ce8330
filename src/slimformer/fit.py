"""``fit``: say the budget, get the most accurate model that meets it on this machine.

:func:`fit` searches the composition space that exists today: the dense model and one-shot pruning
(OPTIN by default) at several MACs fractions, plus, for latency budgets, the structures the
measured latency table predicts for the target (and looser multiples of it, which int8 runtimes
bring back under the target); each structure in every runtime variant (PyTorch fp32, PyTorch
dynamic int8, bf16 where the CPU has it, and for latency budgets onnxruntime fp32 / dynamic int8
through :func:`slimformer.onnx_export.export_onnx` and static int8 calibrated on train batches,
:mod:`slimformer.ort_static`, kept only where the clock finds it faster). Every candidate is timed
on this machine, all in the same interleaved rounds at the budget's batch size and length, and
scored on the VALIDATION split only. The choice is the most accurate candidate that meets the
budget (with ``max_drop``: the fastest within ``max_drop`` accuracy points of dense), which is then
evaluated once on TEST beside the dense model.

    result = fit(model, FitConfig(budget="latency=5ms,batch=1,seq=64"), task, tokenizer)
    save_fit(result, tokenizer, "out/")        # model/, fit.json, frontier.png

When nothing meets the budget, :class:`NoFit` is raised; it carries the full report, with the
closest candidate and by how much it missed.
"""

from __future__ import annotations

import logging
import shutil
import time
import weakref
from dataclasses import dataclass
from typing import Any

from slimformer.budget import Budget, format_value
from slimformer.config import (
    ConfigBase,
    budget_or_text,
    fraction,
    integer,
    non_negative,
    option,
    positive,
    text,
    tuple_of,
)

logger = logging.getLogger(__name__)

#: runtime variants a structure is tried in: name -> (runtime, precision)
VARIANTS: dict[str, tuple[str, str]] = {
    "torch-fp32": ("torch", "fp32"),
    "torch-int8": ("torch", "int8"),
    "torch-bf16": ("torch", "bf16"),
    "ort-fp32": ("onnxruntime", "fp32"),
    "ort-int8": ("onnxruntime", "int8"),
    "ort-int8s": ("onnxruntime", "int8-static"),
}


@dataclass(frozen=True, kw_only=True)
class FitConfig(ConfigBase):
    """What to fit and how widely to search."""

    budget: Budget = option(
        help="what the result must meet, e.g. latency=5ms,batch=1,seq=64, latency=0.25, memory=40MB, macs=0.5",
        check=budget_or_text(),
    )
    max_drop: float | None = option(
        None,
        "if set: pick the FASTEST candidate within this many accuracy points (validation) of dense",
        non_negative(optional=True),
    )
    method: str = option("optin", "one-shot pruning method of the candidates", text())
    budgets: tuple[float, ...] = option(
        (0.8, 0.6, 0.5, 0.4, 0.3),
        "MACs fractions of dense to prune candidates to",
        tuple_of(fraction(open_low=True), from_text=float),
    )
    latency_scales: tuple[float, ...] = option(
        (1.0, 2.0),
        "latency budgets: also prune to the latency table's prediction of target x each scale",
        tuple_of(positive(), min_len=0, from_text=float),
    )
    variants: tuple[str, ...] = option(
        tuple(VARIANTS),
        "runtimes per structure (bf16 where the CPU has it; onnxruntime for latency budgets; dense fp32 always)",
        tuple_of(text(), min_len=1, from_text=str),
    )
    calibration: int = option(1024, "calibration examples from the train split", integer(1))
    max_length: int = option(128, "truncation length for calibration and evaluation", integer(8))
    val_examples: int | None = option(
        None, "score candidates on only the first N validation examples (None: all)", integer(1, optional=True)
    )
    repeats: int = option(10, "timed calls per candidate (all interleaved)", integer(1))
    warmup: int = option(2, "untimed calls per candidate first", integer(0))
    seed: int = option(0, "calibration sample seed", integer(0))

    def _check(self) -> None:
        from slimformer.static.prune import METHODS

        if self.method not in METHODS:
            self._fail("method", f"unknown pruning method; available: {', '.join(METHODS)}")
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            self._fail("variants", f"unknown variant(s) {unknown}; available: {', '.join(VARIANTS)}")
        if self.budget.kind == "memory" and self.budget.dtype != "fp32":
            self._fail("budget", "fit checks each candidate's stored bytes; give memory=... without dtype")


class NoFit(ValueError):
    """No candidate met the budget (or none within ``max_drop``); ``report`` has every candidate.

    Attributes:
        report: the fit report (``choice`` is None, ``closest`` names the nearest candidate).
    """

    def __init__(self, message: str, report: dict[str, Any]):
        super().__init__(message)
        self.report = report


@dataclass
class FitResult:
    """The chosen model (an ``nn.Module`` or an :class:`~slimformer.onnx_runtime.OnnxModel`) and the report."""

    model: Any
    report: dict[str, Any]
    onnx_dir: Any = None  # the chosen ONNX model's export folder (files to save), else None


def fit(model, config: FitConfig, task, tokenizer, *, progress: bool = True) -> FitResult:
    """Search candidates, measure them, return the one that fits (see the module docstring).

    Args:
        model: a fine-tuned sequence classifier (left unchanged).
        config: the budget and the search settings.
        task: a :class:`slimformer.data.TaskData` with train, validation and test splits.
        tokenizer: the model's tokenizer.
        progress: show a progress bar with an estimate of the time left.

    Returns:
        :class:`FitResult`.

    Raises:
        NoFit: no candidate meets the budget (the report names the closest one).
        ValueError: bad inputs (labels that do not match, a length the model cannot take, ...).
    """
    from slimformer.bench import max_seq_len
    from slimformer.fit_search import Search

    if model.config.num_labels != task.num_labels:
        raise ValueError(f"the model has {model.config.num_labels} labels but task {task.name!r} has {task.num_labels}")
    longest = max_seq_len(model)
    if longest is not None and config.budget.seq_len > longest:
        raise ValueError(
            f"budget {config.budget}: seq={config.budget.seq_len} is longer than the model takes ({longest} tokens); "
            f"add ,seq=N with N <= {longest}"
        )
    start = time.perf_counter()
    search = Search(model, tokenizer, task, config, progress=progress)
    try:
        rows = search.run()
        report = _report(config, task, search, rows)
        chosen, reason = choose(rows, report["dense"]["val_accuracy"], config.max_drop)
        if chosen is None:
            report["choice"] = None
            report["closest"] = reason
            report["seconds"] = {"search": round(time.perf_counter() - start, 2)}
            search.cleanup(keep=None)
            raise NoFit(reason["message"], report)
        report["choice"] = {"key": chosen["key"], "reason": reason}
        report["seconds"] = {"search": round(time.perf_counter() - start, 2)}
        candidate = search.candidates[chosen["key"]]
        report["test"] = search.test_metrics(candidate)
        report["seconds"]["total"] = round(time.perf_counter() - start, 2)
        search.cleanup(keep=candidate)
    finally:
        search.close()
    logger.info("fit chose %s: %s", chosen["key"], reason)
    result = FitResult(model=candidate.model, report=report, onnx_dir=candidate.onnx_dir)
    if candidate.onnx_dir is not None:  # the chosen ONNX model runs from the work folder: keep it while used
        weakref.finalize(result, shutil.rmtree, search.work, True)
    return result


def _report(config: FitConfig, task, search, rows: list[dict]) -> dict[str, Any]:
    dense = rows[0]
    return {
        "config": config.to_dict(),
        "task": task.name,
        "budget": str(config.budget),
        "kind": config.budget.kind,
        "limit": search.limit,
        "limit_text": format_value(config.budget.kind, search.limit),
        "timing": {"batch_size": search.batch_size, "seq_len": search.seq_len, "repeats": config.repeats},
        "dense": {k: dense[k] for k in ("key", "val_accuracy", "latency_ms", "bytes", "macs", "params")},
        "candidates": rows,
        "skipped": search.skipped,
        "environment": search.environment,
    }


def choose(rows: list[dict], dense_accuracy: float, max_drop: float | None) -> tuple[dict | None, Any]:
    """The chosen row and why, or ``(None, closest)`` when nothing qualifies.

    Rows need ``key``, ``met`` (bool), ``val_accuracy``, ``latency_ms`` and ``ratio`` (measure / limit).
    Without ``max_drop``: the most accurate row that meets the budget (ties: the faster). With it:
    the fastest row that meets the budget and is at most ``max_drop`` points (of 100) below dense.
    ``closest`` is a dict with the nearest row's key, how far it missed and a message.
    """
    met = [r for r in rows if r["met"]]
    if not met:
        near = min(rows, key=lambda r: r["ratio"])
        return None, {
            "key": near["key"],
            "ratio": near["ratio"],
            "message": f"no candidate meets the budget: the closest, {near['key']}, "
            f"missed it by {100 * (near['ratio'] - 1):.1f}% ({near['measure_text']} against {near['limit_text']})",
        }
    if max_drop is None:
        best = max(met, key=lambda r: (r["val_accuracy"], -r["latency_ms"]))
        return best, f"most accurate of the {len(met)} candidates that meet the budget (validation accuracy)"
    floor = dense_accuracy - max_drop / 100
    within = [r for r in met if r["val_accuracy"] >= floor - 1e-12]
    if not within:
        near = max(met, key=lambda r: r["val_accuracy"])
        drop = 100 * (dense_accuracy - near["val_accuracy"])
        return None, {
            "key": near["key"],
            "drop": drop,
            "message": f"no candidate that meets the budget is within max_drop={max_drop:g} points of dense: "
            f"the most accurate one, {near['key']}, is {drop:.2f} points below dense on validation",
        }
    best = min(within, key=lambda r: (r["latency_ms"], -r["val_accuracy"]))
    return best, (
        f"fastest of the {len(within)} candidates that meet the budget within "
        f"max_drop={max_drop:g} points of dense ({100 * dense_accuracy:.2f}% on validation)"
    )
