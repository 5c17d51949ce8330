"""Distillation losses shared by every training method (slim, skim, exits, recover).

All of them compare a student with a frozen teacher on the same batch:

- :func:`logit_kl`: ``T^2 * KL(teacher / T || student / T)``, the soft-label loss of Hinton et al.;
  the ``T^2`` keeps its gradient scale independent of the temperature.
- :func:`hidden_mse`: per-layer squared error of hidden states over the real (unpadded) tokens,
  relative to the teacher's squared norm, averaged over layers.
- :func:`blend`: ``(1 - alpha) * task + alpha * distill``, the usual mix with the label loss.

Everything is computed in float32 so a bf16 student gets the same loss as an fp32 one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

#: Floor of the teacher's squared norm in :func:`hidden_mse` (an all-zero teacher layer).
NORM_FLOOR = 1e-6


def logit_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, mean over the batch.

    Args:
        student: logits ``(B, C)``; gradients flow into them.
        teacher: logits ``(B, C)`` (detached by the caller).
        temperature: ``T > 0``.

    Returns:
        A scalar tensor.

    Raises:
        ValueError: a temperature that is not positive, or logits of different shapes.
    """
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r}: must be > 0")
    if student.shape != teacher.shape:
        raise ValueError(f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ")
    t = float(temperature)
    log_p = F.log_softmax(student.float() / t, dim=-1)  # (B, C)
    log_q = F.log_softmax(teacher.float() / t, dim=-1)  # (B, C)
    return F.kl_div(log_p, log_q, log_target=True, reduction="batchmean") * t * t


def hidden_mse(
    student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], attention_mask: torch.Tensor
) -> torch.Tensor:
    """Mean over layers of ``||h_s - h_t||^2 / ||h_t||^2``, both sums over the real tokens.

    Args:
        student: hidden states, one ``(B, T, d)`` tensor per matched layer.
        teacher: the teacher's states for the same layers, same shapes.
        attention_mask: ``(B, T)``, 1 on real tokens, 0 on padding.

    Returns:
        A scalar tensor (0 when no layers are given).

    Raises:
        ValueError: the two lists differ in length.
    """
    if len(student) != len(teacher):
        raise ValueError(f"{len(student)} student layers but {len(teacher)} teacher layers to match")
    if not student:
        return attention_mask.new_zeros((), dtype=torch.float32)
    real = attention_mask.unsqueeze(-1).float()  # (B, T, 1)
    total = student[0].new_zeros((), dtype=torch.float32)
    for s, h in zip(student, teacher, strict=True):
        s, h = s.float(), h.float()
        err = ((s - h).pow(2) * real).sum()
        total = total + err / (h.pow(2) * real).sum().clamp(min=NORM_FLOOR)
    return total / len(student)


def blend(task: torch.Tensor, distill: torch.Tensor, alpha: float) -> torch.Tensor:
    """``(1 - alpha) * task + alpha * distill``; ``alpha`` in [0, 1].

    Raises:
        ValueError: ``alpha`` outside [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha!r}: must be in [0, 1]")
    return (1 - alpha) * task + alpha * distill
