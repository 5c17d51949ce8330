"""Train once: gates and weights learn to run at every encoder-memory budget (``slim``).

Each step draws a budget ``b ~ U[min_budget, max_budget]`` (a fraction of the dense encoder's
memory), keeps the top-ranked units that fit it (hard masks, straight-through into the gate
logits, see :mod:`slimformer.slim.gates`) and minimises

    task_weight   * CE(student logits, labels)
  + logit_weight  * T^2 KL(teacher / T || student / T)           dense fine-tuned teacher
  + hidden_weight * mean_l ||h_l - h_l^teacher||^2 / ||h_l^teacher||^2   every layer's output
  + budget_weight * (E[memory] / dense encoder memory - b)^2      E over keep probabilities
  + sparsity_weight * mean_u p_u * cost_u / mean cost              sparsity prior, per byte

The loop runs on Accelerate with one checkpoint per epoch (``RUN/checkpoints/epoch-N``, complete
once its ``trainer_state.json`` exists) and ``resume``, like :func:`slimformer.train.finetune`.
The progress bar shows the task loss, the budget loss and the expected memory.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from slimformer.data import Example, TaskData, make_loader
from slimformer.slim.config import SlimConfig
from slimformer.slim.gates import SlimmedModel
from slimformer.slim.run import save_run
from slimformer.train import (
    CHECKPOINTS_DIR,
    TRAINER_STATE_NAME,
    _clear_dir,
    _param_groups,
    _write_json,
    latest_checkpoint,
)

logger = logging.getLogger(__name__)

#: Config fields that may change between a checkpoint and the run resuming it.
RESUMABLE_CHANGES = ("epochs", "max_steps", "eval_budgets", "eval_batch_size")


def slim(
    model,
    config: SlimConfig,
    train_data: TaskData | list[Example],
    *,
    tokenizer,
    teacher=None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> SlimmedModel:
    """Train gates (and weights) of ``model`` so that any memory budget can be extracted afterwards.

    Args:
        model: a fine-tuned, unpruned sequence classifier; it becomes the student (trained in place).
        config: hyper-parameters.
        train_data: a :class:`TaskData` (train split trained on; validation evaluated per epoch
            at ``config.eval_budgets``) or a list of examples.
        tokenizer: the model's tokenizer.
        teacher: the dense model distilled from (default: a frozen copy of ``model`` as given).
        out_dir: the run folder (checkpoints, then the gated model: see :mod:`slimformer.slim.run`);
            ``None`` keeps everything in memory.
        resume: continue from the latest checkpoint in ``out_dir``.
        overwrite: empty ``out_dir`` first.
        progress: show a progress bar.

    Returns:
        The trained :class:`SlimmedModel` (in eval mode); ``.info["report"]`` holds the history.

    Raises:
        FileExistsError: ``out_dir`` is not empty and neither ``resume`` nor ``overwrite`` is set.
        ValueError: no examples, labels outside the model's classes, a pruned model, or a
            checkpoint made with another config or data.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    t_start = time.perf_counter()
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: resume continues, overwrite restarts")
    if not isinstance(config, SlimConfig):
        raise ValueError(f"config must be a SlimConfig, got {type(config).__name__}")
    task = train_data if isinstance(train_data, TaskData) else None
    examples = list(task.split("train") if task else train_data)
    val = list(task.splits.get("validation", [])) if task else []
    if not examples:
        raise ValueError("slim needs at least one training example")
    n_labels = model.config.num_labels
    bad = next((e.label for e in examples + val if not 0 <= e.label < n_labels), None)
    if bad is not None:
        raise ValueError(f"label {bad} is outside the model's {n_labels} classes")
    data_hash = task.content_hash if task else _hash_examples(examples)

    out = Path(out_dir) if out_dir is not None else None
    ckpt = state = None
    if out is not None:
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(f"run folder {str(out)!r} is a file")
        if out.is_dir() and any(out.iterdir()):
            if overwrite:
                _clear_dir(out)
            elif resume:
                found = latest_checkpoint(out)
                if found is not None:
                    ckpt, state = found
                    _check_resumable(ckpt, state, config, data_hash)
            else:
                raise FileExistsError(
                    f"run folder {str(out)!r} is not empty: pass overwrite (--overwrite) to start over "
                    "or resume (--resume) to continue the training saved in it"
                )
        out.mkdir(parents=True, exist_ok=True)

    set_seed(config.seed)
    teacher = copy.deepcopy(model) if teacher is None else teacher
    teacher.eval().requires_grad_(False)
    teacher_net = SlimmedModel(teacher, config.group_size)
    slimmed = SlimmedModel(model, config.group_size)
    if ckpt is None:
        _init_gates(slimmed, teacher, examples, tokenizer, config, progress=progress)

    accelerator = Accelerator()
    n_steps_epoch = math.ceil(len(examples) / config.batch_size)
    total = (
        config.epochs * n_steps_epoch
        if config.max_steps is None
        else min(config.max_steps, config.epochs * n_steps_epoch)
    )
    groups = _param_groups(slimmed.model, config.weight_decay)
    groups.append({"params": list(slimmed.gates.parameters()), "weight_decay": 0.0, "lr": config.gate_lr})
    optimizer = torch.optim.AdamW(groups, lr=config.lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(config.warmup_ratio * total), total)
    slimmed, optimizer, scheduler = accelerator.prepare(slimmed, optimizer, scheduler)
    net: SlimmedModel = accelerator.unwrap_model(slimmed)
    teacher_net.to(accelerator.device)
    epochs_done = state["epoch"] if state else 0
    step = state["global_step"] if state else 0
    history: list[dict] = list(state["history"]) if state else []
    if ckpt is not None:
        accelerator.load_state(str(ckpt))
        logger.info("resumed from %s (epoch %d, step %d)", ckpt, epochs_done, step)
    logger.info(
        "slimming: %d examples, %d epochs x %d steps (total %d)", len(examples), config.epochs, n_steps_epoch, total
    )

    bar = tqdm(total=total, initial=step, desc="slim", unit="step", disable=not progress)
    enc_mb = net.costs.encoder / 1e6  # expected memory is shown in MB of encoder weights and % of dense
    for epoch in range(epochs_done, config.epochs):
        if step >= total:
            break
        loader = accelerator.prepare_data_loader(
            make_loader(
                examples, tokenizer, batch_size=config.batch_size, max_length=config.max_length,
                shuffle=True, group_by_length=True, seed=config.seed + epoch,
            )
        )  # fmt: skip
        slimmed.train()
        sums, n = {"task": 0.0, "distill": 0.0, "budget": 0.0, "memory": 0.0}, 0
        t_epoch = time.perf_counter()
        for batch in loader:
            # one budget per step, from the step number alone, so a resumed run draws the same ones
            target = random.Random(f"{config.seed}:{step}").uniform(config.min_budget, config.max_budget)
            terms = _step_loss(net, teacher_net, batch, target, config)
            accelerator.backward(terms["loss"])
            accelerator.clip_grad_norm_(net.model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            n += 1
            for k in sums:
                sums[k] += terms[k]
            bar.update(1)
            bar.set_postfix(
                task=f"{terms['task']:.3f}", budget=f"{terms['budget']:.4f}",
                E_mem=f"{terms['memory'] * enc_mb:.1f}MB/{terms['memory']:.0%}", target=f"{target:.0%}",
            )  # fmt: skip
            if step >= total:
                break
        record = {
            "epoch": epoch + 1,
            "global_step": step,
            **{f"mean_{k}": v / max(n, 1) for k, v in sums.items()},
            "time_s": round(time.perf_counter() - t_epoch, 1),
            "validation": _validate(net, tokenizer, val, config) if val else None,
        }
        history.append(record)
        logger.info("epoch %d: %s", epoch + 1, record)
        if out is not None:
            ckpt_dir = out / CHECKPOINTS_DIR / f"epoch-{epoch + 1}"
            accelerator.save_state(str(ckpt_dir))
            trainer = {
                "epoch": epoch + 1,
                "global_step": step,
                "config": config.to_dict(),
                "data_hash": data_hash,
                "history": history,
            }
            _write_json(ckpt_dir / TRAINER_STATE_NAME, trainer)  # last: marks the checkpoint complete
    bar.close()
    net.eval()
    net.info = {
        "task": {"name": task.name, "content_hash": task.content_hash} if task else {"content_hash": data_hash},
        "config": config.to_dict(),
        "report": {
            "history": history,
            "global_step": step,
            "total_steps": total,
            "resumed_from": str(ckpt) if ckpt else None,
            "wall_time_s": round(time.perf_counter() - t_start, 1),
        },
    }
    if out is not None:
        save_run(net, tokenizer, out)
    accelerator.free_memory()
    return net


def _step_loss(net: SlimmedModel, teacher: SlimmedModel, batch: dict, target: float, config: SlimConfig) -> dict:
    """Loss of one batch at one sampled budget; floats of the terms for the progress bar."""
    labels = batch.pop("labels")  # (B,)
    with torch.no_grad():
        t_out = teacher(**batch, hidden_states=True)
    selection = net.select(target)
    s_out = net(**batch, selection=selection, straight_through=True, hidden_states=True)
    task = F.cross_entropy(s_out.logits, labels)
    temp = config.temperature
    kd = F.kl_div(
        F.log_softmax(s_out.logits / temp, -1), F.log_softmax(t_out.logits / temp, -1), log_target=True,
        reduction="batchmean",
    ) * temp**2  # fmt: skip
    tokens = batch["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
    hid = sum(
        (((hs - ht) ** 2) * tokens).sum() / ((ht**2) * tokens).sum().clamp(min=1e-6)
        for hs, ht in zip(s_out.hidden_states, t_out.hidden_states, strict=True)
    ) / len(s_out.hidden_states)
    expected = net.gates.expected_cost(net.costs) / net.costs.encoder  # () fraction of the dense encoder
    budget = (expected - target) ** 2
    p_h, p_g = net.gates.keep_probs()
    c_h, c_g = net.gates.unit_cost_tensors(net.costs)
    mean_cost = torch.cat([c_h.flatten(), c_g.flatten()]).mean()
    sparsity = torch.cat([(p_h * c_h.float()).flatten(), (p_g * c_g.float()).flatten()]).mean() / mean_cost.float()
    loss = (
        config.task_weight * task + config.logit_weight * kd + config.hidden_weight * hid
        + config.budget_weight * budget + config.sparsity_weight * sparsity
    )  # fmt: skip
    distill = config.logit_weight * kd + config.hidden_weight * hid
    return {
        "loss": loss,
        "task": task.item(),
        "distill": distill.item(),
        "budget": budget.item(),
        "memory": expected.item(),
    }


def _validate(net: SlimmedModel, tokenizer, examples: list[Example], config: SlimConfig) -> dict:
    """Validation accuracy at each of ``config.eval_budgets``."""
    from slimformer.evaluate import evaluate

    out = {}
    for b in config.eval_budgets:
        with net.at(b):
            metrics = evaluate(
                net,
                tokenizer,
                examples,
                batch_size=config.eval_batch_size,
                max_length=config.max_length,
                progress=False,
            )
        out[str(b)] = metrics["accuracy"]
    net.train()
    return out


@torch.no_grad()
def _init_gates(net: SlimmedModel, teacher, examples, tokenizer, config: SlimConfig, *, progress: bool) -> None:
    """Seed the gate logits with the rank of an importance estimate per unit of memory."""
    gates = net.gates
    if config.init == "uniform" or config.init_spread == 0:
        return
    from slimformer.static import PruneConfig, calibration_batches, score

    batches = calibration_batches(
        examples, tokenizer, size=config.init_examples, seed=config.seed, max_length=config.max_length
    )
    importance = score(
        teacher, PruneConfig.from_dict({"method": config.init, "budget": "memory=1"}), batches, progress=progress
    )
    groups = torch.repeat_interleave(
        torch.arange(len(gates.group_sizes)), gates.group_sizes
    )  # (F,) group of each neuron
    h = torch.stack([t.double() for t in importance.heads])  # (L, H)
    g = torch.stack(
        [
            torch.zeros(len(gates.group_sizes), dtype=torch.float64).index_add_(0, groups, t.double())
            for t in importance.ffn
        ]
    )
    c_h, c_g = gates.unit_cost_tensors(net.costs)
    h, g = h / c_h, g / c_g  # importance per byte
    if importance.comparable:
        ranks = _quantiles(torch.cat([h.flatten(), g.flatten()]))
        q_h, q_g = ranks[: h.numel()].view_as(h), ranks[h.numel() :].view_as(g)
    else:  # scales differ between kinds: rank each kind on its own
        q_h, q_g = _quantiles(h.flatten()).view_as(h), _quantiles(g.flatten()).view_as(g)
    gates.head_logits.copy_((2 * q_h - 1) * config.init_spread)
    gates.ffn_logits.copy_((2 * q_g - 1) * config.init_spread)
    logger.info("gate logits seeded from %s importance (%d examples)", config.init, config.init_examples)


def _quantiles(x: torch.Tensor) -> torch.Tensor:
    """Rank of each value in [0, 1] (0 = least important)."""
    order = torch.argsort(x, stable=True)
    q = torch.empty_like(x, dtype=torch.float32)
    q[order] = torch.linspace(0, 1, len(x))
    return q


def _hash_examples(examples: list[Example]) -> str:
    import hashlib
    import json

    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e.text, e.text_pair, e.label], ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()[:16]


def _check_resumable(ckpt: Path, state: dict, config: SlimConfig, data_hash: str) -> None:
    saved, now = state["config"], config.to_dict()
    diff = [k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k]]
    if diff:
        detail = ", ".join(f"{k} (checkpoint {saved.get(k)!r}, now {now[k]!r})" for k in diff)
        raise ValueError(
            f"cannot resume from {str(ckpt)!r}: the config differs in {detail}; only "
            f"{', '.join(RESUMABLE_CHANGES)} may change (use overwrite to start over)"
        )
    if state["data_hash"] != data_hash:
        raise ValueError(
            f"cannot resume from {str(ckpt)!r}: it was trained on other data ({state['data_hash']}, now {data_hash})"
        )
