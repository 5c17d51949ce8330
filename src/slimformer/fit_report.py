"""What :func:`slimformer.fit.fit` leaves behind: the chosen model's folder, ``fit.json``, the frontier plot.

:func:`save_fit` writes all three; :func:`save_report` writes the report and the plot alone (when no
candidate fits); :func:`plot_fit` draws validation accuracy against measured latency, one marker
per runtime variant, the budget line for latency budgets and the choice ringed; :func:`summary` is
the text the CLI prints.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

REPORT_FILE = "fit.json"
PLOT_FILE = "frontier.png"
MODEL_DIR = "model"

_MARKERS = {"torch-fp32": "o", "torch-int8": "s", "torch-bf16": "D", "ort-fp32": "^", "ort-int8": "v", "ort-int8s": "P"}


def save_fit(result, tokenizer, folder: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``folder/model`` (the chosen model), ``folder/fit.json`` and ``folder/frontier.png``.

    Torch models are saved with :func:`slimformer.compose.save_result` (int8 and pruned folders load
    with :func:`slimformer.models.load_model`); an ONNX choice is its export folder (``model.onnx``,
    ``model.int8.onnx``, tokenizer), loaded with :func:`slimformer.onnx_runtime.load_onnx`.

    Raises:
        FileExistsError: ``folder`` is not empty and ``overwrite`` is False.
    """
    from slimformer.compose import save_result
    from slimformer.fsutil import staged_output_dir

    final = Path(folder)
    report = result.report
    # written into a hidden sibling, moved into place complete
    with staged_output_dir(final, overwrite=overwrite) as out:
        if result.onnx_dir is not None:
            shutil.copytree(result.onnx_dir, out / MODEL_DIR)
            precision = _choice_row(report)["precision"]
            flag = "static=True" if precision == "int8-static" else f"int8={precision == 'int8'}"
            load = f"slimformer.onnx_runtime.load_onnx(folder, {flag})"
        else:
            save_result(result.model, tokenizer, out / MODEL_DIR, extra={"fit": _choice_row(report)})
            load = "slimformer.models.load_model(folder)"
        report["saved"] = {"model": str(final / MODEL_DIR), "load_with": load}
        save_report(report, out, final=final)
    return final


def save_report(report: dict[str, Any], folder: str | Path, *, final: str | Path | None = None) -> Path:
    """Write ``fit.json`` and ``frontier.png`` into an existing ``folder``; return the report's path.

    ``final``: where ``folder`` will be once moved into place (the report names the plot there).
    """
    folder = Path(folder)
    plot_fit(report, folder / PLOT_FILE)
    report["plot"] = str(Path(final or folder) / PLOT_FILE)
    path = folder / REPORT_FILE
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return path


def _choice_row(report: dict[str, Any]) -> dict[str, Any] | None:
    key = (report.get("choice") or {}).get("key")
    return next((r for r in report["candidates"] if r["key"] == key), None)


def plot_fit(report: dict[str, Any], path: str | Path) -> Path:
    """PNG of validation accuracy against measured latency per candidate; budget line and choice marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from slimformer.pareto import pareto_front

    rows = report["candidates"]
    timing = report["timing"]
    fig, ax = plt.subplots(figsize=(6.8, 4.4), dpi=120)
    for variant, marker in _MARKERS.items():
        mine = [r for r in rows if r["variant"] == variant]
        if not mine:
            continue
        for met, fill in ((True, None), (False, "none")):
            ps = [r for r in mine if r["met"] is met]
            if ps:
                ax.scatter(
                    [r["latency_ms"] for r in ps], [r["val_accuracy"] for r in ps], marker=marker, zorder=3,
                    label=f"{variant}{'' if met else ' (misses budget)'}", facecolors=fill,
                    edgecolors="black" if fill else None, linewidths=0.6,
                )  # fmt: skip
    front = sorted((r for r, f in zip(rows, pareto_front(rows, "latency_ms", "val_accuracy"), strict=True) if f),
                   key=lambda r: r["latency_ms"])  # fmt: skip
    ax.step([r["latency_ms"] for r in front], [r["val_accuracy"] for r in front], where="post", color="gray", lw=0.8)
    if report["kind"] == "latency":
        ax.axvline(report["limit"], color="red", linestyle="--", linewidth=1, label=f"budget {report['limit_text']}")
    chosen = _choice_row(report)
    if chosen is not None:
        ax.scatter([chosen["latency_ms"]], [chosen["val_accuracy"]], s=160, facecolors="none", edgecolors="red",
                   linewidths=1.5, zorder=4, label="chosen")  # fmt: skip
    dense = rows[0]
    ax.axhline(dense["val_accuracy"], color="black", linewidth=0.6, alpha=0.5)
    ax.set_xlabel(f"measured latency at batch {timing['batch_size']} x {timing['seq_len']} tokens (ms)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"fit {report['budget']} on {report['task']}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=6)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def summary(report: dict[str, Any]) -> str:
    """Plain-text table of every candidate, then the choice (or the closest miss) and the test result."""
    from slimformer.budget import format_value

    kind = report["kind"]
    header = ["candidate", "val acc", "latency ms", "x dense", kind if kind != "latency" else "", "met"]
    lines = [f"fit {report['budget']} (limit {report['limit_text']}) on {report['task']}:"]
    cells = [header]
    for r in report["candidates"]:
        extra = format_value(kind, r["measure"]) if kind != "latency" else ""
        cells.append(
            [r["key"], f"{r['val_accuracy']:.4f}", f"{r['latency_ms']:.2f}", f"{r['speedup']:.2f}x", extra,
             "yes" if r["met"] else "no"]
        )  # fmt: skip
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    choice = report.get("choice")
    if choice is None:
        lines.append(f"NO FIT: {report['closest']['message']}")
        return "\n".join(lines)
    test = report["test"]
    lines.append(f"chosen: {choice['key']} ({choice['reason']})")
    lines.append(
        f"test accuracy: {test['chosen']['accuracy']:.4f} vs dense {test['dense']['accuracy']:.4f} "
        f"({test['drop_points']:+.2f} points drop); search took {report['seconds']['search']:.0f} s"
    )
    return "\n".join(lines)
