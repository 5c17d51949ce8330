"""Train skim predictors (and fine-tune the model with them) on Hugging Face Accelerate.

``skim(model, SkimConfig(...), train_data)`` copies the classifier into a skimming model
(:func:`~slimformer.skim.model.build_skim_model`), trains it with hard Gumbel-softmax decisions
masked out of the keys exactly as inference removes them, and returns it in eval mode (the loop is
:class:`slimformer.trainer.Trainer`). The loss is
``(1 - distill) * CE + distill * KD(dense model) + skim_weight * mean kept fraction``.
With ``out_dir`` a checkpoint is written after every epoch (``checkpoints/epoch-N``: accelerator
state plus ``trainer_state.json``, written last) and ``resume=True`` continues from the latest one.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from slimformer.checkpoints import CHECKPOINTS_DIR, check_resumable, latest_checkpoint
from slimformer.losses import blend, logit_kl
from slimformer.skim.config import SkimConfig
from slimformer.trainer import EpochStats, LoopSettings, Trainer, decay_groups

logger = logging.getLogger(__name__)

__all__ = ["CHECKPOINTS_DIR", "SkimResult", "skim"]

RESUMABLE_CHANGES = ("epochs", "max_steps")


@dataclass
class SkimResult:
    """The trained skimming model (eval mode) and the training report."""

    model: object
    report: dict


def _examples_and_batches(train_data, tokenizer, config: SkimConfig):
    """Split ``train_data`` into (examples, None) or (None, pre-tokenized batches); validate it."""
    from slimformer.data import Example, TaskData

    if isinstance(train_data, TaskData):
        train_data = train_data.split("train")
    data = list(train_data)
    if not data:
        raise ValueError("train_data is empty: need training examples or batches")
    if all(isinstance(x, Example) for x in data):
        if tokenizer is None:
            raise ValueError("train_data holds Examples: pass tokenizer= to tokenize them")
        if config.max_examples is not None and config.max_examples < len(data):
            data = random.Random(config.seed).sample(data, config.max_examples)
        return data, None
    if all(isinstance(x, dict) and "input_ids" in x and "labels" in x for x in data):
        return None, data
    raise ValueError(
        "train_data must be a TaskData, a list of Examples, or a list of batches with input_ids and labels"
    )


def _param_groups(model, config: SkimConfig) -> list[dict]:
    """Predictors at ``predictor_lr``; the model's own weights at ``lr`` (frozen when it is 0)."""
    from slimformer.arch import get_adapter

    embeddings = getattr(get_adapter(model).base_model(model), "embeddings", None)
    if config.lr == 0:
        frozen = [p for n, p in model.named_parameters() if not n.startswith("skim_predictors.")]
    elif config.freeze_embeddings and embeddings is not None:
        frozen = list(embeddings.parameters())
    else:
        frozen = []
    for p in frozen:
        p.requires_grad_(False)

    def lr_of(module_name: str) -> float:
        return config.predictor_lr if module_name.startswith("skim_predictors") else config.lr

    return decay_groups(model, config.weight_decay, lr_of=lr_of)


