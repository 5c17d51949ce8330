"""Fine-tune a sequence classifier on a task, with HF Accelerate.

The loop is :class:`slimformer.trainer.Trainer` (AdamW, linear warmup/decay, gradient clipping on an
``accelerate.Accelerator``), so the same code runs on the CPU, one GPU, or many GPUs under
``accelerate launch``. Layout of ``out_dir`` after a run::

    out_dir/
        config.json, model.safetensors       the fine-tuned model (save_pretrained)
        tokenizer files                      (tokenizer.save_pretrained)
        finetune_report.json                 config, task, per-epoch loss and metrics, timing
        checkpoints/epoch-1/ ... epoch-N/    accelerator.save_state + trainer_state.json

A checkpoint is complete once its ``trainer_state.json`` exists (it is written last); ``resume``
continues from the latest complete one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from slimformer.checkpoints import CHECKPOINTS_DIR, TRAINER_STATE_NAME, check_resumable, latest_checkpoint
from slimformer.checkpoints import write_json as _write_json
from slimformer.config import ConfigBase, boolean, fraction, integer, non_negative, option, positive
from slimformer.data import TaskData, make_loader
from slimformer.trainer import MAX_GRAD_NORM, EpochStats, LoopSettings, Trainer, TrainOutcome, decay_groups

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINTS_DIR",
    "MAX_GRAD_NORM",
    "REPORT_NAME",
    "TRAINER_STATE_NAME",
    "check_labelled",
    "FinetuneConfig",
    "finetune",
    "latest_checkpoint",
    "train_copy",
    "train_on_batches",
]

REPORT_NAME = "finetune_report.json"
#: Config fields that may differ between a checkpoint and the run resuming it.
RESUMABLE_CHANGES = ("epochs", "max_steps")


# ----------------------------------------------------------------------------------------------
# config


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig(ConfigBase):
    """Hyper-parameters of :func:`finetune`. Every field is validated on construction."""

    epochs: int = option(2, "Passes over the training split.", integer(1))
    lr: float = option(5e-5, "Peak learning rate of AdamW, reached after warmup.", positive())
    batch_size: int = option(32, "Training examples per step (per process).", integer(1))
    max_length: int = option(64, "Inputs are truncated to this many tokens.", integer(2))
    warmup_ratio: float = option(
        0.06, "Fraction of the steps over which the learning rate rises linearly from 0.", fraction(open_high=True)
    )
    weight_decay: float = option(0.01, "AdamW weight decay; biases and LayerNorm weights get none.", non_negative())
    seed: int = option(0, "Random seed for shuffling, dropout and the like.", integer(0, 2**32 - 1))
    eval_batch_size: int = option(64, "Examples per forward pass when evaluating.", integer(1))
    group_by_length: bool = option(
        True, "Batch texts of similar length together (less padding, faster on CPU).", boolean()
    )
    max_steps: int | None = option(
        None,
        "Stop after this many optimizer steps (smoke runs); the LR schedule ends there.",
        integer(1, optional=True),
    )


# ----------------------------------------------------------------------------------------------
# output folder and data


def _clear_dir(out: Path) -> None:
    """Delete everything inside ``out``, refusing the root, home, the cwd or a folder holding it."""
    from slimformer.fsutil import remove_dir_contents

    remove_dir_contents(out)


def _checked_splits(model, task: TaskData) -> tuple[list, list]:
    """The train and validation examples, after checking them against the model's labels."""
    train_examples = task.split("train")
    val_examples = task.splits.get("validation", [])
    if not train_examples:
        raise ValueError(f"task {task.name!r} has no training examples")
    model_labels = model.config.num_labels
    if model_labels != task.num_labels:
        raise ValueError(f"the model has {model_labels} output classes but task {task.name!r} has {task.num_labels}")
    for split, examples in (("train", train_examples), ("validation", val_examples)):
        bad = next((e.label for e in examples if not 0 <= e.label < task.num_labels), None)
        if bad is not None:
            raise ValueError(f"{split} label {bad} is outside [0, {task.num_labels}) for task {task.name!r}")
    return train_examples, val_examples


# ----------------------------------------------------------------------------------------------
# training


