"""Fine-tune a sequence classifier on a task, with HF Accelerate.

The loop is plain PyTorch (AdamW, linear warmup/decay, gradient clipping) driven through an
``accelerate.Accelerator``, so the same code runs on the CPU, one GPU, or many GPUs under
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

import json
import logging
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from slimformer.data import TaskData, make_loader

logger = logging.getLogger(__name__)

#: Gradients are clipped to this global L2 norm before each optimizer step (the usual BERT recipe).
MAX_GRAD_NORM = 1.0
CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE_NAME = "trainer_state.json"
REPORT_NAME = "finetune_report.json"
#: Config fields that may differ between a checkpoint and the run resuming it.
RESUMABLE_CHANGES = ("epochs", "max_steps")


# ----------------------------------------------------------------------------------------------
# config


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """Hyper-parameters of :func:`finetune`. Every field is validated on construction."""

    epochs: int = field(default=2, metadata={"help": "Passes over the training split."})
    lr: float = field(default=5e-5, metadata={"help": "Peak learning rate of AdamW, reached after warmup."})
    batch_size: int = field(default=32, metadata={"help": "Training examples per step (per process)."})
    max_length: int = field(default=64, metadata={"help": "Inputs are truncated to this many tokens."})
    warmup_ratio: float = field(
        default=0.06,
        metadata={"help": "Fraction of the steps over which the learning rate rises linearly from 0."},
    )
    weight_decay: float = field(
        default=0.01, metadata={"help": "AdamW weight decay; biases and LayerNorm weights get none."}
    )
    seed: int = field(default=0, metadata={"help": "Random seed for shuffling, dropout and the like."})
    eval_batch_size: int = field(default=64, metadata={"help": "Examples per forward pass when evaluating."})
    group_by_length: bool = field(
        default=True,
        metadata={"help": "Batch texts of similar length together (less padding, faster on CPU)."},
    )
    max_steps: int | None = field(
        default=None,
        metadata={"help": "Stop after this many optimizer steps (smoke runs); the LR schedule ends there."},
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            given = value = getattr(self, f.name)
            kind, ok, allowed = _RULES[f.name]
            if value is None and kind == "optional int":
                continue
            if kind == "bool":
                if not isinstance(value, bool):
                    raise ValueError(f"FinetuneConfig.{f.name}={given!r} is not allowed: it must be {allowed}")
                continue
            if kind == "float" and _is_int(value):
                value = float(value)  # accept lr=1 as 1.0, so JSON round trips compare equal
            if not (_is_int(value) if kind in ("int", "optional int") else _is_float(value)) or not ok(value):
                raise ValueError(f"FinetuneConfig.{f.name}={given!r} is not allowed: it must be {allowed}")
            object.__setattr__(self, f.name, value)

    def to_dict(self) -> dict:
        """Plain dict of the fields (JSON-serialisable)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FinetuneConfig:
        """Inverse of :meth:`to_dict`; missing keys take their defaults.

        Raises:
            ValueError: unknown keys (named), or an invalid value.
        """
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"unknown FinetuneConfig key(s): {', '.join(unknown)}; allowed: {', '.join(names)}")
        return cls(**d)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_float(v) -> bool:
    return isinstance(v, float) and math.isfinite(v)


