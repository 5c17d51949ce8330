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


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f}"


#: Columns of the main job's table: every model against dense, with its frontier marks.
DEMO_COLUMNS: tuple[tuple[str, str, Callable], ...] = (
    ("name", "model", str),
    ("accuracy", "test acc", "{:.4f}".format),
    ("bytes", "weights MB", _mb),
    ("params", "params", human),
    ("macs", "MACs/seq", human),
    ("latency_b1_ms", "ms @b1", "{:.2f}".format),
    ("speedup_b1", "x @b1", "{:.2f}".format),
    ("latency_b32_ms", "ms @b32", "{:.1f}".format),
    ("speedup_b32", "x @b32", "{:.2f}".format),
    ("frontier", "frontier", str),  # "*": on the accuracy-latency frontier, "†": accuracy-memory
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
