"""Sentence-embedding models (bi-encoders) as a task kind: pooling, ``embed``, distillation loss.

An embedding model is held as the family's sequence-classifier class (so the adapters, surgery,
cost model and saving work on it unchanged) whose classification head is never used: the output
is the pooled last hidden state. The switch is one config entry, ``config.slimformer_embedding =
{"pooling": "mean", "normalize": true, "max_seq_length": 256, "source": ...}``, written by
:func:`as_embedding_model` and kept in saved folders; :func:`embedding_pooling` reads it, and the
scorers (OPTIN) use an embedding loss instead of the logit KL wherever it is set.

Pooling comes from the folder's sentence-transformers files when it has them (``modules.json``,
``1_Pooling/config.json``, ``sentence_bert_config.json``); otherwise mean pooling over the
attention-masked tokens followed by L2 normalisation (what all-MiniLM-L6-v2 uses). ``source``
records which of the two was used.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

logger = logging.getLogger(__name__)

#: Config key that marks a model as an embedding model (value: :class:`Pooling` as a dict).
EMBEDDING_KEY = "slimformer_embedding"
POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len")
LOSSES = ("cosine", "mse", "both")
#: sentence-transformers' pooling flags, in the order its config lists them.
_ST_FLAGS = {
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "max": "pooling_mode_max_tokens",
    "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
}


@dataclass(frozen=True)
class Pooling:
    """How token states become one sentence vector.

    Attributes:
        mode: one of :data:`POOLING_MODES` (``mean``: over non-padding tokens).
        normalize: L2-normalise the pooled vector.
        max_seq_length: longest input the model was trained on (inputs are truncated to it).
        source: ``"sentence-transformers"`` (read from the folder) or ``"default"`` (mean + normalise).
    """

    mode: str = "mean"
    normalize: bool = True
    max_seq_length: int = 256
    source: str = "default"

    def __post_init__(self) -> None:
        if self.mode not in POOLING_MODES:
            raise ValueError(f"pooling mode {self.mode!r} is not supported; allowed: {', '.join(POOLING_MODES)}")
        if self.max_seq_length < 2:
            raise ValueError(f"max_seq_length must be >= 2, got {self.max_seq_length}")

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict) -> Pooling:
        return Pooling(**{k: data[k] for k in ("mode", "normalize", "max_seq_length", "source") if k in data})

    @staticmethod
    def from_folder(folder: str | Path) -> Pooling:
        """Read the sentence-transformers pooling of ``folder``; mean + normalise if it has none.

        Raises:
            ValueError: the pooling config enables no mode or several (sentence-transformers would
                concatenate them, which this view does not support).
        """
        root = Path(folder)
        modules_file, pool_file = root / "modules.json", root / "1_Pooling" / "config.json"
        if not modules_file.is_file() or not pool_file.is_file():
            return Pooling()
        modules = json.loads(modules_file.read_text())
        types = [str(m.get("type", "")) for m in modules]
        cfg = json.loads(pool_file.read_text())
        modes = [mode for mode, flag in _ST_FLAGS.items() if cfg.get(flag)]
        if len(modes) != 1:
            raise ValueError(f"{pool_file}: exactly one pooling mode must be enabled, got {modes or 'none'}")
        bert_cfg = root / "sentence_bert_config.json"
        max_len = json.loads(bert_cfg.read_text()).get("max_seq_length", 256) if bert_cfg.is_file() else 256
        normalize = any(t.endswith("Normalize") for t in types)
        return Pooling(modes[0], normalize, int(max_len), "sentence-transformers")

    def __call__(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pool ``(B, T, d)`` states over the tokens where ``attention_mask`` is 1: ``(B, d)``."""
        keep = attention_mask.to(hidden.dtype)[..., None]  # (B, T, 1)
        if self.mode == "cls":
            pooled = hidden[:, 0]
        elif self.mode == "max":
            pooled = hidden.masked_fill(keep == 0, torch.finfo(hidden.dtype).min).amax(1)
        else:
            total = (hidden * keep).sum(1)  # (B, d)
            count = keep.sum(1).clamp_min(1.0)  # (B, 1)
            pooled = total / (count if self.mode == "mean" else count.sqrt())
        return F.normalize(pooled, dim=-1) if self.normalize else pooled


