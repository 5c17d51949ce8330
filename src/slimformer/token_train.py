"""Fine-tune a token classifier on words with tags (a short AdamW run, the cross-entropy of tagged subwords)."""

from __future__ import annotations

import logging
import random
import time

logger = logging.getLogger(__name__)


def finetune_tokens(
    model,
    tokenizer,
    examples,
    *,
    epochs: float = 3.0,
    lr: float = 1e-4,
    batch_size: int = 32,
    max_length: int = 64,
    seed: int = 0,
    max_steps: int | None = None,
    progress: bool = True,
) -> dict:
    """Train ``model`` (a token classifier, in place) on :class:`~slimformer.token_data.TokenExample` s.

    Each epoch shuffles the examples (seeded) into :func:`~slimformer.token_data.token_batches`;
    the learning rate decays linearly to 0 after 10% warmup. Returns ``{"steps", "seconds", "loss"}``
    (loss: the mean of the last 20 steps). The model is left in eval mode.

    Raises:
        ValueError: the model is not a token classifier, no examples, or ``epochs`` <= 0.
    """
    import torch
    from tqdm.auto import tqdm

    from slimformer.tasks import is_token_classifier
    from slimformer.token_data import token_batches

    if not is_token_classifier(model):
        raise ValueError(f"{type(model).__name__} is not a token classifier; load it with kind='token'")
    if not examples or epochs <= 0:
        raise ValueError(f"need examples and epochs > 0, got {len(examples)} examples, epochs={epochs}")
    rng = random.Random(seed)
    per_epoch = -(-len(examples) // batch_size)
    total = max_steps or max(1, round(per_epoch * epochs))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warm = max(1, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm)))
    )
    model.train()
    losses, step, t0 = [], 0, time.perf_counter()
    bar = tqdm(total=total, desc="finetune tokens", disable=not progress, leave=False)
    while step < total:
        order = list(examples)
        rng.shuffle(order)
        for batch in token_batches(order, tokenizer, batch_size=batch_size, max_length=max_length):
            batch.pop("word_ids")
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            losses.append(loss.item())
            step += 1
            bar.update()
            if step >= total:
                break
    bar.close()
    model.eval()
    seconds = time.perf_counter() - t0
    logger.info("token fine-tuning: %d steps in %.0fs, loss %.4f", step, seconds, sum(losses[-20:]) / len(losses[-20:]))
    return {"steps": step, "seconds": round(seconds, 1), "loss": round(sum(losses[-20:]) / len(losses[-20:]), 4)}
