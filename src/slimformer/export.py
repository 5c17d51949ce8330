"""Save and load models, including pruned ones with uneven per-layer shapes.

A pruned model saves as an ordinary transformers folder (``config.json``, ``model.safetensors``,
tokenizer files) plus ``modeling_slimformer.py``, named in the config's ``auto_map``. So it loads

* with slimformer: :func:`load_slim` (or :func:`slimformer.models.load_model`), and
* with plain transformers, slimformer not installed:
  ``AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)``
  (``AutoModelForTokenClassification`` for a token classifier, see :mod:`slimformer.tasks`).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path

from slimformer.fsutil import check_output_dir, model_sources, pause_point, remove_dir_contents, staged_output_dir
from slimformer.hf_remote import modeling_slimformer as remote

logger = logging.getLogger(__name__)

REMOTE_FILE = "modeling_slimformer.py"


def prepare_output_dir(folder: str | Path, *, overwrite: bool = False, inputs: Iterable[str | Path] = ()) -> Path:
    """Create ``folder`` to write into directly; refuse a non-empty one unless ``overwrite`` (then emptied).

    Prefer :func:`slimformer.fsutil.staged_output_dir`, which keeps the old folder until the new
    one is complete; this is for writers whose partial output is itself useful (checkpoints).

    Raises:
        FileExistsError: the folder exists, is not empty, and ``overwrite`` is False.
        NotADirectoryError: the path is a file.
        ValueError: the folder is protected (root, home, the working folder or an ancestor of it)
            or holds one of ``inputs``.
    """
    path = check_output_dir(folder, overwrite=overwrite, inputs=inputs)
    if path.is_dir() and any(path.iterdir()):
        remove_dir_contents(path, inputs=inputs)
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_slim_folder(folder: str | Path) -> bool:
    """Whether a folder holds a model saved with per-layer shapes by slimformer."""
    config = Path(folder) / "config.json"
    if not config.is_file():
        return False
    return bool(json.loads(config.read_text()).get(remote.SLIM_KEY))


def save_model(
    model,
    tokenizer,
    folder: str | Path,
    *,
    overwrite: bool = False,
    extra: dict | None = None,
    inputs: Iterable[str | Path] = (),
) -> Path:
    """Save a model (pruned or not) with its tokenizer into ``folder``, staged (see :mod:`slimformer.fsutil`).

    Args:
        extra: JSON-serialisable metadata written to ``slimformer.json`` (e.g. a pruning report).
        inputs: what the model was made from; ``folder`` may not be or hold any of them (the
            folder the model was loaded from is always added).

    Returns:
        The folder.

    Raises:
        FileExistsError, NotADirectoryError, ValueError, PermissionError: see
            :func:`slimformer.fsutil.check_output_dir`.
    """
    from slimformer.arch import get_adapter

    family = get_adapter(model).family
    inputs = [*inputs, *model_sources(model)]  # never replace the folder the model came from
    with staged_output_dir(folder, overwrite=overwrite, inputs=inputs) as path:
        if getattr(model.config, remote.SLIM_KEY, None):
            auto, cls = _remote_class(model, family)
            model.config.auto_map = {auto: f"modeling_slimformer.{cls.__name__}"}
            shutil.copyfile(remote.__file__, path / REMOTE_FILE)
        model.save_pretrained(path, safe_serialization=True)
        pause_point("save:weights")
        if tokenizer is not None:
            tokenizer.save_pretrained(path)
        if extra is not None:
            (path / "slimformer.json").write_text(json.dumps(extra, indent=2, default=str) + "\n")
        drop_stale_auto_map(path)
    logger.info("saved model to %s", folder)
    return Path(folder)


def _remote_class(model, family: str) -> tuple[str, type]:
    """The ``auto_map`` key and the remote-code class that rebuild ``model``'s kind of head."""
    from slimformer.arch import get_adapter
    from slimformer.tasks import is_token_classifier

    if is_token_classifier(model):
        return "AutoModelForTokenClassification", remote.SLIM_TOKEN_CLASSES[family]
    return get_adapter(model).auto_class, remote.SLIM_CLASSES[family]


def drop_stale_auto_map(folder: str | Path) -> list[str]:
    """Remove ``auto_map`` entries of ``folder/config.json`` whose module file is not in the folder.

    Such entries come from an input model's remote code; without the file, loading with
    ``trust_remote_code=True`` fails. Returns the entries removed.
    """
    config_file = Path(folder) / "config.json"
    config = json.loads(config_file.read_text())
    auto_map = config.get("auto_map")
    if not isinstance(auto_map, dict):
        return []
    stale = [k for k, v in auto_map.items() if not remote_file_present(folder, v)]
    if stale:
        kept = {k: v for k, v in auto_map.items() if k not in stale}
        if kept:
            config["auto_map"] = kept
        else:
            del config["auto_map"]
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        logger.info("%s: dropped auto_map entries without their code file: %s", folder, ", ".join(stale))
    return stale


def remote_file_present(folder: str | Path, ref) -> bool:
    """Whether an ``auto_map`` value (``"module.Class"``, ``"repo--module.Class"`` or a list) has its file."""
    refs = ref if isinstance(ref, (list, tuple)) else [ref]
    for r in refs:
        if r is None:
            continue
        if not isinstance(r, str) or "--" in r:  # another repo's code: not shipped in this folder
            return False
        module = r.rsplit(".", 1)[0]
        if not (Path(folder) / f"{module.replace('.', '/')}.py").is_file():
            return False
    return True


def load_slim(folder: str | Path):
    """Load a model saved by :func:`save_model`, rebuilding its per-layer shapes.

    Raises:
        ValueError: the folder's architecture is not supported.
    """
    from transformers import AutoConfig

    from slimformer.arch import get_adapter_for_config
    from slimformer.tasks import is_token_classifier

    config = AutoConfig.from_pretrained(str(folder))
    family = get_adapter_for_config(config).family
    classes = remote.SLIM_TOKEN_CLASSES if is_token_classifier(config) else remote.SLIM_CLASSES
    model = classes[family].from_pretrained(str(folder))
    return model.eval()
