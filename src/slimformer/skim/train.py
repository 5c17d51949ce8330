"""Train skim predictors (and fine-tune the model with them) on Hugging Face Accelerate.

``skim(model, SkimConfig(...), train_data)`` copies the classifier into a skimming model
(:func:`~slimformer.skim.model.build_skim_model`), trains it with hard Gumbel-softmax decisions
masked out of the keys exactly as inference removes them, and returns it in eval mode. The loss is
``(1 - distill) * CE + distill * KD(dense model) + skim_weight * mean kept fraction``.
With ``out_dir`` a checkpoint is written after every epoch (``checkpoints/epoch-N``: accelerator
state plus ``trainer_state.json``, written last) and ``resume=True`` continues from the latest one.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from slimformer.skim.config import SkimConfig

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
STATE_NAME = "trainer_state.json"
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
    import torch

    from slimformer.arch import get_adapter

    embeddings = getattr(get_adapter(model).base_model(model), "embeddings", None)
    frozen = set()
    if config.lr == 0:
        frozen = {id(p) for n, p in model.named_parameters() if not n.startswith("skim_predictors.")}
    elif config.freeze_embeddings and embeddings is not None:
        frozen = {id(p) for p in embeddings.parameters()}
    groups = {k: [] for k in ("pred", "pred_nd", "decay", "no_decay")}
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in frozen:
                p.requires_grad_(False)
                continue
            no_decay = name == "bias" or isinstance(module, torch.nn.LayerNorm)
            prefix = "pred" if module_name.startswith("skim_predictors") else ""
            key = (prefix + ("_nd" if no_decay else "")) if prefix else ("no_decay" if no_decay else "decay")
            groups[key].append(p)
    spec = {
        "pred": (config.predictor_lr, config.weight_decay),
        "pred_nd": (config.predictor_lr, 0.0),
        "decay": (config.lr, config.weight_decay),
        "no_decay": (config.lr, 0.0),
    }
    return [{"params": ps, "lr": spec[k][0], "weight_decay": spec[k][1]} for k, ps in groups.items() if ps]


def _check_resumable(ckpt: Path, state: dict, config: SkimConfig) -> None:
    saved, now = state["config"], config.to_dict()
    diff = [k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k]]
    if diff:
        detail = ", ".join(f"{k} (checkpoint {saved.get(k)!r}, now {now[k]!r})" for k in diff)
        raise ValueError(f"cannot resume from {str(ckpt)!r}: the config differs in {detail}")


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
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    from slimformer.data import TaskData, make_loader
    from slimformer.skim.measure import measure_skim, tokenized_batches
    from slimformer.skim.model import build_skim_model
    from slimformer.train import latest_checkpoint

    if not isinstance(config, SkimConfig):
        raise ValueError(f"config must be a SkimConfig, got {type(config).__name__}")
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

    t_start = time.perf_counter()
    accelerator = Accelerator()
    set_seed(config.seed)
    skimmer = build_skim_model(
        model, predictor_hidden=config.predictor_hidden, init_keep_logit=config.init_keep_logit
    ).train()
    skimmer.skim_tau = config.tau
    teacher = None
    if config.distill > 0:
        teacher = model.to(accelerator.device).eval()

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

    out = Path(out_dir) if out_dir is not None else None
    ckpt, state = (None, None)
    if resume:
        if out is None:
            raise ValueError("resume=True needs out_dir, the folder holding the checkpoints")
        found = latest_checkpoint(out)  # same layout as fine-tuning: checkpoints/epoch-N
        if found is not None:
            ckpt, state = found
            _check_resumable(ckpt, state, config)
    epochs_done = state["epoch"] if state else 0
    step = state["global_step"] if state else 0
    history: list[dict] = list(state["history"]) if state else []

    steps_per_epoch = math.ceil(len(loader_for(0)) / accelerator.num_processes)
    total = (
        config.epochs * steps_per_epoch
        if config.max_steps is None
        else min(config.epochs * steps_per_epoch, config.max_steps)
    )
    optimizer = torch.optim.AdamW(_param_groups(skimmer, config))
    n = accelerator.num_processes
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(config.warmup_ratio * total) * n, total * n)
    skimmer, optimizer, scheduler = accelerator.prepare(skimmer, optimizer, scheduler)
    if ckpt is not None:
        accelerator.load_state(str(ckpt))
        logger.info("resumed skim training from %s (epoch %d, step %d)", ckpt, epochs_done, step)
    logger.info("skim training: %d epochs x %d steps (total %d)", config.epochs, steps_per_epoch, total)

    bar = tqdm(
        total=total, initial=step, desc="skim", unit="step", disable=not (progress and accelerator.is_main_process)
    )
    kd_t = config.temperature
    for epoch in range(epochs_done, config.epochs):
        if step >= total:
            break
        skimmer.train()
        loader = accelerator.prepare_data_loader(loader_for(epoch)) if examples is not None else loader_for(epoch)
        sums, n_steps, t_epoch = {"task": 0.0, "kept": 0.0}, 0, time.perf_counter()
        for batch in loader:
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            y = batch.pop("labels")  # (B,)
            out_ = skimmer(**batch)  # train mode: Gumbel-masked skimming
            task = torch.nn.functional.cross_entropy(out_.logits, y)
            if teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(**batch).logits  # (B, C)
                kd = torch.nn.functional.kl_div(
                    torch.log_softmax(out_.logits / kd_t, -1), torch.softmax(t_logits / kd_t, -1), reduction="batchmean"
                ) * (kd_t**2)
                task = (1 - config.distill) * task + config.distill * kd
            kept = out_.skim_kept.mean()  # mean over samples and skimmed layers
            loss = task + config.skim_weight * kept
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(skimmer.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            n_steps += 1
            sums["task"] += task.item()
            sums["kept"] += kept.item()
            bar.update(1)
            bar.set_postfix(
                task=f"{task.item():.4f}", skim=f"{config.skim_weight * kept.item():.4f}", kept=f"{kept.item():.3f}"
            )
            if step >= total:
                break
        record = {
            "epoch": epoch + 1,
            "steps": n_steps,
            "global_step": step,
            "task_loss": sums["task"] / max(1, n_steps),
            "train_kept": sums["kept"] / max(1, n_steps),
            "time_s": round(time.perf_counter() - t_epoch, 2),
        }
        if val_batches is not None:
            net = accelerator.unwrap_model(skimmer)
            record["validation"] = measure_skim(net, val_batches)
            net.train()
        history.append(record)
        logger.info("skim epoch %d: %s", epoch + 1, {k: v for k, v in record.items() if k != "validation"})
        if out is not None:
            ckpt_dir = out / CHECKPOINTS_DIR / f"epoch-{epoch + 1}"
            accelerator.save_state(str(ckpt_dir))
            if accelerator.is_main_process:
                st = {"epoch": epoch + 1, "global_step": step, "config": config.to_dict(), "history": history}
                (ckpt_dir / STATE_NAME).write_text(json.dumps(st, indent=2, default=str) + "\n")  # last: complete
        accelerator.wait_for_everyone()
    bar.close()
    net = accelerator.unwrap_model(skimmer, keep_fp32_wrapper=False).eval()
    report = {
        "config": config.to_dict(),
        "epochs": history,
        "global_step": step,
        "total_steps": total,
        "train_examples": len(examples) if examples is not None else None,
        "resumed_from": str(ckpt) if ckpt is not None else None,
        "wall_time_s": round(time.perf_counter() - t_start, 2),
    }
    accelerator.free_memory()
    return SkimResult(net, report)
