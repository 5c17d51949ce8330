"""Recovery fine-tuning: a short distillation of a compressed classifier from the model it came from.

A one-shot or searched compression (OPTIN, AxFormer, magnitude, ...) leaves the kept weights as
they were, tuned for a network that no longer exists. ``recover(model, teacher, train_data,
RecoverConfig())`` trains a copy of ``model`` for an epoch or two on labelled TRAIN batches, with

    (1 - alpha) * CE(labels) + alpha * T^2 * KL(teacher || student at temperature T)
    + hidden_weight * mean over layers of ||h_student - h_teacher||^2 / ||h_teacher||^2

where each student layer is matched to the teacher layer it came from (``Structure`` origins), so
a model that lost whole layers still gets a per-layer signal. Shapes do not change: every head
and neuron removed stays removed, top-k attention settings stay as they were. Validation data is
never read here, so it can still judge the result.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Any

from slimformer.config import ConfigBase, fraction, integer, non_negative, option, positive
from slimformer.exits.train import exit_loss, teacher_outputs

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class RecoverConfig(ConfigBase):
    """Hyper-parameters of :func:`recover`. Every field is validated on construction."""

    epochs: int = option(1, "passes over the training batches (>= 1)", integer(1))
    max_steps: int | None = option(None, "stop after this many steps (smoke runs)", integer(1, optional=True))
    lr: float = option(3e-5, "peak learning rate (AdamW)", positive())
    warmup_ratio: float = option(0.06, "share of steps with a linear warmup, in [0, 1)", fraction(open_high=True))
    weight_decay: float = option(0.01, "AdamW weight decay (not on biases and norms)", non_negative())
    alpha: float = option(0.5, "weight of logit distillation next to the task loss, [0, 1]", fraction())
    temperature: float = option(2.0, "distillation temperature (> 0)", positive())
    hidden_weight: float = option(
        1.0, "weight of per-layer hidden-state distillation (>= 0; 0 switches it off)", non_negative()
    )
    seed: int = option(0, "seed of the batch order and dropout", integer(0))


@dataclass
class RecoverResult:
    """The fine-tuned copy (in eval mode) and a JSON-ready report."""

    model: Any
    report: dict


def recover(model, teacher, train_data: list, config: RecoverConfig | None = None, *, progress: bool = True):
    """Fine-tune a copy of ``model`` on labelled train batches, distilling from ``teacher``.

    Args:
        model: the compressed sequence classifier (a plain, pruned model; not changed).
        teacher: the model it was compressed from (same family and labels; not changed).
        train_data: tokenized batches with ``labels`` (e.g. :func:`slimformer.exits.training_batches`
            on the train split). Never the split that will judge the result.
        config: hyper-parameters (default :class:`RecoverConfig`).
        progress: show a progress bar.

    Returns:
        :class:`RecoverResult` with the trained copy in eval mode.

    Raises:
        ValueError: no batches, batches without labels, a teacher with another number of classes,
            or a student layer whose origin the teacher does not have (with ``hidden_weight > 0``).
    """
    import torch
    from accelerate.utils import set_seed

    from slimformer.arch import get_adapter
    from slimformer.train import check_labelled, train_copy
    from slimformer.trainer import decay_groups

    config = config or RecoverConfig()
    if not isinstance(config, RecoverConfig):
        raise ValueError(f"config={config!r}: must be a RecoverConfig")
    check_labelled(train_data, "recover", "slimformer.exits.training_batches on the train split")
    if model.config.num_labels != teacher.config.num_labels:
        raise ValueError(
            f"the teacher has {teacher.config.num_labels} classes but the model has {model.config.num_labels}"
        )
    pairs = _layer_pairs(model, teacher) if config.hidden_weight > 0 else []
    t0 = time.perf_counter()
    set_seed(config.seed)
    teacher = copy.deepcopy(teacher).eval().requires_grad_(False)
    student = copy.deepcopy(model).requires_grad_(True)

    def loss_fn(net, batch):
        with torch.no_grad():
            t_logits, t_states = teacher_outputs(teacher, batch)
        logits, states = teacher_outputs(net, batch)
        return exit_loss(  # one exit, the classifier's own: task + logit + per-layer hidden distillation
            [logits],
            [states[i] for i, _ in pairs],
            t_logits,
            [t_states[j] for _, j in pairs],
            batch["labels"],
            get_adapter(net).token_mask(batch, states[-1]),  # (B, T)
            config,
        )

    groups = decay_groups(student, config.weight_decay, lr_of=lambda _: config.lr)
    net, trained = train_copy(
        student, groups, train_data, loss_fn, config, teacher=teacher, desc="recover", progress=progress
    )
    report = {
        "recover_config": config.to_dict(),
        **trained,
        "hidden_pairs": len(pairs),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return RecoverResult(model=net, report=report)


def _layer_pairs(model, teacher) -> list[tuple[int, int]]:
    """(student layer, teacher layer) pairs with the same origin, one per student layer.

    Raises:
        ValueError: a student layer whose origin the teacher does not have.
    """
    from slimformer.structure import Structure

    t_origin = {s.origin: j for j, s in enumerate(Structure.from_model(teacher).layers)}
    pairs = []
    for i, s in enumerate(Structure.from_model(model).layers):
        if s.origin not in t_origin:
            raise ValueError(
                f"student layer {i} comes from original layer {s.origin}, which the teacher does not have: "
                "pass the model it was compressed from, or set hidden_weight=0"
            )
        pairs.append((i, t_origin[s.origin]))
    return pairs
