"""Save and load multi-exit models.

A saved folder is an ordinary transformers folder: ``config.json`` (the wrapped classifier's
config, its per-layer shapes under ``slimformer`` when slender, and the exits under
``slimformer_exit``: format, head kind and sizes, the exit rule and how it was calibrated),
``model.safetensors`` and the tokenizer. :func:`slimformer.models.load_model` recognises the
``slimformer_exit`` key and calls :func:`load_exit`, so ``slimformer evaluate DIR`` and
``slimformer bench DIR`` work on it unchanged.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def save_exit(model, tokenizer, folder: str | Path, *, overwrite: bool = False, extra: dict | None = None) -> Path:
    """Save a :class:`~slimformer.exits.model.MultiExitModel` (and its tokenizer) into ``folder``.

    Args:
        extra: JSON-serialisable metadata written to ``slimformer.json`` (e.g. training report).

    Returns:
        The folder.

    Raises:
        FileExistsError: the folder is not empty and ``overwrite`` is False.
        ValueError: ``model`` is not a multi-exit model.
    """
    from slimformer.exits.model import EXIT_KEY, MultiExitModel, exit_spec
    from slimformer.fsutil import staged_output_dir

    if not isinstance(model, MultiExitModel):
        raise ValueError(f"save_exit needs a MultiExitModel, got {type(model).__name__}; use export.save_model")
    spec = dict(exit_spec(model.config))
    head = model.exits[0] if len(model.exits) else None
    if head is not None:  # sizes recorded for readers of config.json; the model is rebuilt from the config
        spec["head_sizes"] = {
            "dense": [head.dense.in_features, head.dense.out_features] if head.dense is not None else None,
            "out": [head.out.in_features, head.out.out_features],
        }
    spec["num_exits"] = model.num_layers
    setattr(model.config, EXIT_KEY, spec)
    # a slender backbone's remote-code map names a classifier class, not this layout
    model.config.__dict__.pop("auto_map", None)
    with staged_output_dir(folder, overwrite=overwrite) as path:  # replaced only once complete
        model.save_pretrained(path, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(path)
        if extra is not None:
            (path / "slimformer.json").write_text(json.dumps(extra, indent=2, default=str) + "\n")
    logger.info("saved multi-exit model to %s", folder)
    return Path(folder)


def load_exit(folder: str | Path):
    """Load a folder written by :func:`save_exit` (eval mode).

    Raises:
        ValueError: the folder's config has no (or an unsupported) ``slimformer_exit`` section.
    """
    from transformers import AutoConfig

    from slimformer.exits.model import MultiExitModel, exit_spec

    config = AutoConfig.from_pretrained(str(folder))
    exit_spec(config)
    return MultiExitModel.from_pretrained(str(folder), config=config).eval()


def update_rule(folder: str | Path, rule, calibration: dict | None = None) -> None:
    """Rewrite only the exit rule (and calibration record) in a saved folder's ``config.json``."""
    from slimformer.exits.model import EXIT_KEY

    path = Path(folder) / "config.json"
    data = json.loads(path.read_text())
    if not data.get(EXIT_KEY):
        raise ValueError(f"{str(folder)!r} is not a multi-exit model folder (no {EXIT_KEY!r} in config.json)")
    data[EXIT_KEY]["rule"] = rule.to_dict()
    if calibration is not None:
        data[EXIT_KEY]["calibration"] = calibration
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