def embedding_pooling(model) -> Pooling | None:
    """The model's :class:`Pooling` if it is an embedding model (see :data:`EMBEDDING_KEY`), else None."""
    spec = getattr(getattr(model, "config", None), EMBEDDING_KEY, None)
    return Pooling.from_dict(spec) if spec else None


def folder_pooling(name: str) -> Pooling | None:
    """The pooling of the embedding model ``name`` names, read from its files (no weights loaded), or None.

    An embedding model is a folder saved by slimformer as one (:data:`EMBEDDING_KEY` in its
    ``config.json``) or a sentence-transformers folder (``modules.json``) whose config names no
    classifier architecture, like the built-in all-MiniLM-L6-v2. Anything else (a classifier, a hub
    id that is not downloaded) gives None.
    """
    from slimformer.models import resolve_model_path

    try:
        root = Path(resolve_model_path(name))
    except (OSError, ValueError):
        return None
    config_file = root / "config.json"
    if not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text())
    except ValueError:
        return None  # the loaders name the broken file
    if config.get(EMBEDDING_KEY):
        return Pooling.from_dict(config[EMBEDDING_KEY])
    heads = [a for a in config.get("architectures") or [] if a.endswith("Classification")]  # any head
    if (root / "modules.json").is_file() and not heads:
        return Pooling.from_folder(root)
    return None


def as_embedding_model(model, pooling: Pooling | None = None):
    """Mark a sequence-classifier-shaped model as an embedding model (in place) and return it.

    The classification head stays in the module (so every adapter path works) but is never used.
    A model already marked keeps its pooling unless ``pooling`` is given.
    """
    from slimformer.arch import get_adapter

    get_adapter(model)  # refuses unsupported families and base models, naming what to load instead
    current = embedding_pooling(model)
    pooling = pooling or current or Pooling()
    setattr(model.config, EMBEDDING_KEY, pooling.to_dict())
    return model


class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def load_embedding_model(name: str):
    """Load a built-in name, folder or hub id as an embedding model, with its tokenizer.

    Pooling is read from the folder (:meth:`Pooling.from_folder`) unless the folder was saved by
    slimformer as an embedding model already. The classification head the loader adds is unused.

    Returns:
        ``(model, tokenizer)``, the model in eval mode.
    """
    from slimformer.models import load_model, resolve_model_path

    path = resolve_model_path(name)
    head_note = _DropMessage("randomly initialised classification head")  # the head is never used here
    models_logger = logging.getLogger("slimformer.models")
    models_logger.addFilter(head_note)
    try:
        model, tokenizer = load_model(path, num_labels=1)
    finally:
        models_logger.removeFilter(head_note)
    pooling = embedding_pooling(model) or Pooling.from_folder(path)
    logger.info(
        "embedding model %s: %s pooling, normalize=%s (%s)", name, pooling.mode, pooling.normalize, pooling.source
    )
    return as_embedding_model(model, pooling).eval(), tokenizer


def encode(model, batch: dict[str, torch.Tensor], *, return_states: bool = False):
    """Pooled embeddings of one tokenized batch: ``(B, T)`` ids -> ``(B, d)``, with gradients if enabled.

    Args:
        return_states: also return every layer's output, a list of ``(B, T, d)`` tensors.

    Raises:
        ValueError: the model is not an embedding model.
    """
    from slimformer.arch import get_adapter

    pooling = embedding_pooling(model)
    if pooling is None:
        raise ValueError(f"{type(model).__name__} is not an embedding model; wrap it with as_embedding_model")
    adapter = get_adapter(model)
    hidden = adapter.embed(model, batch["input_ids"], batch.get("token_type_ids"))  # (B, T, d)
    mask = adapter.layer_mask(model, hidden, batch["attention_mask"])
    states = []
    for layer in adapter.layers(model):
        hidden = adapter.run_layer(layer, hidden, mask)
        states.append(hidden)
    pooled = pooling(adapter.final_states(model, hidden), batch["attention_mask"])
    return (pooled, states) if return_states else pooled


