"""Reading a user's own labelled files: strict CSV / TSV / JSON lines, and label encoding.

Strict means nothing is guessed silently: a row with more or fewer fields than the header (an
unquoted comma in a text, a missing tab) is an error naming the file and line, duplicate column
names are refused, and labels stay text (``01`` and ``1`` are different labels).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

# Extensions read as user files; the value is the CSV delimiter (None: JSON lines).
FORMATS: dict[str, str | None] = {".csv": ",", ".tsv": "\t", ".jsonl": None, ".json": None}
#: File stems a task folder may hold, per split (``train.csv``, ``dev.tsv``, ...).
SPLIT_STEMS: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test",),
}
_INT_RE = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class Row:
    """A row read from a file or hub dataset before its label is mapped to an index."""

    where: str  # "<file>: line N", so every error can point at the offending row
    text: str
    pair: str | None
    label: str


class Columns(NamedTuple):
    text: str
    pair: str | None
    label: str


def read_rows(path: Path, cols: Columns) -> list[Row]:
    """Read every row of a ``.csv`` / ``.tsv`` / ``.jsonl`` file.

    Raises:
        ValueError: a folder, an unknown extension, not UTF-8, a missing or duplicate column,
            a ragged row, an empty text or label, or no rows at all; each names file and line.
    """
    if not path.is_file():
        raise ValueError(f"{path} is a folder; give one {'/'.join(FORMATS)} file")
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(FORMATS)}")
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:  # utf-8-sig: tolerate Excel's BOM
            delimiter = FORMATS[suffix]
            rows = _read_delimited(path, f, delimiter, cols) if delimiter else _read_json(path, f, cols)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e}); save it as UTF-8") from None
    if not rows:
        raise ValueError(f"{path}: no examples (the file is empty or has only a header)")
    return rows


def find_split_files(folder: Path) -> dict[str, Path]:
    """The ``train`` / ``validation`` / ``test`` files of a task folder (``train.csv``, ``dev.tsv``...).

    Raises:
        ValueError: no train file, or two files for one split.
    """
    found: dict[str, Path] = {}
    for split, stems in SPLIT_STEMS.items():
        hits = sorted(p for p in folder.iterdir() if p.stem.lower() in stems and p.suffix.lower() in FORMATS)
        if len(hits) > 1:
            raise ValueError(f"{folder}: several {split} files ({', '.join(p.name for p in hits)}); keep one")
        if hits:
            found[split] = hits[0]
    if "train" not in found:
        names = ", ".join(f"{s}{'/'.join(FORMATS)}" for s in ("train.", "validation.", "test."))
        raise ValueError(f"{folder} is a folder without a train file; a task folder holds {names}")
    return found


def _read_delimited(path: Path, f, delimiter: str, cols: Columns) -> list[Row]:
    # TSV files (GLUE style) use no quoting and often hold bare '"' characters inside the text.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(f, delimiter=delimiter, quoting=quoting, strict=True)
    try:
        header = next((r for r in reader if r), None)
        if header is None:
            return []
        header = [h.strip() for h in header]
        dupes = sorted({h for h in header if header.count(h) > 1})
        if dupes:
            raise ValueError(f"{path}: line {reader.line_num}: duplicate column name(s) {', '.join(map(repr, dupes))}")
        missing = [c for c in cols if c and c not in header]
        if missing:
            raise ValueError(f"{path}: no column {missing[0]!r}; the columns are: {', '.join(header)}")
        rows = []
        for fields in reader:
            if not fields or fields == [""]:  # a blank line
                continue
            where = f"{path}: line {reader.line_num}"
            if len(fields) != len(header):
                hint = " (an unquoted delimiter inside a text? quote the field)" if len(fields) > len(header) else ""
                raise ValueError(f"{where}: {len(fields)} fields but the header has {len(header)}{hint}")
            rows.append(make_row(where, dict(zip(header, fields, strict=True)), cols))
        return rows
    except csv.Error as e:
        raise ValueError(f"{path}: line {reader.line_num}: malformed row ({e})") from None


def _read_json(path: Path, f, cols: Columns) -> list[Row]:
    items = []
    for n, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            items.append((f"{path}: line {n}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {n}: invalid JSON ({e.msg}): {line.strip()[:80]!r}") from None
    rows = []
    for where, rec in items:
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected a JSON object, got {rec!r:.80}")
        missing = [c for c in cols if c and c not in rec]
        if missing:
            raise ValueError(f"{where}: no column {missing[0]!r}; the columns are: {', '.join(rec)}")
        rows.append(make_row(where, rec, cols))
    return rows


def _text_value(where: str, value, column: str) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{where}: column {column!r} must be text, got {value!r:.80}")
    text = (value or "").strip()
    if not text:
        raise ValueError(f"{where}: empty text in column {column!r}")
    return text


def make_row(where: str, rec: dict, cols: Columns) -> Row:
    """One :class:`Row` from a record (dict of column -> value); ``where`` prefixes every error."""
    text = _text_value(where, rec.get(cols.text), cols.text)
    pair = _text_value(where, rec.get(cols.pair), cols.pair) if cols.pair else None
    label = rec.get(cols.label)
    if isinstance(label, str):
        label = label.strip()
    if label is None or label == "":
        raise ValueError(f"{where}: missing label in column {cols.label!r}")
    if isinstance(label, (dict, list)):
        raise ValueError(f"{where}: label in column {cols.label!r} must be a string or integer, got {label!r:.80}")
    return Row(where, text, pair, str(label))


def encode_labels(
    rows: list[Row], label_names: list[str] | None, column: str, source: str
) -> tuple[list[int], list[str]]:
    """Map each row's label to an index; returns ``(indices, names)``.

    With ``label_names`` (e.g. the model's ``id2label``), a label is one of the names or, when
    every label is an integer and some are not names, an index into them. Without, the names are
    the distinct labels as text, sorted (numerically first when all are integers): ``01`` and
    ``1`` stay two labels.

    Raises:
        ValueError: a label not in ``label_names`` (naming it and the row), or fewer than 2 labels.
    """
    raws = [r.label for r in rows]
    all_int = all(_INT_RE.fullmatch(r) for r in raws)
    if label_names is not None:
        names = [str(n) for n in label_names]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"label_names must be non-empty and distinct, got {label_names!r}")
        index = {n: i for i, n in enumerate(names)}
        if all_int and not all(r in index for r in raws):  # integer labels index label_names
            for r in rows:
                if not 0 <= int(r.label) < len(names):
                    raise ValueError(f"{r.where}: label {r.label!r} is not an index of label_names {names}")
            return [int(r) for r in raws], names
        for r in rows:
            if r.label not in index:
                raise ValueError(f"{r.where}: unknown label {r.label!r}; allowed: {', '.join(names)}")
        return [index[r] for r in raws], names
    key = (lambda r: (int(r), r)) if all_int else None
    names = sorted(set(raws), key=key)
    if len(names) < 2:
        raise ValueError(
            f"{source}: every row has label {names[0]!r} in column {column!r}; classification needs 2+ labels"
        )
    index = {n: i for i, n in enumerate(names)}
    return [index[r] for r in raws], names
