"""Extract a plain pruned model for any budget from one slimming run, in seconds, with no training.

:func:`extract` ranks the units by their gates (:meth:`Gates.select`, importance per unit of the
budget's cost from the cost model), keeps the longest prefix of the ranking that fits, optionally
prunes the vocabulary to the task's tokens first (:mod:`slimformer.slim.vocab`), and removes
everything else with :func:`slimformer.surgery.apply_plan`. The gates are gone: the result saves
with :func:`slimformer.export.save_model` and loads with :func:`slimformer.models.load_model`.

A budget bounds the whole model (``of="model"``, the :class:`~slimformer.budget.Budget` meaning;
a relative budget is a fraction of the dense model with its full vocabulary) or only the encoder
layers (``of="encoder"``: embeddings and classifier are not counted). With ``of="encoder"`` and a
relative fp32 memory budget, the extracted units are exactly those trained at that fraction.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimformer.budget import Budget, InfeasibleBudget
from slimformer.cost import cost_of
from slimformer.slim.gates import SlimmedModel, unit_costs
from slimformer.structure import Structure
from slimformer.surgery import KeepPlan, apply_plan

logger = logging.getLogger(__name__)

SCOPES = ("model", "encoder")


@dataclass
class ExtractResult:
    """The extracted model (plain, eval mode), its tokenizer, the plan that made it and a JSON-ready report."""

    model: Any
    tokenizer: Any
    plan: KeepPlan
    report: dict

    def save(self, folder: str | Path, *, overwrite: bool = False) -> Path:
        """Save as an ordinary slimformer model folder (report in ``slimformer.json``)."""
        from slimformer.export import save_model

        return save_model(self.model, self.tokenizer, folder, overwrite=overwrite, extra={"slim_extract": self.report})


def extract(
    run_or_slimmed,
    budget: Budget | str,
    *,
    of: str = "model",
    prune_vocab: bool = False,
    vocab_texts: list[str] | None = None,
    min_count: int = 1,
    tokenizer=None,
) -> ExtractResult:
    """A pruned copy of the slimmed model that fits ``budget``.

    Args:
        run_or_slimmed: a run folder (see :mod:`slimformer.slim.run`) or a :class:`SlimmedModel`.
        budget: a memory, params or macs :class:`Budget` (or its text, e.g. ``"memory=40MB"``).
        of: ``"model"`` (the budget bounds the whole model) or ``"encoder"`` (only the layers).
        prune_vocab: keep only the tokens of the training texts (plus special tokens) first.
        vocab_texts: the texts whose tokens are kept (default: the run's task training split).
        min_count: keep tokens seen at least this many times.
        tokenizer: the tokenizer of an in-memory ``SlimmedModel`` (a run folder has its own).

    Returns:
        :class:`ExtractResult`; the input is not modified.

    Raises:
        InfeasibleBudget: even every head and neuron removed does not fit (the message says whether
            vocabulary pruning would help).
        ValueError: a latency budget, an unknown ``of``, or vocabulary pruning without texts.
    """
    t0 = time.perf_counter()
    if isinstance(run_or_slimmed, (str, Path)):
        from slimformer.slim.run import load_run

        slimmed, tokenizer = load_run(run_or_slimmed)
    elif isinstance(run_or_slimmed, SlimmedModel):
        slimmed = run_or_slimmed
    else:
        raise ValueError(f"expected a run folder or a SlimmedModel, got {type(run_or_slimmed).__name__}")
    budget = Budget.parse(budget) if isinstance(budget, str) else budget
    if of not in SCOPES:
        raise ValueError(f"of={of!r}: must be one of {', '.join(SCOPES)}")
    if budget.kind == "latency":
        raise ValueError(f"{budget}: extraction supports memory, params and macs budgets, not latency")
    t_load = time.perf_counter() - t0

    model = copy.deepcopy(slimmed.model).eval()
    dense = Structure.from_model(slimmed.model)
    vocab_report = None
    if prune_vocab:
        from slimformer.slim.vocab import kept_token_ids, prune_vocabulary

        if tokenizer is None:
            raise ValueError("vocabulary pruning needs the tokenizer of the slimmed model (tokenizer=...)")
        texts = vocab_texts if vocab_texts is not None else _task_texts(slimmed)
        keep = kept_token_ids(tokenizer, texts, min_count=min_count)
        model, tokenizer, vocab_report = prune_vocabulary(model, tokenizer, keep)
        vocab_report["min_count"] = min_count
    current = Structure.from_model(model)
    costs = unit_costs(current, budget)
    dense_cost = budget.measure(dense)
    if of == "model":
        limit = budget.limit_of(dense_cost)
        encoder_limit = limit - costs.rest
    else:
        encoder_limit = budget.limit_of(unit_costs(dense, budget).encoder)
        limit = encoder_limit + costs.rest
    if encoder_limit < 0:
        what = "(no encoder layer left) keeps the embeddings and classifier"
        if not prune_vocab and budget.kind in ("memory", "params"):
            what += "; vocabulary pruning (prune_vocab=True / --prune-vocab) shrinks the embeddings"
        raise InfeasibleBudget(budget, costs.rest, dense_cost, what)
    selection = slimmed.gates.select(encoder_limit, costs)
    neurons = slimmed.gates.neuron_mask(selection.groups)  # (L, F)
    plan = KeepPlan.from_masks(list(selection.heads), list(neurons), selection.layers.tolist())
    apply_plan(model, plan)
    structure = Structure.from_model(model)
    achieved = budget.measure(structure)
    if achieved > limit + 1e-6 * abs(limit):  # selection and cost model disagree: a bug, never an overshoot
        raise RuntimeError(f"extraction overshot {budget}: {achieved} > {limit}")
    seconds = time.perf_counter() - t0
    c, d = cost_of(structure, budget.seq_len), cost_of(dense, budget.seq_len)
    report = {
        "budget": str(budget),
        "of": of,
        "limit": limit,
        "achieved": achieved,
        "encoder_fraction": (achieved - costs.rest) / unit_costs(dense, budget).encoder,
        "params": c.params,
        "bytes_fp32": c.bytes_fp32,
        "macs": c.macs,
        "relative": {"params": c.params / d.params, "bytes_fp32": c.bytes_fp32 / d.bytes_fp32, "macs": c.macs / d.macs},
        "dense": {
            "params": d.params,
            "bytes_fp32": d.bytes_fp32,
            "macs": d.macs,
            "encoder_bytes_fp32": 4 * d.encoder_params,
        },
        "layers": [{"heads": s.heads, "ffn": s.ffn, "origin": s.origin} for s in structure.layers],
        "vocab": vocab_report,
        "seconds": {"total": round(seconds, 3), "load_run": round(t_load, 3)},
    }
    logger.info(
        "extracted %s (%s): %.1f%% of dense bytes in %.2fs", budget, of, 100 * report["relative"]["bytes_fp32"], seconds
    )
    return ExtractResult(model=model, tokenizer=tokenizer, plan=plan, report=report)


def _task_texts(slimmed: SlimmedModel) -> list[str]:
    """The training texts of the task the run was trained on (built-in task or file, by name)."""
    from slimformer.data import load_task

    name = (slimmed.info.get("task") or {}).get("name")
    if not name:
        raise ValueError("this run does not record a task name: pass vocab_texts=[...] (the task's training texts)")
    task = load_task(name)
    return [t for e in task.split("train") for t in (e.text, e.text_pair) if t]


def curve(
    run_or_slimmed,
    examples,
    fractions: list[float],
    *,
    tokenizer=None,
    of: str = "encoder",
    max_length: int = 128,
    batch_size: int = 64,
    progress: bool = True,
) -> list[dict]:
    """Test metrics of the models extracted at each memory fraction (one row per fraction).

    Raises:
        ValueError: an empty or out-of-range fraction list, or no examples.
    """
    from tqdm.auto import tqdm

    from slimformer.evaluate import evaluate

    if not fractions or not all(0 < f <= 1 for f in fractions):
        raise ValueError(f"fractions {fractions!r}: need at least one fraction in (0, 1]")
    if isinstance(run_or_slimmed, (str, Path)):
        from slimformer.slim.run import load_run

        run_or_slimmed, tokenizer = load_run(run_or_slimmed)
    rows = []
    for f in tqdm(fractions, desc="curve", disable=not progress):
        result = extract(
            run_or_slimmed, Budget(kind="memory", value=float(f), relative=True), of=of, tokenizer=tokenizer
        )
        metrics = evaluate(
            result.model, tokenizer, examples, max_length=max_length, batch_size=batch_size, progress=False
        )
        r = result.report
        rows.append(
            {
                "budget": f,
                "of": of,
                "accuracy": metrics["accuracy"],
                "f1_macro": metrics["f1_macro"],
                "params": r["params"],
                "bytes_fp32": r["bytes_fp32"],
                "encoder_fraction": r["encoder_fraction"],
                "extract_s": r["seconds"]["total"],
                "layers": r["layers"],
            }
        )
    return rows


def plot_curve(rows: list[dict], path: str | Path, *, dense_accuracy: float | None = None, title: str = "") -> Path:
    """Accuracy against the budget fraction, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [100 * r["budget"] for r in rows]
    ax.plot(xs, [100 * r["accuracy"] for r in rows], "o-", label="extracted")
    if dense_accuracy is not None:
        ax.axhline(100 * dense_accuracy, color="gray", linestyle="--", label="dense")
    ax.set_xlabel(f"budget (% of dense {rows[0]['of'] if rows else 'encoder'} memory)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.invert_xaxis()
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
