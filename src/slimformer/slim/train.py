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
once its ``trainer_state.json`` exists) and ``resume``: :class:`slimformer.trainer.Trainer`, as in
:func:`slimformer.train.finetune`.
The progress bar shows the task loss, the budget loss and the expected memory.
"""

from __future__ import annotations

import copy
import functools
import logging
import random
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from slimformer.checkpoints import check_resumable
from slimformer.data import Example, TaskData, make_loader
from slimformer.losses import hidden_mse, logit_kl
from slimformer.slim.config import SlimConfig
from slimformer.slim.gates import SlimmedModel
from slimformer.slim.run import save_run
from slimformer.trainer import EpochStats, LoopSettings, Trainer, decay_groups

logger = logging.getLogger(__name__)

#: Config fields that may change between a checkpoint and the run resuming it.
RESUMABLE_CHANGES = ("epochs", "max_steps", "eval_budgets", "eval_batch_size")
#: Loss parts averaged per epoch into the history (as ``mean_<part>``).
_PARTS = ("task", "distill", "budget", "memory")


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
    from accelerate.utils import set_seed

    from slimformer.arch import require

    require(model, "slim")  # a family that refuses slimming says why, before any work

    t_start = time.perf_counter()
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: resume continues, overwrite restarts")
    if not isinstance(config, SlimConfig):
        raise ValueError(f"config must be a SlimConfig, got {type(config).__name__}")
    task = train_data if isinstance(train_data, TaskData) else None
    examples, val = _checked_examples(model, train_data)
    data_hash = task.content_hash if task else _hash_examples(examples)

    trainer = Trainer()
    out = Path(out_dir) if out_dir is not None else None
    found = _open_run(trainer, out, config, data_hash, resume=resume, overwrite=overwrite)
    set_seed(config.seed)
    teacher = copy.deepcopy(model) if teacher is None else teacher
    teacher.eval().requires_grad_(False)
    teacher_net = SlimmedModel(teacher, config.group_size)
    slimmed = SlimmedModel(model, config.group_size)
    if found is None:
        _init_gates(slimmed, teacher, examples, tokenizer, config, progress=progress)
    groups = decay_groups(slimmed.model, config.weight_decay)
    groups.append({"params": list(slimmed.gates.parameters()), "weight_decay": 0.0, "lr": config.gate_lr})
    steps = _SlimSteps(teacher_net, config, tokenizer, val, enc_mb=slimmed.costs.encoder / 1e6)
    loader_for = functools.partial(_loader, examples, tokenizer, config)
    outcome = trainer.fit(
        slimmed, groups, loader_for, steps.loss, LoopSettings.of(config, desc="slim", progress=progress),
        frozen=(teacher_net,), record=steps.record, postfix=steps.postfix,
        clip=lambda net: net.model.parameters(),  # the gates are not clipped with the weights
        checkpoints=out, meta={"config": config.to_dict(), "data_hash": data_hash}, resume_from=found,
    )  # fmt: skip
    net: SlimmedModel = outcome.model.eval()
    net.info = {
        "task": {"name": task.name, "content_hash": task.content_hash} if task else {"content_hash": data_hash},
        "config": config.to_dict(),
        "report": {
            "history": outcome.history,
            "global_step": outcome.global_step,
            "total_steps": outcome.total_steps,
            "resumed_from": str(outcome.resumed_from) if outcome.resumed_from else None,
            "wall_time_s": round(time.perf_counter() - t_start, 1),
        },
    }
    if out is not None and trainer.is_main:
        save_run(net, tokenizer, out)
    return net


def _open_run(trainer: Trainer, out: Path | None, config: SlimConfig, data_hash: str, *, resume: bool, overwrite: bool):
    """Ready the run folder (if any); the checkpoint to resume from, checked against config and data."""
    if out is None:
        return None
    names = ("overwrite (--overwrite)", "resume (--resume)")
    found = trainer.open_run(out, resume=resume, overwrite=overwrite, label="run folder", names=names)
    if found is not None:
        check_resumable(
            *found, config.to_dict(), may_change=RESUMABLE_CHANGES, epochs=config.epochs,
            data_hash=data_hash, saved_hash=found[1]["data_hash"],
        )  # fmt: skip
    return found


def _loader(examples: list[Example], tokenizer, config: SlimConfig, epoch: int):
    """Epoch ``epoch``'s length-grouped, shuffled loader."""
    return make_loader(
        examples, tokenizer, batch_size=config.batch_size, max_length=config.max_length,
        shuffle=True, group_by_length=True, seed=config.seed + epoch,
    )  # fmt: skip


class _SlimSteps:
    """The method-specific parts of the loop: the loss at a sampled budget, the bar, the epoch record."""

    def __init__(self, teacher: SlimmedModel, config: SlimConfig, tokenizer, val: list[Example], *, enc_mb: float):
        self.teacher, self.config, self.tokenizer, self.val = teacher, config, tokenizer, val
        self.enc_mb = enc_mb  # expected memory is shown in MB of encoder weights and % of dense

    def loss(self, net: SlimmedModel, batch: dict, step: int):
        # one budget per step, from the step number alone, so a resumed run draws the same ones
        cfg = self.config
        target = random.Random(f"{cfg.seed}:{step}").uniform(cfg.min_budget, cfg.max_budget)
        terms = _step_loss(net, self.teacher, batch, target, cfg)
        return terms.pop("loss"), {**terms, "target": target}

    def postfix(self, parts: dict[str, float], lr: float) -> dict[str, str]:
        mem = parts["memory"]
        return {
            "task": f"{parts['task']:.3f}", "budget": f"{parts['budget']:.4f}",
            "E_mem": f"{mem * self.enc_mb:.1f}MB/{mem:.0%}", "target": f"{parts['target']:.0%}",
        }  # fmt: skip

    def record(self, stats: EpochStats, net: SlimmedModel) -> dict:
        return {
            "epoch": stats.epoch,
            "global_step": stats.global_step,
            **{f"mean_{k}": stats.means.get(k, 0.0) for k in _PARTS},
            "time_s": round(stats.time_s, 1),
            "validation": _validate(net, self.tokenizer, self.val, self.config) if self.val else None,
        }


def _checked_examples(model, train_data: TaskData | list[Example]) -> tuple[list[Example], list[Example]]:
    """The train and validation examples, after checking them against the model's labels."""
    task = train_data if isinstance(train_data, TaskData) else None
    examples = list(task.split("train") if task else train_data)
    val = list(task.splits.get("validation", [])) if task else []
    if not examples:
        raise ValueError("slim needs at least one training example")
    n_labels = model.config.num_labels
    bad = next((e.label for e in examples + val if not 0 <= e.label < n_labels), None)
    if bad is not None:
        raise ValueError(f"label {bad} is outside the model's {n_labels} classes")
    return examples, val


def _step_loss(net: SlimmedModel, teacher: SlimmedModel, batch: dict, target: float, config: SlimConfig) -> dict:
    """Loss of one batch at one sampled budget; floats of the terms for the progress bar."""
    labels = batch.pop("labels")  # (B,)
    with torch.no_grad():
        t_out = teacher(**batch, hidden_states=True)
    selection = net.select(target)
    s_out = net(**batch, selection=selection, straight_through=True, hidden_states=True)
    task = F.cross_entropy(s_out.logits, labels)
    kd = logit_kl(s_out.logits, t_out.logits, config.temperature)
    hid = hidden_mse(s_out.hidden_states, t_out.hidden_states, batch["attention_mask"])
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
