"""Results a person can read and a script can parse: tables (terminal, markdown) and JSON files."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path


def human(n: float) -> str:
    """12_345_678 -> '12.35M' (tables and prose; JSON keeps exact numbers)."""
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:g}"


#: (key, header, formatter) of the columns shown for each model row.
COLUMNS: tuple[tuple[str, str, Callable], ...] = (
    ("name", "model", str),
    ("params", "params", human),
    ("macs", "MACs/seq", human),
    ("seq_len", "seq len", str),
    ("accuracy", "test acc", "{:.4f}".format),
    ("f1_macro", "test F1", "{:.4f}".format),
    ("latency_b1_ms", "ms @b1", "{:.2f}".format),
    ("latency_b32_ms", "ms @b32", "{:.1f}".format),
    ("throughput_b32", "seq/s @b32", "{:.1f}".format),
)


def _cells(row: dict, columns=COLUMNS) -> list[str]:
    return ["-" if row.get(key) is None else fmt(row[key]) for key, _, fmt in columns]


def markdown_table(rows: Sequence[dict], columns=COLUMNS) -> str:
    """A GitHub-flavoured markdown table of ``rows``."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cells(r, columns)) + " |" for r in rows]
    return "\n".join(lines)


def rich_table(rows: Sequence[dict], title: str | None = None, columns=COLUMNS):
    """A ``rich.table.Table`` of ``rows`` for the terminal."""
    from rich.table import Table

    table = Table(title=title)
    for i, (_, header, _) in enumerate(columns):
        table.add_column(header, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*_cells(r, columns))
    return table


def write_json(path: str | Path, data) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def plot_accuracy_vs_macs(rows: Sequence[dict], path: str | Path, *, title: str = "") -> Path:
    """PNG of test accuracy against MACs per sequence; the first row is the dense reference."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    path = Path(path)
    dense, others = rows[0], rows[1:]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    ax.axhline(dense["accuracy"], color="grey", linestyle=":", linewidth=1)
    ax.scatter(
        [dense["macs"] / 1e6], [dense["accuracy"]], color="black", marker="*", s=120, label=dense["name"], zorder=3
    )
    groups: dict[str, list[dict]] = {}
    for r in others:
        groups.setdefault(r["name"].split(" ")[0], []).append(r)
    for method, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["macs"])
        ax.plot([r["macs"] / 1e6 for r in rs], [r["accuracy"] for r in rs], marker="o", label=method)
    ax.set_xlabel(f"MACs per sequence (millions, {dense['seq_len']} tokens)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
