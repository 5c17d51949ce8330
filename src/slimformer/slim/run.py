"""The run folder of a slimming run (the gated model in slimformer's own format), and slimming as one method.

::

    RUN/
        slim_run.json        format marker, SlimConfig, group size, task, training report
        student/             the trained dense network (a plain transformers folder + tokenizer)
        gates.safetensors    head_logits (L, H), ffn_logits (L, G)
        checkpoints/epoch-N/ Accelerate states (resume)

A run folder is not a model folder: :func:`slimformer.slim.extract` turns it into one.
:func:`run_slim` is the ``slim`` method of :mod:`slimformer.methods`: train, then extract one budget.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from slimformer.budget import Budget
from slimformer.config import FlatConfig, budget_or_text, option, part
from slimformer.methods import Result
from slimformer.slim.config import SlimConfig

logger = logging.getLogger(__name__)

RUN_FILE = "slim_run.json"
RUN_FORMAT = "slimformer-slim-run"
RUN_VERSION = 1
STUDENT_DIR = "student"
GATES_FILE = "gates.safetensors"


def is_run_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a finished slimming run."""
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("format") == RUN_FORMAT
    except json.JSONDecodeError:
        return False


def save_run(slimmed, tokenizer, folder: str | Path) -> Path:
    """Write the gated model (student weights, gate logits, config and report) into ``folder``."""
    from safetensors.torch import save_file

    from slimformer.export import save_model

    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    save_model(slimmed.model, tokenizer, path / STUDENT_DIR, overwrite=True)
    gates = slimmed.gates
    save_file(
        {
            "head_logits": gates.head_logits.detach().cpu().contiguous(),
            "ffn_logits": gates.ffn_logits.detach().cpu().contiguous(),
        },
        str(path / GATES_FILE),
    )
    meta = {
        "format": RUN_FORMAT,
        "version": RUN_VERSION,
        "group_size": gates.group_size,
        **slimmed.info,
    }
    tmp = path / (RUN_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, default=str) + "\n")
    tmp.replace(path / RUN_FILE)  # written last: its presence marks a finished run
    logger.info("saved slimming run to %s", path)
    return path


def load_run(folder: str | Path):
    """Load a run folder: ``(SlimmedModel in eval mode, tokenizer)``.

    Raises:
        FileNotFoundError: not a finished run folder (names what is missing).
        ValueError: gate shapes that do not match the student.
    """
    import torch
    from safetensors.torch import load_file

    from slimformer.models import load_model
    from slimformer.slim.gates import SlimmedModel

    path = Path(folder)
    if not is_run_folder(path):
        hint = (
            " (training still running or interrupted? continue it with --resume)"
            if (path / "checkpoints").is_dir()
            else ""
        )
        raise FileNotFoundError(f"{str(path)!r} is not a finished slimming run: no valid {RUN_FILE}{hint}")
    meta = json.loads((path / RUN_FILE).read_text())
    model, tokenizer = load_model(str(path / STUDENT_DIR))
    tensors = load_file(str(path / GATES_FILE))
    head, ffn = tensors["head_logits"], tensors["ffn_logits"]
    slimmed = SlimmedModel(model, meta["group_size"])
    gates = slimmed.gates
    if head.shape != gates.head_logits.shape or ffn.shape != gates.ffn_logits.shape:
        raise ValueError(
            f"{path / GATES_FILE}: gate shapes {tuple(head.shape)} / {tuple(ffn.shape)} do not match the student's "
            f"{tuple(gates.head_logits.shape)} / {tuple(gates.ffn_logits.shape)}"
        )
    with torch.no_grad():
        gates.head_logits.copy_(head)
        gates.ffn_logits.copy_(ffn)
    slimmed.info = {k: v for k, v in meta.items() if k not in ("format", "version", "group_size")}
    return slimmed.eval(), tokenizer


@dataclass(frozen=True, kw_only=True)
class SlimStepConfig(FlatConfig):
    """Differentiable slimming as one method: train the gates (:class:`SlimConfig`), then extract
    the subnetwork that fits ``budget`` (a memory, params or macs budget of the whole model)."""

    budget: Budget = option(
        help="what the extracted model must fit, e.g. memory=0.5 or params=10M",
        check=budget_or_text(kinds=("memory", "params", "macs")),
    )
    slim: SlimConfig = part(SlimConfig, "training")


def run_slim(model, config: SlimStepConfig, data) -> Result:
    """Train gates on ``data.task`` (the model is trained in place: pass a copy), then extract ``config.budget``.

    Returns:
        the extracted plain model and ``{"train": the training report, "extract": the extraction report}``.
    """
    from slimformer.slim.extraction import extract
    from slimformer.slim.train import slim

    slimmed = slim(model, config.slim, data.task, tokenizer=data.tokenizer, progress=data.progress)
    extracted = extract(slimmed, config.budget, tokenizer=data.tokenizer)
    train_report = json.loads(json.dumps(slimmed.info.get("report", {}), default=str))
    return Result(model=extracted.model, report={"train": train_report, "extract": extracted.report})
