"""Training checkpoints: finding the latest complete one and refusing to resume what would differ.

``run/checkpoints/epoch-N`` holds ``accelerator.save_state`` (weights, AdamW moments, scheduler,
RNG states) and ``trainer_state.json``, written last, which marks it complete. Resuming is refused
with another config, other data, fewer epochs, or missing / corrupt RNG states (resuming would
silently not be reproducible).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from slimformer.fsutil import atomic_write_text

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE_NAME = "trainer_state.json"


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as JSON atomically (a reader never sees half a file; per-process temp names)."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def latest_checkpoint(out_dir: str | Path) -> tuple[Path, dict] | None:
    """The latest complete checkpoint in ``out_dir/checkpoints`` and its trainer state, or ``None``."""
    found = []
    for d in (Path(out_dir) / CHECKPOINTS_DIR).glob("epoch-*"):
        m = re.fullmatch(r"epoch-(\d+)", d.name)
        if m and (d / TRAINER_STATE_NAME).is_file():
            found.append((int(m[1]), d))
    if not found:
        return None
    _, ckpt = max(found)
    return ckpt, json.loads((ckpt / TRAINER_STATE_NAME).read_text())


def check_resumable(
    ckpt: Path,
    state: dict,
    config: dict,
    *,
    may_change: tuple[str, ...],
    epochs: int,
    data_hash: str | None = None,
    saved_hash: str | None = None,
    hint: str = "use overwrite to start over",
) -> None:
    """Refuse to resume ``state`` (saved in ``ckpt``) with another config, other data or fewer epochs.

    Args:
        config: the new run's config as a dict; keys outside ``may_change`` must equal the saved ones.
        data_hash, saved_hash: the data's identity now and in the checkpoint (not checked if ``None``).
        hint: how to start over instead, appended to the config message.

    Raises:
        ValueError: naming each differing field with both values, the data hashes, or the epochs.
    """
    saved = state["config"]
    diff = [k for k in config if k not in may_change and saved.get(k) != config[k]]
    if diff:
        detail = ", ".join(f"{k} (checkpoint {saved.get(k)!r}, now {config[k]!r})" for k in diff)
        raise ValueError(
            f"cannot resume from {str(ckpt)!r}: the config differs in {detail}; only "
            f"{', '.join(may_change)} may change ({hint})"
        )
    if data_hash is not None and saved_hash != data_hash:
        raise ValueError(
            f"cannot resume from {str(ckpt)!r}: it was trained on other data "
            f"(content_hash {saved_hash}, now {data_hash})"
        )
    if state["epoch"] > epochs:
        raise ValueError(
            f"cannot resume from {str(ckpt)!r}: it has done {state['epoch']} epochs, more than epochs={epochs}"
        )
    check_rng_states(ckpt)


def check_rng_states(ckpt: Path) -> None:
    """Refuse a checkpoint whose random states are missing or unreadable (accelerate would skip them)."""
    import pickle

    import torch

    files = sorted(ckpt.glob("random_states_*.pkl"))
    if not files:
        raise ValueError(f"cannot resume from {str(ckpt)!r}: no random_states_*.pkl (use --overwrite to start over)")
    for f in files:
        try:
            torch.load(f, weights_only=False)
        except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, OSError, AttributeError) as e:
            raise ValueError(
                f"cannot resume from {str(ckpt)!r}: {f.name} is corrupt ({type(e).__name__}); resuming would "
                "not be reproducible (use --overwrite to start over)"
            ) from None
