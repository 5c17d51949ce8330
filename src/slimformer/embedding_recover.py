"""Recovery distillation of a compressed embedding model from the dense one, on unlabelled text.

The embedding counterpart of :func:`slimformer.recover.recover`: a copy of the pruned model is
trained on unlabelled batches with

    embedding_loss(student, teacher)  (1 - cos, MSE or both; see :func:`slimformer.embedding.embedding_loss`)
    + hidden_weight * mean over layers of ||h_student - h_teacher||^2 / ||h_teacher||^2

each student layer matched to the teacher layer it came from. Shapes do not change. The same
:class:`~slimformer.recover.RecoverConfig` sets the schedule (``alpha`` and ``temperature``, which
weigh the logit KL of classifiers, are unused here).
"""

from __future__ import annotations

import copy
import time

import torch

from slimformer.embedding import LOSSES, embedding_loss, embedding_pooling, encode
from slimformer.losses import hidden_mse
from slimformer.recover import RecoverConfig, RecoverResult, _layer_pairs


def recover_embedding(
    model, teacher, batches: list, config: RecoverConfig | None = None, *, loss: str = "cosine", progress: bool = True
) -> RecoverResult:
    """Distil a copy of a compressed embedding ``model`` from ``teacher`` on unlabelled ``batches``.

    Args:
        model: the compressed embedding model (not changed).
        teacher: the embedding model it came from (not changed).
        batches: tokenized batches (``input_ids``, ``attention_mask``; labels are ignored), e.g.
            :func:`slimformer.embedding.text_batches` without their ``index``.
        config: schedule and ``hidden_weight`` (default :class:`RecoverConfig`).
        loss: the embedding loss, one of :data:`slimformer.embedding.LOSSES`.

    Returns:
        :class:`~slimformer.recover.RecoverResult` with the trained copy in eval mode.

    Raises:
        ValueError: no batches, a model or teacher that is not an embedding model, or an unknown loss.
    """
    from accelerate.utils import set_seed

    from slimformer.train import train_on_batches
    from slimformer.trainer import decay_groups

    config = config or RecoverConfig()
    if not batches:
        raise ValueError("recover_embedding needs training batches (slimformer.embedding.text_batches)")
    if loss not in LOSSES:
        raise ValueError(f"loss={loss!r} is not supported; allowed: {', '.join(LOSSES)}")
    for role, net in (("model", model), ("teacher", teacher)):
        if embedding_pooling(net) is None:
            raise ValueError(f"the {role} is not an embedding model; wrap it with as_embedding_model")
    pairs = _layer_pairs(model, teacher) if config.hidden_weight > 0 else []
    t0 = time.perf_counter()
    set_seed(config.seed)
    teacher = copy.deepcopy(teacher).eval().requires_grad_(False)
    student = copy.deepcopy(model).requires_grad_(True)
    inputs = ("input_ids", "attention_mask", "token_type_ids")

    def loss_fn(net, batch):
        batch = {k: v for k, v in batch.items() if k in inputs}
        with torch.no_grad():
            t_emb, t_states = encode(teacher, batch, return_states=True)
        emb, states = encode(net, batch, return_states=True)
        distill = embedding_loss(emb, t_emb, loss)
        hid = hidden_mse([states[i] for i, _ in pairs], [t_states[j] for _, j in pairs], batch["attention_mask"])
        total = distill + config.hidden_weight * hid
        return total, {"loss": float(total.detach()), "distill": float(distill.detach()), "hidden": float(hid.detach())}

    groups = decay_groups(student, config.weight_decay, lr_of=lambda _: config.lr)
    net, history, steps = train_on_batches(
        student, groups, batches, loss_fn, epochs=config.epochs, max_steps=config.max_steps,
        warmup_ratio=config.warmup_ratio, seed=config.seed, desc="recover embedding", frozen=(teacher,),
        progress=progress,
    )  # fmt: skip
    report = {
        "recover_config": config.to_dict(),
        "loss": loss,
        "steps": steps,
        "examples_per_epoch": sum(len(b["input_ids"]) for b in batches),
        "epochs": history,
        "hidden_pairs": len(pairs),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return RecoverResult(model=net, report=report)
