"""Vocabulary pruning: keep the tokens a task's data uses, shrink the word embeddings, rewrite the tokenizer.

In MiniLM-L6 the word embeddings are half of all weights (30,522 x 384), while one task's training
texts use about 14k distinct tokens. :func:`prune_vocabulary` keeps the tokens that the training
texts produce (at least ``min_count`` times) plus every special token, slices those rows out of
the word-embedding matrix (in the old id order, so ids stay sorted), and rewrites the fast
tokenizer's ``tokenizer.json`` with the remapped ids: its WordPiece vocabulary, added tokens,
post-processor and padding id. The rewritten tokenizer tokenizes any text: a word whose pieces
were dropped is split greedily into kept pieces again, or becomes ``[UNK]`` when no split exists
(WordPiece's rule). :func:`unk_report` counts how often that happens on other texts (e.g. test).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: Tokenizer models whose vocabulary can be remapped id by id (merges-based BPE cannot).
SUPPORTED_MODELS = ("WordPiece",)


def count_tokens(tokenizer, texts: Sequence[str], *, max_length: int | None = None) -> Counter:
    """How often each token id occurs in ``texts`` (special tokens included), truncated like training."""
    counts: Counter = Counter()
    batch = 1024
    for i in range(0, len(texts), batch):
        enc = tokenizer(
            list(texts[i : i + batch]), truncation=max_length is not None, max_length=max_length, verbose=False
        )
        for ids in enc["input_ids"]:
            counts.update(ids)
    return counts


def kept_token_ids(tokenizer, texts: Sequence[str], *, min_count: int = 1, max_length: int | None = None) -> list[int]:
    """Sorted ids to keep: tokens seen at least ``min_count`` times in ``texts``, plus special tokens.

    Raises:
        ValueError: ``min_count < 1`` or no texts.
    """
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"min_count={min_count!r}: must be an integer >= 1")
    if not texts:
        raise ValueError("vocabulary pruning needs the task's texts; got none")
    counts = count_tokens(tokenizer, texts, max_length=max_length)
    keep = {i for i, c in counts.items() if c >= min_count} | set(tokenizer.all_special_ids)
    return sorted(keep)


def prune_vocabulary(model: nn.Module, tokenizer, keep_ids: Sequence[int]) -> tuple[nn.Module, object, dict]:
    """Keep only ``keep_ids`` (sorted old ids) in ``model``'s word embeddings and in ``tokenizer``.

    The model is changed in place (its ``config.vocab_size`` and ``pad_token_id`` follow); a new
    tokenizer is returned. Outputs on a text whose tokens are all kept are unchanged.

    Returns:
        ``(model, new tokenizer, report)`` with the old and new vocabulary sizes.

    Raises:
        ValueError: a tokenizer that is not a fast WordPiece tokenizer, ids out of range, or a
            special token missing from ``keep_ids``.
    """
    from transformers import AutoTokenizer

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(
            f"{type(tokenizer).__name__} is not a fast tokenizer; vocabulary pruning rewrites tokenizer.json"
        )
    state = json.loads(backend.to_str())
    kind = state["model"]["type"]
    if kind not in SUPPORTED_MODELS:
        raise ValueError(f"vocabulary pruning supports {', '.join(SUPPORTED_MODELS)} tokenizers, not {kind}")
    embeddings = model.get_input_embeddings()
    old_size = embeddings.num_embeddings
    keep = sorted(set(int(i) for i in keep_ids))
    if not keep or keep[0] < 0 or keep[-1] >= old_size:
        raise ValueError(f"keep_ids must be ids in [0, {old_size}); got {len(keep)} ids from {keep[:1]} to {keep[-1:]}")
    missing = sorted(set(tokenizer.all_special_ids) - set(keep))
    if missing:
        raise ValueError(f"keep_ids lacks the special token ids {missing}; every special token must stay")
    remap = {old: new for new, old in enumerate(keep)}

    # --- the tokenizer: vocabulary, added tokens, post-processor, padding
    vocab = state["model"]["vocab"]
    state["model"]["vocab"] = {tok: remap[i] for tok, i in sorted(vocab.items(), key=lambda kv: kv[1]) if i in remap}
    added = [a for a in state.get("added_tokens") or [] if a["id"] in remap]
    for a in added:
        a["id"] = remap[a["id"]]
    state["added_tokens"] = added
    _remap_ids(state.get("post_processor"), remap)
    if state.get("padding") and "pad_id" in state["padding"]:
        state["padding"]["pad_id"] = remap[state["padding"]["pad_id"]]
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        (Path(tmp) / "tokenizer.json").write_text(json.dumps(state, ensure_ascii=False))
        for name in ("vocab.txt",):  # a slow-tokenizer vocabulary, when one was written, must agree
            if (Path(tmp) / name).exists():
                words = sorted(state["model"]["vocab"], key=state["model"]["vocab"].get)
                (Path(tmp) / name).write_text("\n".join(words) + "\n", encoding="utf-8")
        new_tokenizer = AutoTokenizer.from_pretrained(tmp)

    # --- the model: slice the word-embedding rows, in the old id order
    idx = torch.tensor(keep, dtype=torch.long)
    new = nn.Embedding(len(keep), embeddings.embedding_dim, padding_idx=None)
    new.to(device=embeddings.weight.device, dtype=embeddings.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(embeddings.weight[idx])
    pad = model.config.pad_token_id
    if pad is not None and pad in remap:
        new.padding_idx = remap[pad]
        model.config.pad_token_id = remap[pad]
    model.set_input_embeddings(new)
    model.config.vocab_size = len(keep)
    for name in ("bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id"):
        old = getattr(model.config, name, None)
        if isinstance(old, int) and old in remap:
            setattr(model.config, name, remap[old])
    report = {
        "vocab_before": old_size,
        "vocab_after": len(keep),
        "embedding_params_removed": (old_size - len(keep)) * new.embedding_dim,
    }
    logger.info("vocabulary %d -> %d tokens", old_size, len(keep))
    return model, new_tokenizer, report


def _remap_ids(node, remap: dict[int, int]) -> None:
    """Remap token ids inside a post-processor description (TemplateProcessing, BertProcessing, Sequence)."""
    if isinstance(node, list):
        for item in node:
            _remap_ids(item, remap)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key == "ids" and isinstance(value, list):
            node[key] = [remap[i] for i in value]
        elif key in ("sep", "cls") and isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
            node[key] = [value[0], remap[value[1]]]
        else:
            _remap_ids(value, remap)


def unk_report(before, after, texts: Sequence[str], *, max_length: int | None = None) -> dict:
    """How many tokens of ``texts`` fall back to ``[UNK]`` with the pruned tokenizer ``after``.

    Returns:
        ``{"texts", "tokens", "unk", "unk_before", "unk_added", "unk_fraction", "texts_changed"}``;
        ``unk_added`` counts the [UNK] tokens the pruning caused (those the original tokenizer also
        produced are in ``unk_before``); ``texts_changed`` counts texts tokenized differently
        (re-split words or [UNK]).
    """
    kw = {"truncation": max_length is not None, "max_length": max_length, "verbose": False}
    old = before(list(texts), **kw)["input_ids"]
    new = after(list(texts), **kw)["input_ids"]
    unk_old, unk_new = before.unk_token_id, after.unk_token_id
    old_tokens = [before.convert_ids_to_tokens(ids) for ids in old]
    new_tokens = [after.convert_ids_to_tokens(ids) for ids in new]
    tokens = sum(len(ids) for ids in new)
    unk = sum(ids.count(unk_new) for ids in new)
    unk_before = sum(ids.count(unk_old) for ids in old)
    return {
        "texts": len(texts),
        "tokens": tokens,
        "unk": unk,
        "unk_before": unk_before,
        "unk_added": unk - unk_before,
        "unk_fraction": unk / max(tokens, 1),
        "texts_changed": sum(a != b for a, b in zip(old_tokens, new_tokens, strict=True)),
    }