def finetune(
    model,
    tokenizer,
    task: TaskData,
    config: FinetuneConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Fine-tune ``model`` on ``task``'s train split, checkpointing each epoch, and save it.

    The model is trained in place (on the accelerator's device) by :class:`slimformer.trainer.Trainer`.
    After every epoch it is evaluated on the validation split and a checkpoint is written to
    ``out_dir/checkpoints/epoch-{n}``. At the end the model (``id2label``/``label2id`` from
    ``task.label_names``), the tokenizer and ``finetune_report.json`` are saved in ``out_dir``.
    Only the main process writes files and logs.

    Args:
        model: a sequence classifier with ``config.num_labels == task.num_labels``.
        tokenizer: its tokenizer.
        task: the data; its ``validation`` split may be empty (no metrics then).
        config: hyper-parameters.
        out_dir: output folder; it must be missing or empty unless ``overwrite`` or ``resume``.
        resume: continue from the latest checkpoint in ``out_dir`` (a fresh start if there is
            none). Only ``epochs`` and ``max_steps`` may differ from the checkpoint's config.
        overwrite: delete the contents of ``out_dir`` first.
        progress: show a progress bar.

    Returns:
        The report, also written to ``out_dir/finetune_report.json``.

    Raises:
        FileExistsError: ``out_dir`` is not empty and neither ``overwrite`` nor ``resume`` is set.
        ValueError: inconsistent arguments, labels that do not fit the model, or a checkpoint
            that cannot be resumed with this config / data.
    """
    from accelerate.utils import set_seed

    t_start = time.perf_counter()
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: --resume continues, --overwrite restarts")
    train_examples, val_examples = _checked_splits(model, task)
    out = Path(out_dir)
    trainer = Trainer()
    found = trainer.open_run(out, resume=resume, overwrite=overwrite)
    if found is not None:
        check_resumable(
            *found, config.to_dict(), may_change=RESUMABLE_CHANGES, epochs=config.epochs,
            data_hash=task.content_hash, saved_hash=found[1]["task"]["content_hash"],
            hint="use --overwrite to start over",
        )  # fmt: skip
    set_seed(config.seed)
    settings = LoopSettings.of(config, desc="finetune", progress=progress)
    task_id = {"name": task.name, "content_hash": task.content_hash}
    outcome = trainer.fit(
        model, decay_groups(model, config.weight_decay), _train_loaders(train_examples, tokenizer, config),
        _classifier_loss, settings, record=_epoch_record(trainer, tokenizer, task, val_examples, config),
        checkpoints=out, meta={"config": config.to_dict(), "task": task_id}, resume_from=found,
    )  # fmt: skip
    report = _save_finetuned(trainer, outcome, tokenizer, task, config, out)
    report["wall_time_s"] = round(time.perf_counter() - t_start, 3)
    if trainer.is_main:
        _write_json(out / REPORT_NAME, report)
        trainer.log("saved the fine-tuned model and %s in %s", REPORT_NAME, out)
    trainer.accelerator.wait_for_everyone()
    return report


def _train_loaders(train_examples: list, tokenizer, config: FinetuneConfig):
    """Epoch ``e``'s loader: a new shuffle per epoch (seed + e), the same on every process."""

    def loader_for(epoch: int):
        return make_loader(
            train_examples, tokenizer, batch_size=config.batch_size, max_length=config.max_length,
            shuffle=True, group_by_length=config.group_by_length, seed=config.seed + epoch,
        )  # fmt: skip

    return loader_for


def _classifier_loss(net, batch: dict, step: int):
    """The model's own loss: mean cross-entropy over the batch."""
    # batch: input_ids, attention_mask (, token_type_ids) (B, T); labels (B,)
    loss = net(**batch).loss  # ()
    return loss, {"loss": loss.item()}


def _epoch_record(trainer: Trainer, tokenizer, task: TaskData, val_examples: list, config: FinetuneConfig):
    """The history entry of an epoch: its training loss, and the validation metrics when there is data."""
    from slimformer.evaluate import evaluate

    def record(stats: EpochStats, net) -> dict:
        val_metrics = None
        if val_examples:
            val_metrics = evaluate(
                net, tokenizer, val_examples, num_labels=task.num_labels, batch_size=config.eval_batch_size,
                max_length=config.max_length, progress=False, accelerator=trainer.accelerator,
            )  # fmt: skip
        return {
            "epoch": stats.epoch, "train_loss": stats.means["loss"], "steps": stats.steps,
            "global_step": stats.global_step, "lr": stats.lr, "time_s": round(stats.time_s, 3),
            "validation": val_metrics,
        }  # fmt: skip

    return record


def _save_finetuned(trainer: Trainer, outcome: TrainOutcome, tokenizer, task: TaskData, config, out: Path) -> dict:
    """Save the model (with its label names) and the tokenizer; return the report (without timing)."""
    full = config.epochs * outcome.steps_per_epoch
    stopped_early = config.max_steps is not None and outcome.global_step < full
    if stopped_early:
        trainer.log("stopped at max_steps=%s (step %d)", config.max_steps, outcome.global_step)
    net = outcome.model
    net.config.id2label = dict(enumerate(task.label_names))
    net.config.label2id = {name: i for i, name in enumerate(task.label_names)}
    history = outcome.history
    report = {
        "task": {
            "name": task.name,
            "content_hash": task.content_hash,
            "sizes": task.sizes(),
            "label_names": list(task.label_names),
        },
        "model": {"model_type": net.config.model_type, "parameters": sum(p.numel() for p in net.parameters())},
        "config": config.to_dict(),
        "epochs": history,
        "validation": history[-1]["validation"] if history else None,
        "global_step": outcome.global_step,
        "steps_per_epoch": outcome.steps_per_epoch,
        "total_steps": outcome.total_steps,
        "stopped_early": stopped_early,
        "resumed_from": str(outcome.resumed_from) if outcome.resumed_from is not None else None,
        "num_processes": trainer.num_processes,
    }
    trainer.accelerator.wait_for_everyone()
    if trainer.is_main:
        net.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
    return report


# ----------------------------------------------------------------------------------------------
# a plain step loop over pre-built batches (distillation-style training of a copy)


def train_on_batches(
    student,
    param_groups: list[dict],
    train_data: list,
    loss_fn,
    *,
    epochs: int,
    max_steps: int | None,
    warmup_ratio: float,
    seed: int,
    desc: str,
    frozen: tuple = (),
    progress: bool = True,
):
    """Train ``student`` in place on ``train_data`` (a list of tensor batches), reshuffled each epoch.

    :class:`slimformer.trainer.Trainer` without checkpoints: AdamW over ``param_groups`` (each with
    its ``lr`` or the first group's), linear warmup then decay, gradients clipped to
    :data:`MAX_GRAD_NORM`. ``loss_fn(model, batch)`` returns ``(loss, {part: float})`` with a
    ``loss`` part; the per-epoch means of the parts make the history. ``frozen`` modules (a
    teacher) are moved to the accelerator's device too.

    Returns:
        ``(model, history, steps)``: the unwrapped model in eval mode, one dict per epoch, steps taken.
    """
    import random

    rng = random.Random(seed)  # one stream over the epochs: epoch e's order follows epoch e - 1's

    def batches_for(epoch: int) -> list:
        order = list(range(len(train_data)))
        rng.shuffle(order)
        return [train_data[i] for i in order]

    def record(stats: EpochStats, net) -> dict:
        return {"epoch": stats.epoch, "steps": stats.steps, "time_s": round(stats.time_s, 1), **stats.means}

    settings = LoopSettings(
        epochs=epochs, lr=param_groups[0].get("lr", 1e-3), max_steps=max_steps, warmup_ratio=warmup_ratio,
        desc=desc, progress=progress,
    )  # fmt: skip
    outcome = Trainer().fit(
        student, param_groups, batches_for, lambda net, batch, step: loss_fn(net, batch), settings,
        frozen=frozen, record=record, postfix=lambda parts, lr: {"loss": f"{parts['loss']:.3f}"},
    )  # fmt: skip
    return outcome.model.eval(), outcome.history, outcome.global_step


def check_labelled(train_data: list, verb: str, source: str) -> None:
    """Refuse no batches or a batch without ``labels``, naming the ``verb`` and where batches come from.

    Raises:
        ValueError: no batches, or one without a ``labels`` entry.
    """
    if not train_data:
        raise ValueError(f"{verb} needs training batches ({source})")
    missing = next((i for i, b in enumerate(train_data) if "labels" not in b), None)
    if missing is not None:
        raise ValueError(f"{verb} needs labelled batches (a 'labels' entry in every batch; batch {missing} has none)")


def train_copy(
    student, param_groups: list[dict], train_data: list, loss_fn, config, *, teacher, desc: str, progress: bool
):
    """:func:`train_on_batches` with the schedule of ``config`` (``epochs``, ``max_steps``,
    ``warmup_ratio``, ``seed``), distilling from ``teacher``.

    Returns:
        ``(model, report)``: the model in eval mode; steps, examples per epoch and the history.
    """
    net, history, step = train_on_batches(
        student, param_groups, train_data, loss_fn, epochs=config.epochs, max_steps=config.max_steps,
        warmup_ratio=config.warmup_ratio, seed=config.seed, desc=desc, frozen=(teacher,), progress=progress,
    )  # fmt: skip
    return net, {"steps": step, "examples_per_epoch": sum(len(b["labels"]) for b in train_data), "epochs": history}
