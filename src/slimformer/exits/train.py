"""Joint training of a backbone and all its exits, distilled from the dense model.

``early_exit(model, ExitConfig(...), train_data)`` wraps a copy of ``model`` in a
:class:`~slimformer.exits.model.MultiExitModel` and trains everything together: each exit learns
from the labels and from the teacher's final logits, each layer's output is pulled towards the
teacher's output at the same depth, and deeper exits weigh more (see :class:`ExitConfig`). The
teacher is the model as given (the dense fine-tuned classifier), or ``teacher=`` when the model
was slenderized first (:func:`slender_exit` does both). The loop runs on HF Accelerate like
:func:`slimformer.train.finetune`.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from slimformer.exits.config import ExitConfig, ExitRule, SlenderConfig
from slimformer.losses import blend, hidden_mse, logit_kl
from slimformer.trainer import decay_groups

logger = logging.getLogger(__name__)


@dataclass
class ExitResult:
    """The trained multi-exit model (rule ``none`` until calibrated) and a JSON-ready report."""

    model: Any
    report: dict


def training_batches(examples, tokenizer, *, batch_size: int = 32, max_length: int = 128, seed: int = 0) -> list:
    """Tokenized, length-grouped training batches with labels (shuffled again every epoch)."""
    from slimformer.batching import batches

    return batches(examples, tokenizer, batch_size=batch_size, max_length=max_length, seed=seed)


def teacher_outputs(teacher, batch: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A classifier's final logits ``(B, C)`` and every layer's output ``(B, T, d)``, through its family
    adapter (used for the dense teacher, and for the student in :func:`slimformer.recover.recover`)."""
    from slimformer.arch import get_adapter

    ad = get_adapter(teacher)
    hidden = ad.embed_batch(teacher, batch)  # (B, T, d)
    mask = ad.layer_mask(teacher, hidden, ad.padding_mask(batch))
    states = []
    for layer in ad.layers(teacher):
        hidden = ad.run_layer(layer, hidden, mask)
        states.append(hidden)
    return ad.classify(teacher, hidden), states


def exit_loss(
    logits: list[torch.Tensor],
    hidden: list[torch.Tensor],
    teacher_logits: torch.Tensor,
    teacher_hidden: list[torch.Tensor],
    labels: torch.Tensor,
    attention_mask: torch.Tensor,
    config: ExitConfig,
) -> tuple[torch.Tensor, dict]:
    """The joint loss (see :class:`ExitConfig`) and its parts as floats. Only ``temperature``, ``alpha``
    and ``hidden_weight`` are read, so :func:`slimformer.recover.recover` uses it too (one exit)."""
    n = len(logits)
    weights = [i / (n * (n + 1) / 2) for i in range(1, n + 1)]  # exit i weighs i, summing to 1
    task = kd = logits[0].new_zeros((), dtype=torch.float32)
    for w, z in zip(weights, logits, strict=True):
        task = task + w * F.cross_entropy(z.float(), labels)
        kd = kd + w * logit_kl(z, teacher_logits, config.temperature)
    loss = blend(task, kd, config.alpha)
    hid = logits[0].new_zeros((), dtype=torch.float32)
    if config.hidden_weight > 0 and hidden:
        hid = hidden_mse(hidden, teacher_hidden, attention_mask)
        loss = loss + config.hidden_weight * hid
    parts = {"loss": loss, "task": task, "distill": kd, "hidden": hid}
    return loss, {k: float(v.detach()) for k, v in parts.items()}


def _param_groups(model, config: ExitConfig) -> list[dict]:
    """AdamW groups: the exit heads at ``head_lr``, the backbone at ``lr``."""
    return decay_groups(
        model, config.weight_decay, lr_of=lambda name: config.head_lr if name.startswith("exits") else config.lr
    )


def early_exit(model, config: ExitConfig, train_data: list, *, teacher=None, progress: bool = True) -> ExitResult:
    """Add an exit after every layer of a copy of ``model`` and train backbone and exits jointly.

    Args:
        model: a fine-tuned sequence classifier (slender or not) or a multi-exit model.
        config: training settings.
        train_data: tokenized batches with labels (:func:`training_batches`).
        teacher: the dense model to distil from; default: ``model`` itself (frozen copy). It must
            have as many layers as ``model`` when ``config.hidden_weight > 0``.
        progress: show a progress bar.

    Returns:
        :class:`ExitResult`; the model's exit rule is ``none`` until :func:`~slimformer.exits.calibrate_rule` sets one.

    Raises:
        ValueError: no batches, batches without labels, or a teacher with another depth.
    """
    from accelerate.utils import set_seed

    from slimformer.arch import require
    from slimformer.exits.model import MultiExitModel
    from slimformer.train import check_labelled, train_copy

    require(model, "exits")  # a family that refuses exits says why, before any work

    if not isinstance(config, ExitConfig):
        raise ValueError(f"config={config!r}: must be an ExitConfig")
    check_labelled(train_data, "early_exit", "slimformer.exits.training_batches")
    t0 = time.perf_counter()
    set_seed(config.seed)
    teacher = copy.deepcopy(teacher if teacher is not None else model)
    if isinstance(teacher, MultiExitModel):
        teacher = teacher.backbone
    teacher.eval().requires_grad_(False)
    student = MultiExitModel.from_classifier(model, head=config.head)
    from slimformer.arch import get_adapter

    depth_t = len(get_adapter(teacher).layers(teacher))
    if config.hidden_weight > 0 and depth_t != student.num_layers:
        raise ValueError(
            f"hidden-state distillation needs a teacher as deep as the student: {depth_t} vs "
            f"{student.num_layers} layers (set hidden_weight=0 or pass a matching teacher)"
        )

    def loss_fn(net, batch):
        with torch.no_grad():
            t_logits, t_hidden = teacher_outputs(teacher, batch)
        logits, hidden = net.all_exits(
            batch["input_ids"],
            batch["attention_mask"],
            batch.get("token_type_ids"),
            hidden_states=config.hidden_weight > 0,
        )
        return exit_loss(logits, hidden, t_logits, t_hidden, batch["labels"], batch["attention_mask"], config)

    net, trained = train_copy(
        student, _param_groups(student, config), train_data, loss_fn, config, teacher=teacher, desc="exit train",
        progress=progress,
    )  # fmt: skip
    net.set_rule(ExitRule(kind="none"))
    report = {
        "exit_config": config.to_dict(),
        **trained,
        "exit_params": sum(p.numel() for p in net.exits.parameters()),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return ExitResult(model=net, report=report)


def slender_exit(
    model,
    slender: SlenderConfig,
    config: ExitConfig,
    calibration: list,
    train_data: list,
    *,
    progress: bool = True,
) -> ExitResult:
    """Slenderize ``model`` (:func:`slimformer.exits.slenderize`), then train it with exits,
    distilling from ``model`` itself. The report holds both steps."""
    from slimformer.arch import require
    from slimformer.exits.slender import slenderize

    require(model, "exits")

    thin = slenderize(model, slender, calibration, progress=progress)
    result = early_exit(thin.model, config, train_data, teacher=model, progress=progress)
    result.report["slenderize"] = thin.report
    return result
