"""Save and load models, including pruned ones with uneven per-layer shapes.

A pruned model saves as an ordinary transformers folder (``config.json``, ``model.safetensors``,
tokenizer files) plus ``modeling_slimformer.py``, named in the config's ``auto_map``. So it loads

* with slimformer: :func:`load_slim` (or :func:`slimformer.models.load_model`), and
* with plain transformers, slimformer not installed:
  ``AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from slimformer.hf_remote import modeling_slimformer as remote

logger = logging.getLogger(__name__)

REMOTE_FILE = "modeling_slimformer.py"


def prepare_output_dir(folder: str | Path, *, overwrite: bool = False) -> Path:
    """Create ``folder``; refuse a non-empty one unless ``overwrite`` (then it is emptied).

    Raises:
        FileExistsError: the folder exists, is not empty, and ``overwrite`` is False.
        NotADirectoryError: the path is a file.
    """
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"output path {str(path)!r} is a file, not a folder")
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"output folder {str(path)!r} is not empty; choose another or pass --overwrite to replace it"
            )
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_slim_folder(folder: str | Path) -> bool:
    """Whether a folder holds a model saved with per-layer shapes by slimformer."""
    config = Path(folder) / "config.json"
    if not config.is_file():
        return False
    return bool(json.loads(config.read_text()).get(remote.SLIM_KEY))


def save_model(model, tokenizer, folder: str | Path, *, overwrite: bool = False, extra: dict | None = None) -> Path:
    """Save a model (pruned or not) with its tokenizer into ``folder``.

    Args:
        extra: JSON-serialisable metadata written to ``slimformer.json`` (e.g. a pruning report).

    Returns:
        The folder.

    Raises:
        FileExistsError: see :func:`prepare_output_dir`.
    """
    from slimformer.arch import get_adapter

    path = prepare_output_dir(folder, overwrite=overwrite)
    family = get_adapter(model).family
    if getattr(model.config, remote.SLIM_KEY, None):
        cls = remote.SLIM_CLASSES[family]
        model.config.auto_map = {"AutoModelForSequenceClassification": f"modeling_slimformer.{cls.__name__}"}
        shutil.copyfile(remote.__file__, path / REMOTE_FILE)
    model.save_pretrained(path, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    if extra is not None:
        (path / "slimformer.json").write_text(json.dumps(extra, indent=2, default=str) + "\n")
    logger.info("saved model to %s", path)
    return path


def load_slim(folder: str | Path):
    """Load a model saved by :func:`save_model`, rebuilding its per-layer shapes.

    Raises:
        ValueError: the folder's architecture is not supported.
    """
    from transformers import AutoConfig

    from slimformer.arch import get_adapter_for_config

    config = AutoConfig.from_pretrained(str(folder))
    family = get_adapter_for_config(config).family
    model = remote.SLIM_CLASSES[family].from_pretrained(str(folder))
    return model.eval()
