"""The main job's headline: ``fit``'s choice beside dense and beside the outside peer.

:func:`add_fit_points` runs :func:`slimformer.fit.fit` on the fine-tuned model (its budget at batch
1 and the run's length unless the budget names them), saves its result under ``fit/`` and adds two
points to the demo's sweep: fit's choice (test accuracy, evaluated once by fit) and the peer of
:mod:`slimformer.ort_peer` (dense -> onnxruntime optimizer -> dynamic int8, evaluated on test).
The demo then times them with every other model in the same interleaved rounds, and
:func:`headline` reads the three rows back with the ratios the report leads with.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PEER_NAME = "peer: dense ORT optimizer + int8"
FIT_DIR = "fit"
PEER_DIR = "peer"


def fit_budget_text(budget: str, seq_len: int) -> str:
    """``budget`` with ``seq=seq_len`` (and for latency ``batch=1``) added when it does not name them."""
    from slimformer.budget import Budget

    parsed = Budget.parse(budget)
    fields = {part.split("=", 1)[0].strip() for part in budget.split(",")}
    text = budget
    if not fields & {"seq", "seq_len"}:  # every kind: fit times and scores at this length
        text += f",seq={seq_len}"
    if parsed.kind == "latency" and not fields & {"batch", "batch_size"}:
        text += ",batch=1"
    return text


def add_fit_points(
    config, model, tokenizer, task, *, seq_len: int, max_length: int, points: list, models: dict, out: Path,
    progress: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Run fit and build the peer; append their points and models; return the headline's facts.

    When no candidate fits, the facts say why (``choice`` None) and only the peer is added.
    """
    from slimformer.fit import FitConfig, NoFit, fit
    from slimformer.fit_report import save_fit, save_report

    budget = fit_budget_text(config.fit, seq_len)
    fit_config = FitConfig(
        budget=budget, max_drop=config.fit_max_drop, budgets=config.fit_budgets, calibration=config.fit_calibration,
        max_length=max_length, val_examples=config.fit_val_examples, seed=0,
    )  # fmt: skip
    facts: dict[str, Any] = {"budget": budget, "max_drop": config.fit_max_drop, "folder": str(out / FIT_DIR)}
    dense = points[0]
    try:
        result = fit(model, fit_config, task, tokenizer, progress=progress)
    except NoFit as exc:
        (out / FIT_DIR).mkdir()
        save_report(exc.report, out / FIT_DIR)
        facts.update(choice=None, message=str(exc), search_s=exc.report["seconds"]["search"])
        logger.warning("fit found no model: %s", exc)
    else:
        report = result.report
        save_fit(result, tokenizer, out / FIT_DIR)
        chosen = next(r for r in report["candidates"] if r["key"] == report["choice"]["key"])
        key = f"fit: {chosen['key']}"
        fitted = result.model
        if not hasattr(fitted, "training"):  # an OnnxModel: bench_models reads the config for its inputs
            fitted.config = model.config
        points.append(
            {"key": key, "name": key, "method": "fit", "budget": chosen["budget"],
             "accuracy": report["test"]["chosen"]["accuracy"], "params": chosen["params"], "macs": chosen["macs"],
             "bytes": chosen["bytes"], "seconds": report["seconds"]["search"]}
        )  # fmt: skip
        models[key] = fitted
        facts.update(
            choice=chosen["key"], key=key, reason=report["choice"]["reason"], search_s=report["seconds"]["search"],
            val_accuracy={"chosen": chosen["val_accuracy"], "dense": report["dense"]["val_accuracy"]},
            candidates=len(report["candidates"]), result=result,
        )  # fmt: skip
    facts["peer"] = _add_peer(model, tokenizer, task, dense, max_length, points, models, out / PEER_DIR)
    return facts


def _add_peer(model, tokenizer, task, dense: dict, max_length: int, points, models, folder: Path) -> dict:
    from slimformer.ort_peer import build_peer

    texts = [e.text for e in task.split("validation")[:32]]
    peer, info = build_peer(model, tokenizer, folder, texts=texts, max_length=max_length)
    metrics = peer.evaluate(tokenizer, task.split("test"), num_labels=task.num_labels, max_length=max_length)
    points.append(
        {"key": PEER_NAME, "name": PEER_NAME, "method": "peer", "budget": 1.0, "accuracy": metrics["accuracy"],
         "params": dense["params"], "macs": dense["macs"], "bytes": info["bytes"]["int8"], "seconds": 0.0}
    )  # fmt: skip
    models[PEER_NAME] = peer
    return info


def headline(facts: dict[str, Any], rows: list[dict]) -> dict[str, Any]:
    """The report's headline: dense, fit's choice and the peer rows (timed together) and their ratios."""
    by_name = {r["name"]: r for r in rows}
    out = {k: v for k, v in facts.items() if k != "result"}
    dense, peer = rows[0], by_name[PEER_NAME]
    out["rows"] = [dense] + ([by_name[facts["key"]]] if facts.get("choice") else []) + [peer]
    if not facts.get("choice"):
        return out
    chosen = by_name[facts["key"]]
    batches = sorted(int(k[len("latency_b") : -len("_ms")]) for k in chosen if _is_latency(k))
    out["fit_vs_peer"] = {f"b{b}": peer[f"latency_b{b}_ms"] / chosen[f"latency_b{b}_ms"] for b in batches}
    out["fit_vs_dense"] = {f"b{b}": dense[f"latency_b{b}_ms"] / chosen[f"latency_b{b}_ms"] for b in batches}
    out["drop_points"] = {
        "fit": 100 * (dense["accuracy"] - chosen["accuracy"]),
        "peer": 100 * (dense["accuracy"] - peer["accuracy"]),
    }
    out["fit_at_least_as_accurate_as_peer"] = chosen["accuracy"] >= peer["accuracy"]
    return out


def _is_latency(key: str) -> bool:
    return key.startswith("latency_b") and key.endswith("_ms") and "iqr" not in key


def headline_markdown(head: dict[str, Any]) -> list[str]:
    """The report.md lines of the headline (a short table, then the ratios in words)."""
    from slimformer.report import DEMO_COLUMNS, markdown_table

    md = ["## Headline: `fit` beside dense and the peer", ""]
    if not head.get("choice"):
        md += [f"`fit {head['budget']}` found no model: {head['message']}", ""]
    md += [markdown_table(head["rows"], DEMO_COLUMNS[:-1]), ""]
    if head.get("choice"):
        ratios = ", ".join(f"{v:.2f}x @{b}" for b, v in head["fit_vs_peer"].items())
        md.append(
            f"`fit {head['budget']}` with max_drop={head['max_drop']} chose `{head['choice']}` ({head['reason']}; "
            f"{head['candidates']} candidates, search {head['search_s']:.0f} s). On test it is "
            f"{_below(head['drop_points']['fit'])} dense (peer {_below(head['drop_points']['peer'])}); "
            f"fit vs peer: {ratios}. Model, fit.json and frontier.png: `{head['folder']}`."
        )
        md.append("")
    md += [
        f"The peer is what onnxruntime / Optimum users get on the dense model: {head['peer']['what']}; "
        f"fused {head['peer']['fused_operators']}, fp32 max |logit diff| vs PyTorch "
        f"{head['peer']['verification']['fp32']['max_abs_diff']:.2g}.",
        "",
    ]
    return md


def _below(drop: float) -> str:
    """A drop in accuracy points as words: ``1.02 points below`` / ``0.30 points above``."""
    return f"{drop:.2f} points below" if drop >= 0 else f"{-drop:.2f} points above"