# field -> (type, check, what is allowed)
_RULES = {
    "epochs": ("int", lambda v: v >= 1, "an integer >= 1"),
    "lr": ("float", lambda v: v > 0, "a finite number > 0"),
    "batch_size": ("int", lambda v: v >= 1, "an integer >= 1"),
    "max_length": ("int", lambda v: v >= 2, "an integer >= 2"),
    "warmup_ratio": ("float", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "weight_decay": ("float", lambda v: v >= 0, "a finite number >= 0"),
    "seed": ("int", lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)"),
    "eval_batch_size": ("int", lambda v: v >= 1, "an integer >= 1"),
    "group_by_length": ("bool", None, "true or false"),
    "max_steps": ("optional int", lambda v: v >= 1, "None or an integer >= 1"),
}


# ----------------------------------------------------------------------------------------------
# output folder and checkpoints


def _write_json(path: Path, obj) -> None:
    """Write ``obj`` as JSON atomically (a reader never sees half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _clear_dir(out: Path) -> None:
    """Delete everything inside ``out``, refusing the root, home, the cwd or a folder holding it."""
    from slimformer.fsutil import remove_dir_contents

    remove_dir_contents(out)


def _check_rng_states(ckpt: Path) -> None:
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


def _check_resumable(ckpt: Path, state: dict, config: FinetuneConfig, task: TaskData) -> None:
    saved, now = state["config"], config.to_dict()
    diff = [k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k]]
    if diff:
        detail = ", ".join(f"{k} (checkpoint {saved.get(k)!r}, now {now[k]!r})" for k in diff)
        raise ValueError(
            f"cannot resume from {str(ckpt)!r}: the config differs in {detail}; only "
            f"{' and '.join(RESUMABLE_CHANGES)} may change (use --overwrite to start over)"
        )
    if state["task"]["content_hash"] != task.content_hash:
        raise ValueError(
            f"cannot resume from {str(ckpt)!r}: it was trained on other data (content_hash "
            f"{state['task']['content_hash']}, now {task.content_hash})"
        )
    if state["epoch"] > config.epochs:
        raise ValueError(
            f"cannot resume from {str(ckpt)!r}: it has done {state['epoch']} epochs, more than epochs={config.epochs}"
        )
    _check_rng_states(ckpt)


def _param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on weight matrices/embeddings; none on biases and LayerNorm weights."""
    import torch

    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if name == "bias" or isinstance(module, torch.nn.LayerNorm):
                no_decay.append(p)
            else:
                decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


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

    The model is trained in place (on the accelerator's device). After every epoch it is evaluated
    on the validation split and a checkpoint is written to ``out_dir/checkpoints/epoch-{n}``. At
    the end the model (``id2label``/``label2id`` from ``task.label_names``), the tokenizer and
    ``finetune_report.json`` are saved in ``out_dir``. Only the main process writes files and logs.

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
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    from slimformer.evaluate import evaluate

    t_start = time.perf_counter()
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: --resume continues, --overwrite restarts")
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

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output folder {str(out)!r} is a file")
    accelerator = Accelerator()
    is_main = accelerator.is_main_process
    n_proc = accelerator.num_processes

    def log(msg: str, *args) -> None:
        if is_main:
            logger.info(msg, *args)

    # --- the output folder: refuse, clear, or find the checkpoint to resume from
    ckpt, state = None, None
    if out.is_dir() and any(out.iterdir()):
        if overwrite:
            accelerator.wait_for_everyone()  # every process has seen the old contents
            if is_main:
                log("overwrite: clearing %s", out)
                _clear_dir(out)
        elif resume:
            found = latest_checkpoint(out)
            if found is not None:
                ckpt, state = found
                _check_resumable(ckpt, state, config, task)
        else:
            raise FileExistsError(
                f"output folder {str(out)!r} is not empty: pass --overwrite to replace its contents "
                "or --resume to continue the training saved in it"
            )
    if resume and ckpt is None:
        log("resume: no checkpoint in %s, starting fresh", out)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()

    # --- data, optimizer, schedule
    set_seed(config.seed)
    epochs_done = state["epoch"] if state else 0
    global_step = state["global_step"] if state else 0
    history: list[dict] = list(state["history"]) if state else []

    def train_loader_for(epoch: int):
        # a new shuffle per epoch, padded per batch; the same on every process (sharded by prepare)
        return make_loader(
            train_examples,
            tokenizer,
            batch_size=config.batch_size,
            max_length=config.max_length,
            shuffle=True,
            group_by_length=config.group_by_length,
            seed=config.seed + epoch,
        )

    train_loader = train_loader_for(epochs_done)
    steps_per_epoch = math.ceil(len(train_loader) / n_proc)  # optimizer steps per epoch, per process
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    warmup_steps = math.ceil(config.warmup_ratio * total_steps)
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
    # accelerate steps a prepared scheduler once per process for every optimizer step
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup_steps * n_proc, total_steps * n_proc)
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    if ckpt is not None:
        accelerator.load_state(str(ckpt))  # weights, optimizer, scheduler and RNG states
        log("resumed from %s (epoch %d done, step %d)", ckpt, epochs_done, global_step)
    log(
        "fine-tuning on %s: %d train / %d validation examples, %d epochs x %d steps (total %d, warmup %d), "
        "%d process(es)",
        task.name,
        len(train_examples),
        len(val_examples),
        config.epochs,
        steps_per_epoch,
        total_steps,
        warmup_steps,
        n_proc,
    )

    # --- the loop
    bar = tqdm(
        total=total_steps,
        initial=global_step,
        desc="finetune",
        unit="step",
        disable=not (progress and is_main),
    )
    for epoch in range(epochs_done, config.epochs):
        if global_step >= total_steps:
            break
        if epoch != epochs_done:
            train_loader = accelerator.prepare_data_loader(train_loader_for(epoch))
        t_epoch = time.perf_counter()
        model.train()
        loss_sum, n_steps = 0.0, 0
        for batch in train_loader:
            # batch: input_ids, attention_mask (, token_type_ids) (B, T); labels (B,)
            loss = model(**batch).loss  # mean cross-entropy over the batch, ()
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            global_step += 1
            n_steps += 1
            loss_value = loss.item()
            loss_sum += loss_value
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if global_step >= total_steps:
                break
        # mean training loss of the epoch, averaged over processes
        train_loss = accelerator.reduce(torch.tensor(loss_sum / n_steps, device=accelerator.device), "mean")
        val_metrics = None
        if val_examples:
            val_metrics = evaluate(
                model,
                tokenizer,
                val_examples,
                num_labels=task.num_labels,
                batch_size=config.eval_batch_size,
                max_length=config.max_length,
                progress=False,
                accelerator=accelerator,
            )
        record = {
            "epoch": epoch + 1,
            "train_loss": train_loss.item(),
            "steps": n_steps,
            "global_step": global_step,
            "lr": scheduler.get_last_lr()[0],
            "time_s": round(time.perf_counter() - t_epoch, 3),
            "validation": val_metrics,
        }
        history.append(record)
        log(
            "epoch %d/%d: train loss %.4f, validation %s",
            epoch + 1,
            config.epochs,
            record["train_loss"],
            val_metrics,
        )

        # checkpoint; RNG states are saved after evaluation, exactly where the next epoch starts
        ckpt_dir = out / CHECKPOINTS_DIR / f"epoch-{epoch + 1}"
        accelerator.save_state(str(ckpt_dir))
        if is_main:
            trainer_state = {
                "epoch": epoch + 1,
                "global_step": global_step,
                "config": config.to_dict(),
                "task": {"name": task.name, "content_hash": task.content_hash},
                "validation": val_metrics,
                "history": history,
            }
            _write_json(ckpt_dir / TRAINER_STATE_NAME, trainer_state)  # last: marks it complete
        accelerator.wait_for_everyone()
    bar.close()

    # --- save the model, the tokenizer and the report
    stopped_early = config.max_steps is not None and global_step < config.epochs * steps_per_epoch
    if stopped_early:
        log("stopped at max_steps=%s (step %d)", config.max_steps, global_step)
    net = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    net.config.id2label = dict(enumerate(task.label_names))
    net.config.label2id = {name: i for i, name in enumerate(task.label_names)}
    report = {
        "task": {
            "name": task.name,
            "content_hash": task.content_hash,
            "sizes": task.sizes(),
            "label_names": list(task.label_names),
        },
        "model": {
            "model_type": net.config.model_type,
            "parameters": sum(p.numel() for p in net.parameters()),
        },
        "config": config.to_dict(),
        "epochs": history,
        "validation": history[-1]["validation"] if history else None,
        "global_step": global_step,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "stopped_early": stopped_early,
        "resumed_from": str(ckpt) if ckpt is not None else None,
        "num_processes": n_proc,
        "wall_time_s": round(time.perf_counter() - t_start, 3),
    }
    accelerator.wait_for_everyone()
    if is_main:
        net.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        _write_json(out / REPORT_NAME, report)
        log("saved the fine-tuned model and %s in %s", REPORT_NAME, out)
    accelerator.wait_for_everyone()
    accelerator.free_memory()  # drop the accelerator's references to model / optimizer / loaders
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

    AdamW over ``param_groups`` (each with its ``lr`` or the first group's), linear warmup then
    decay, gradients clipped to :data:`MAX_GRAD_NORM`, on an ``accelerate.Accelerator``.
    ``loss_fn(model, batch)`` returns ``(loss, {part: float})``; the per-epoch means of the parts
    make the history. ``frozen`` modules (a teacher) are moved to the accelerator's device too.

    Returns:
        ``(model, history, steps)``: the unwrapped model in eval mode, one dict per epoch, steps taken.
    """
    import random

    import torch
    from accelerate import Accelerator
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    accelerator = Accelerator()
    steps_per_epoch = len(train_data)
    total = epochs * steps_per_epoch
    if max_steps is not None:
        total = min(total, max_steps)
    optimizer = torch.optim.AdamW(param_groups, lr=param_groups[0].get("lr", 1e-3))
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(warmup_ratio * total), total)
    wrapped, optimizer, scheduler = accelerator.prepare(student, optimizer, scheduler)
    for module in frozen:
        module.to(accelerator.device)
    net = accelerator.unwrap_model(wrapped)
    rng = random.Random(seed)
    history, step = [], 0
    bar = tqdm(total=total, desc=desc, unit="step", disable=not progress)
    wrapped.train()
    for epoch in range(epochs):
        order = list(range(steps_per_epoch))
        rng.shuffle(order)
        sums: dict[str, float] = {}
        t_epoch, n = time.perf_counter(), 0
        for idx in order:
            if step >= total:
                break
            batch = {k: v.to(accelerator.device) for k, v in train_data[idx].items()}
            loss, parts = loss_fn(net, batch)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(wrapped.parameters(), MAX_GRAD_NORM)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step, n = step + 1, n + 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.update(1)
            bar.set_postfix(loss=f"{parts['loss']:.3f}")
        if n:
            history.append(
                {"epoch": epoch + 1, "steps": n, "time_s": round(time.perf_counter() - t_epoch, 1),
                 **{k: v / n for k, v in sums.items()}}
            )  # fmt: skip
            logger.info("%s epoch %d: %s", desc, epoch + 1, history[-1])
    bar.close()
    net = accelerator.unwrap_model(wrapped, keep_fp32_wrapper=False).eval()
    accelerator.free_memory()
    return net, history, step