def skim(
    model,
    config: SkimConfig,
    train_data,
    *,
    tokenizer=None,
    validation: Sequence | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> SkimResult:
    """Train token skimming for ``model`` (which is not changed; it serves as the KD teacher).

    Args:
        model: a fine-tuned sequence classifier of a supported family.
        config: hyper-parameters (see :class:`SkimConfig`).
        train_data: a :class:`~slimformer.data.TaskData` (its train split), a list of
            :class:`~slimformer.data.Example` (both need ``tokenizer``), or a list of tokenized
            batches with ``labels``.
        tokenizer: the model's tokenizer.
        validation: Examples (need ``tokenizer``) or batches scored after every epoch: accuracy
            and kept fractions with real removal. A TaskData's validation split is used by default.
        out_dir: folder for the per-epoch checkpoints (none written without it).
        resume: continue from the latest checkpoint in ``out_dir``.
        progress: show a progress bar (task loss, kept fraction).

    Returns:
        :class:`SkimResult`; the model is in eval mode with shift 0.

    Raises:
        ValueError: bad data, labels outside the model's classes, or an unresumable checkpoint.
    """
    from accelerate.utils import set_seed

    from slimformer.skim.model import build_skim_model

    if not isinstance(config, SkimConfig):
        raise ValueError(f"config must be a SkimConfig, got {type(config).__name__}")
    examples, batches, val_batches = _checked_data(model, train_data, tokenizer, validation, config)
    out = Path(out_dir) if out_dir is not None else None
    found = None
    if resume:
        if out is None:
            raise ValueError("resume=True needs out_dir, the folder holding the checkpoints")
        found = latest_checkpoint(out)  # same layout as fine-tuning: checkpoints/epoch-N
        if found is not None:
            check_resumable(
                *found, config.to_dict(), may_change=RESUMABLE_CHANGES, epochs=config.epochs,
                hint="use another out_dir to start over",
            )  # fmt: skip

    t_start = time.perf_counter()
    trainer = Trainer()
    set_seed(config.seed)
    skimmer = build_skim_model(
        model, predictor_hidden=config.predictor_hidden, init_keep_logit=config.init_keep_logit
    ).train()
    skimmer.skim_tau = config.tau
    teacher = model.eval() if config.distill > 0 else None
    outcome = trainer.fit(
        skimmer, _param_groups(skimmer, config), _loader_for(examples, batches, tokenizer, config),
        _loss_fn(teacher, config), LoopSettings.of(config, desc="skim", progress=progress),
        frozen=(teacher,) if teacher is not None else (), record=_record_for(val_batches), postfix=_postfix(config),
        checkpoints=out, meta={"config": config.to_dict()}, resume_from=found,
    )  # fmt: skip
    report = {
        "config": config.to_dict(),
        "epochs": outcome.history,
        "global_step": outcome.global_step,
        "total_steps": outcome.total_steps,
        "train_examples": len(examples) if examples is not None else None,
        "resumed_from": str(outcome.resumed_from) if outcome.resumed_from is not None else None,
        "wall_time_s": round(time.perf_counter() - t_start, 2),
    }
    return SkimResult(outcome.model.eval(), report)


def _checked_data(model, train_data, tokenizer, validation, config: SkimConfig):
    """``(examples, batches, validation batches)``: training examples or batches (one is ``None``)
    with labels the model has, and the validation data tokenized (``None`` without any)."""
    from slimformer.data import TaskData
    from slimformer.skim.measure import tokenized_batches

    if validation is None and isinstance(train_data, TaskData):
        validation = train_data.splits.get("validation") or None
    examples, batches = _examples_and_batches(train_data, tokenizer, config)
    num_labels = model.config.num_labels
    labels = [e.label for e in examples] if examples is not None else [int(y) for b in batches for y in b["labels"]]
    bad = next((y for y in labels if not 0 <= y < num_labels), None)
    if bad is not None:
        raise ValueError(f"training label {bad} is outside [0, {num_labels}) of the model")
    val_batches = None
    if validation:
        val = list(validation)
        is_batches = isinstance(val[0], dict)
        val_batches = val if is_batches else tokenized_batches(val, tokenizer, max_length=config.max_length)
    return examples, batches, val_batches


def _loader_for(examples, batches, tokenizer, config: SkimConfig):
    """The batches of each epoch: a length-grouped loader over examples, or the batches reshuffled."""
    from slimformer.data import make_loader

    def loader_for(epoch: int):
        if examples is not None:
            return make_loader(
                examples,
                tokenizer,
                batch_size=config.batch_size,
                max_length=config.max_length,
                group_by_length=True,
                seed=config.seed + epoch,
            )
        order = list(range(len(batches)))
        random.Random(config.seed + epoch).shuffle(order)
        return [batches[i] for i in order]

    return loader_for


def _loss_fn(teacher, config: SkimConfig):
    """``(1 - distill) * CE + distill * KD + skim_weight * kept``, with the task and kept parts."""
    import torch
    from torch.nn import functional as F

    def loss_fn(net, batch: dict, step: int):
        y = batch.pop("labels")  # (B,)
        out = net(**batch)  # train mode: Gumbel-masked skimming
        task = F.cross_entropy(out.logits, y)
        if teacher is not None:
            with torch.no_grad():
                t_logits = teacher(**batch).logits  # (B, C)
            task = blend(task, logit_kl(out.logits, t_logits, config.temperature), config.distill)
        kept = out.skim_kept.mean()  # mean over samples and skimmed layers
        return task + config.skim_weight * kept, {"task": task.item(), "kept": kept.item()}

    return loss_fn


def _postfix(config: SkimConfig):
    def postfix(parts: dict[str, float], lr: float) -> dict[str, str]:
        kept = parts["kept"]
        return {"task": f"{parts['task']:.4f}", "skim": f"{config.skim_weight * kept:.4f}", "kept": f"{kept:.3f}"}

    return postfix


def _record_for(val_batches):
    """The epoch's history entry; with validation batches, their accuracy and kept fractions."""
    from slimformer.skim.measure import measure_skim

    def record(stats: EpochStats, net) -> dict:
        entry = {
            "epoch": stats.epoch,
            "steps": stats.steps,
            "global_step": stats.global_step,
            "task_loss": stats.means.get("task", 0.0),
            "train_kept": stats.means.get("kept", 0.0),
            "time_s": round(stats.time_s, 2),
        }
        if val_batches is not None:
            entry["validation"] = measure_skim(net, val_batches)
            net.train()
        return entry

    return record
