"""Save and load skimming models.

A saved folder is an ordinary transformers folder (``config.json``, ``model.safetensors``, tokenizer
files) whose config carries ``"slimformer_skim": {"format", "predictor_hidden", "shift"}``; the
predictors' weights sit in the same safetensors file under ``skim_predictors.*``. That key is how
:func:`slimformer.models.load_model` (``FOLDER_LOADERS``) sends the folder to :func:`load_skim`, so
``slimformer evaluate DIR`` and ``slimformer bench DIR`` run the skimming model unchanged. A pruned
model (per-layer shapes in ``config.slimformer``) skims too: its shapes are rebuilt on load.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

REPORT_NAME = "skim_report.json"


def save_skim(model, tokenizer, folder: str | Path, *, overwrite: bool = False, report: dict | None = None) -> Path:
    """Save a skimming model (and its tokenizer, and ``skim_report.json`` when given) into ``folder``.

    Raises:
        ValueError: ``model`` is not a skimming model.
        FileExistsError: ``folder`` is not empty and ``overwrite`` is not set.
    """
    from slimformer.fsutil import staged_output_dir
    from slimformer.skim.model import is_skim_model

    if not is_skim_model(model):
        raise ValueError(f"{type(model).__name__} is not a skimming model; build one with slimformer.skim.skim")
    with staged_output_dir(folder, overwrite=overwrite) as stage:  # replaced only once complete
        write_skim(model, tokenizer, stage, report=report)
    return Path(folder)


def write_skim(model, tokenizer, folder: str | Path, *, report: dict | None = None) -> Path:
    """Write the model files into an existing ``folder`` (no emptiness check: see :func:`save_skim`)."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    if report is not None:
        (path / REPORT_NAME).write_text(json.dumps(report, indent=2, default=str) + "\n")
    logger.info("saved skimming model to %s", path)
    return path


def is_skim_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a model saved by :func:`save_skim`."""
    from slimformer.skim.model import SKIM_KEY

    config = Path(folder) / "config.json"
    return config.is_file() and bool(json.loads(config.read_text()).get(SKIM_KEY))


def load_skim(folder: str | Path):
    """Load a skimming model saved by :func:`save_skim` (eval mode, CPU).

    Raises:
        FileNotFoundError: no ``config.json`` in ``folder``.
        ValueError: not a skimming folder, or an unsupported architecture or format.
    """
    from transformers import AutoConfig

    from slimformer.arch import get_adapter_for_config
    from slimformer.skim.model import SKIM_CLASSES, SKIM_KEY

    path = Path(folder)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{str(path)!r} has no config.json")
    if not is_skim_folder(path):
        raise ValueError(f"{str(path)!r} is not a skimming model (its config.json has no {SKIM_KEY!r})")
    config = AutoConfig.from_pretrained(str(path))
    family = get_adapter_for_config(config).family
    model = SKIM_CLASSES[family].from_pretrained(str(path), config=config)
    return model.eval()