class EmbeddingForward(torch.nn.Module):
    """An embedding model called like a transformers model: ``forward(**inputs) -> (B, d)`` embeddings.

    Lets the timing utilities (:func:`slimformer.bench.bench_models`) time what an embedding user
    runs (encoder + pooling, no head); ``config`` is the wrapped model's.
    """

    def __init__(self, model):
        super().__init__()
        if embedding_pooling(model) is None:
            raise ValueError(f"{type(model).__name__} is not an embedding model; wrap it with as_embedding_model")
        self.model = model
        self.config = model.config

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        return encode(self.model, inputs)


def text_batches(
    texts: Sequence[str], tokenizer, *, batch_size: int = 32, max_length: int | None = 128, sort: bool = True
) -> list[dict[str, torch.Tensor]]:
    """Tokenize unlabelled texts into padded batches (no ``labels``), optionally shortest first.

    Returns:
        Batches with ``input_ids``, ``attention_mask`` (and ``token_type_ids``) plus ``index``, the
        ``(B,)`` positions of the batch's texts in ``texts``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = list(range(len(texts)))
    if sort:
        order.sort(key=lambda i: len(texts[i]))
    out = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer(
            [texts[i] for i in idx], padding="longest", truncation=True, max_length=max_length, return_tensors="pt"
        )
        out.append({**dict(enc), "index": torch.tensor(idx, dtype=torch.long)})
    return out


@torch.no_grad()
def embed(model, tokenizer, texts: Sequence[str], batch_size: int = 32, max_length: int | None = None) -> torch.Tensor:
    """Embed ``texts`` with an embedding model: ``(N, d)`` float32, in the order of ``texts``.

    Args:
        max_length: truncate inputs to this many tokens (default: the pooling's ``max_seq_length``).
    """
    pooling = embedding_pooling(model)
    if pooling is None:
        raise ValueError(f"{type(model).__name__} is not an embedding model; wrap it with as_embedding_model")
    max_length = max_length or pooling.max_seq_length
    out = torch.zeros(len(texts), model.config.hidden_size)
    for batch in text_batches(texts, tokenizer, batch_size=batch_size, max_length=max_length):
        index = batch.pop("index")
        out[index] = encode(model, batch).float()
    return out


def embedding_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Distillation loss to the teacher's embeddings, mean over the batch.

    Args:
        student: ``(B, d)`` embeddings; gradients flow into them.
        teacher: ``(B, d)`` embeddings (detached by the caller).
        kind: ``cosine`` (``1 - cos``), ``mse`` (mean squared error per dimension) or ``both`` (sum).

    Raises:
        ValueError: an unknown ``kind`` or embeddings of different shapes.
    """
    if kind not in LOSSES:
        raise ValueError(f"embedding loss {kind!r} is not supported; allowed: {', '.join(LOSSES)}")
    if student.shape != teacher.shape:
        raise ValueError(f"student embeddings {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ")
    s, t = student.float(), teacher.float()
    loss = s.new_zeros(())
    if kind in ("cosine", "both"):
        loss = loss + (1 - F.cosine_similarity(s, t, dim=-1)).mean()
    if kind in ("mse", "both"):
        loss = loss + F.mse_loss(s, t)
    return loss


def save_embedding_model(
    model, tokenizer, folder: str | Path, *, source: str | Path | None = None, overwrite: bool = False, extra=None
) -> Path:
    """Save an embedding model so plain transformers and sentence-transformers load it.

    The folder is :func:`slimformer.export.save_model`'s (pruned shapes through the remote-code
    file; ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` gives the base model) plus
    sentence-transformers' files describing this model's pooling: ``modules.json``,
    ``1_Pooling/config.json``, ``sentence_bert_config.json`` (and ``2_Normalize/`` when it
    normalises). Settings of ``source``'s own files that this view does not change are kept, and
    its ``config_sentence_transformers.json`` is copied.

    Raises:
        ValueError: the model is not an embedding model.
        FileExistsError: see :func:`slimformer.export.prepare_output_dir`.
    """
    from slimformer.arch import get_adapter
    from slimformer.export import save_model
    from slimformer.fsutil import model_sources, staged_output_dir
    from slimformer.hf_remote.modeling_slimformer import SLIM_BASE_CLASSES, SLIM_KEY

    pooling = embedding_pooling(model)
    if pooling is None:
        raise ValueError(f"{type(model).__name__} is not an embedding model; wrap it with as_embedding_model")
    inputs = [*model_sources(model), *([source] if source else [])]
    # staged as a whole, so the folder never exists without its sentence-transformers files
    with staged_output_dir(folder, overwrite=overwrite, inputs=inputs) as path:
        save_model(model, tokenizer, path, overwrite=True, extra=extra)
        config = json.loads((path / "config.json").read_text())
        if config.get(SLIM_KEY):
            base = SLIM_BASE_CLASSES[get_adapter(model).family].__name__
            config["auto_map"] = {**config.get("auto_map", {}), "AutoModel": f"modeling_slimformer.{base}"}
            (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        _write_sentence_transformers(path, pooling, model.config.hidden_size, Path(source) if source else None)
    return Path(folder)


def save_embedding_result(
    model, tokenizer, folder: str | Path, *, source: str | Path | None = None, overwrite: bool = False, extra=None
) -> Path:
    """Save a compressed embedding model: :func:`save_embedding_model`, or for an int8 model
    :func:`slimformer.quantize.save_quantized` (that folder loads with slimformer only:
    :func:`load_embedding_model`, ``evaluate``, ``bench``; deploy int8 with ``export --onnx --int8``)."""
    from slimformer.quantize import is_quantized, save_quantized

    if embedding_pooling(model) is None:
        raise ValueError(f"{type(model).__name__} is not an embedding model; wrap it with as_embedding_model")
    if is_quantized(model):
        return save_quantized(model, tokenizer, folder, overwrite=overwrite, extra=extra)
    return save_embedding_model(model, tokenizer, folder, source=source, overwrite=overwrite, extra=extra)


def _write_sentence_transformers(path: Path, pooling: Pooling, hidden: int, source: Path | None) -> None:
    def read(name: str) -> dict:
        file = source / name if source is not None else None
        return json.loads(file.read_text()) if file is not None and file.is_file() else {}

    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if pooling.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (path / "2_Normalize").mkdir(exist_ok=True)
    pool = {**read("1_Pooling/config.json"), "word_embedding_dimension": hidden}
    pool.update({flag: mode == pooling.mode for mode, flag in _ST_FLAGS.items()})
    bert = {"do_lower_case": False, **read("sentence_bert_config.json"), "max_seq_length": pooling.max_seq_length}
    (path / "1_Pooling").mkdir(exist_ok=True)
    files = {"modules.json": modules, "1_Pooling/config.json": pool, "sentence_bert_config.json": bert}
    if read("config_sentence_transformers.json"):
        files["config_sentence_transformers.json"] = read("config_sentence_transformers.json")
    for name, data in files.items():
        (path / name).write_text(json.dumps(data, indent=2) + "\n")


def read_texts(source: str, *, column: str = "text", split: str = "train", limit: int | None = None) -> list[str]:
    """Unlabelled texts: a built-in task's split, or one column of a CSV / TSV / JSONL file.

    Raises:
        FileNotFoundError: neither a built-in task nor an existing file.
        ValueError: the column is missing, a value is not text, or an unknown file type.
    """
    from slimformer.data import BUILTIN_TASKS, load_task

    if source in BUILTIN_TASKS:
        texts = [e.text for e in load_task(source).split(split)]
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {source!r} (built-in tasks: {', '.join(BUILTIN_TASKS)})")
        texts = _read_column(path, column)
    return texts[:limit] if limit is not None else texts


def _read_column(path: Path, column: str) -> list[str]:
    suffix = path.suffix.lower()
    with path.open(newline="", encoding="utf-8") as f:
        if suffix in (".csv", ".tsv"):
            rows = list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
        elif suffix in (".jsonl", ".json"):
            rows = [json.loads(line) for line in f if line.strip()]
        else:
            raise ValueError(f"{path}: unsupported file type {suffix!r}; allowed: .csv, .tsv, .jsonl, .json")
    texts = []
    for n, row in enumerate(rows, 1):
        if column not in row:
            raise ValueError(f"{path}: row {n} has no column {column!r}; columns: {', '.join(map(str, row))}")
        if not isinstance(row[column], str):
            raise ValueError(f"{path}: row {n}, column {column!r} is {type(row[column]).__name__}, not text")
        texts.append(row[column])
    return texts
