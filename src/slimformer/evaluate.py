"""Predict and score a sequence classifier on a list of examples.

``predict`` returns logits in example order; ``metrics_from_logits`` turns them into accuracy, macro F1
and (binary tasks) Matthews correlation; ``evaluate`` does both. Inputs are tokenized and padded per
batch by :func:`slimformer.data.make_loader`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from slimformer.data import Example, make_loader

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


def _model_device(model) -> torch.device:
    import torch

    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def shard_for_process(examples: list, num_processes: int, process_index: int) -> list:
    """This process's contiguous share of ``examples``, all shares of equal length.

    Shares hold ``ceil(N / num_processes)`` items; the last ones are padded with copies of
    ``examples[0]``. Concatenated in process order they are ``examples`` followed by the padding,
    so the first ``N`` rows of gathered results are in example order.
    """
    per = math.ceil(len(examples) / num_processes)
    shard = examples[process_index * per : (process_index + 1) * per]
    return shard + [examples[0]] * (per - len(shard))


def predict(
    model,
    tokenizer,
    examples: Sequence[Example],
    *,
    batch_size: int = 64,
    max_length: int = 128,
    progress: bool = True,
    accelerator=None,
) -> torch.Tensor:
    """Logits of ``model`` on ``examples``.

    The model runs in eval mode under ``torch.inference_mode()``; its previous train/eval mode is
    restored afterwards.

    Args:
        model: a sequence classifier (returns an output with ``.logits`` of shape ``(B, C)``).
        tokenizer: its tokenizer.
        examples: the examples, any number (none gives a ``(0, C)`` tensor).
        batch_size: examples per forward pass.
        max_length: longer inputs are truncated to this many tokens.
        progress: show a tqdm progress bar.
        accelerator: an ``accelerate.Accelerator`` whose processes share the work: each one runs a
            contiguous shard of the examples and the logits are gathered, so every process gets
            all of them. The forward pass uses the unwrapped model (no DDP synchronisation).
            ``None``: run everything here.

    Returns:
        float32 CPU tensor of shape ``(len(examples), C)``, in example order.
    """
    import torch
    from tqdm.auto import tqdm

    net = accelerator.unwrap_model(model) if accelerator is not None else model
    examples = list(examples)
    n = len(examples)
    if n == 0:
        return torch.empty(0, net.config.num_labels)

    shard, show = examples, progress
    n_proc = accelerator.num_processes if accelerator is not None else 1
    if accelerator is not None:
        show = progress and accelerator.is_main_process
    if n_proc > 1:
        shard = shard_for_process(examples, n_proc, accelerator.process_index)
    loader = make_loader(shard, tokenizer, batch_size=batch_size, max_length=max_length)
    device = _model_device(net)

    was_training = net.training
    net.eval()
    chunks: list[torch.Tensor] = []
    try:
        with torch.inference_mode():
            for batch in tqdm(loader, desc="predict", unit="batch", disable=not show, leave=False):
                batch.pop("labels")
                batch = {k: v.to(device) for k, v in batch.items()}  # each (B, T)
                chunks.append(net(**batch).logits.float())  # (B, C)
    finally:
        net.train(was_training)
    logits = torch.cat(chunks)  # (len(shard), C)
    if n_proc > 1:
        logits = accelerator.gather(logits)[:n]  # (n_proc * per, C) -> (N, C)
    return logits.cpu()


def metrics_from_logits(logits, labels, num_labels: int) -> dict:
    """Accuracy, macro F1 and (binary tasks only) Matthews correlation of argmax predictions.

    Args:
        logits: tensor or array of shape ``(N, num_labels)``.
        labels: ``N`` gold class ids (tensor, array or list).
        num_labels: number of classes; ``mcc`` is reported only when it is 2.

    Returns:
        ``{"accuracy": float, "f1_macro": float, "mcc": float (binary only), "n": int}``. Macro F1
        averages over the classes present in the labels or the predictions (scikit-learn's default);
        an undefined precision/recall counts as 0.

    Raises:
        ValueError: shapes disagree, no examples, or ``num_labels < 2``.
    """
    import numpy as np
    import torch
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    if num_labels < 2:
        raise ValueError(f"num_labels must be >= 2, got {num_labels}")
    logits_t = torch.as_tensor(logits)
    y_true = np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64).reshape(-1)
    if logits_t.ndim != 2 or logits_t.shape[1] != num_labels:
        raise ValueError(f"logits must have shape (N, {num_labels}), got {tuple(logits_t.shape)}")
    if logits_t.shape[0] != len(y_true):
        raise ValueError(f"{logits_t.shape[0]} rows of logits but {len(y_true)} labels")
    if len(y_true) == 0:
        raise ValueError("no examples to score")
    y_pred = logits_t.argmax(dim=-1).cpu().numpy()

    metrics = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_macro": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }
    if num_labels == 2:
        metrics["mcc"] = float(matthews_corrcoef(y_true, y_pred))
    metrics["n"] = len(y_true)
    return metrics


def evaluate(
    model,
    tokenizer,
    examples: Sequence[Example],
    *,
    num_labels: int | None = None,
    batch_size: int = 64,
    max_length: int = 128,
    progress: bool = True,
    accelerator=None,
) -> dict:
    """Predict ``examples`` and score the predictions (see :func:`metrics_from_logits`).

    Args:
        num_labels: number of classes; defaults to ``model.config.num_labels``.
        accelerator: see :func:`predict`.
        Others: as in :func:`predict`.

    Raises:
        ValueError: ``examples`` is empty, or a label is outside ``[0, num_labels)``.
    """
    if len(examples) == 0:
        raise ValueError("cannot evaluate on an empty list of examples")
    if num_labels is None:
        net = accelerator.unwrap_model(model) if accelerator is not None else model
        num_labels = net.config.num_labels
    for i, ex in enumerate(examples):
        if not 0 <= ex.label < num_labels:
            raise ValueError(f"example {i} has label {ex.label}, outside [0, {num_labels}) for num_labels={num_labels}")
    logits = predict(
        model,
        tokenizer,
        examples,
        batch_size=batch_size,
        max_length=max_length,
        progress=progress,
        accelerator=accelerator,
    )
    if logits.shape[1] != num_labels:
        raise ValueError(f"the model outputs {logits.shape[1]} classes but num_labels={num_labels}")
    return metrics_from_logits(logits, [ex.label for ex in examples], num_labels)
