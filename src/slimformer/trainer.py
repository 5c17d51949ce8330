"""The one training loop behind finetune, slim, skim, exits and recover, on HF Accelerate.

A method supplies what is its own: the model, its AdamW parameter groups, the batches of each
epoch, and ``loss_fn(model, batch, step) -> (loss, {part: float})``; optionally an epoch record
(validation), a progress-bar postfix and the parameters to clip. :class:`Trainer` owns the rest:
AdamW with linear warmup then decay, gradient clipping, sharding the batches over processes,
gradient averaging, a progress bar, one checkpoint per epoch and bit-exact resume.

The schedule rule, the same for every method: ``total_steps`` counts optimizer steps *per
process* (``epochs * ceil(batches / num_processes)``, capped at ``max_steps``). Accelerate's
prepared scheduler steps the wrapped one ``num_processes`` times per optimizer step, so it is
built over ``total_steps * num_processes`` (warmup alike): the learning rate at optimizer step
``k`` is then the same whatever the number of processes.

Checkpoints: ``run/checkpoints/epoch-N`` holds ``accelerator.save_state`` (weights, AdamW
moments, scheduler, RNG states) and ``trainer_state.json``, written last, which marks it complete.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimformer.checkpoints import CHECKPOINTS_DIR, TRAINER_STATE_NAME, latest_checkpoint, write_json

logger = logging.getLogger(__name__)

#: Gradients are clipped to this global L2 norm before each optimizer step (the usual BERT recipe).
MAX_GRAD_NORM = 1.0

LossFn = Callable[[Any, dict, int], tuple[Any, dict[str, float]]]


# ----------------------------------------------------------------------------------------------
# optimizer and schedule


def decay_groups(model, weight_decay: float, *, lr_of: Callable[[str], float] | None = None) -> list[dict]:
    """AdamW groups: weight decay on weight matrices and embeddings, none on biases and LayerNorm.

    Args:
        model: the module whose trainable parameters (``requires_grad``) are grouped.
        weight_decay: the decay of the decayed group(s).
        lr_of: the learning rate of the parameters of each module, given its qualified name
            (e.g. a higher rate for new heads); without it the groups carry no ``lr``.

    Returns:
        One group per (learning rate, decayed or not), in the order the parameters first appear.
    """
    import torch

    groups: dict[tuple[float | None, bool], list] = {}
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            no_decay = name == "bias" or isinstance(module, torch.nn.LayerNorm)
            lr = lr_of(module_name) if lr_of is not None else None
            groups.setdefault((lr, no_decay), []).append(p)
    return [
        {"params": ps, "weight_decay": 0.0 if nd else weight_decay, **({} if lr is None else {"lr": lr})}
        for (lr, nd), ps in groups.items()
    ]


def linear_schedule(optimizer, warmup_steps: int, total_steps: int, num_processes: int):
    """Linear warmup then linear decay to 0 over ``total_steps`` optimizer steps per process.

    Built for accelerate's prepared scheduler, which steps it ``num_processes`` times per
    optimizer step (see the module docstring).
    """
    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(optimizer, warmup_steps * num_processes, total_steps * num_processes)


def shard(items: list, rank: int, num_processes: int) -> list:
    """Process ``rank``'s share of ``items``: every ``num_processes``-th one, padded by wrapping
    around so that every process takes the same number of steps (as accelerate's loaders do)."""
    if num_processes == 1:
        return list(items)
    per = math.ceil(len(items) / num_processes)
    padded = list(items) + [items[i % len(items)] for i in range(per * num_processes - len(items))]
    return padded[rank::num_processes]


# ----------------------------------------------------------------------------------------------
# the loop


@dataclass(frozen=True, kw_only=True)
class LoopSettings:
    """How long to train and how to schedule, for :meth:`Trainer.fit`."""

    epochs: int
    lr: float
    max_steps: int | None = None
    warmup_ratio: float = 0.0
    max_grad_norm: float = MAX_GRAD_NORM
    desc: str = "train"
    progress: bool = True

    def __post_init__(self) -> None:
        checks = {
            "epochs": (self.epochs >= 1, "an integer >= 1"),
            "lr": (self.lr >= 0, "a number >= 0"),
            "max_steps": (self.max_steps is None or self.max_steps >= 1, "None or an integer >= 1"),
            "warmup_ratio": (0 <= self.warmup_ratio < 1, "a number in [0, 1)"),
            "max_grad_norm": (self.max_grad_norm > 0, "a number > 0"),
        }
        for name, (ok, allowed) in checks.items():
            if not ok:
                raise ValueError(f"LoopSettings.{name}={getattr(self, name)!r} is not allowed: it must be {allowed}")

    @classmethod
    def of(cls, config, *, desc: str, progress: bool = True) -> LoopSettings:
        """The settings of a method config that has ``epochs``, ``lr``, ``max_steps`` and ``warmup_ratio``."""
        return cls(
            epochs=config.epochs,
            lr=config.lr,
            max_steps=config.max_steps,
            warmup_ratio=config.warmup_ratio,
            desc=desc,
            progress=progress,
        )


@dataclass
class EpochStats:
    """What the loop measured in one epoch, for the method's epoch record."""

    epoch: int  # 1-based
    steps: int
    global_step: int
    means: dict[str, float]  # mean of each loss part over the epoch's steps and the processes
    lr: float
    time_s: float


@dataclass
class TrainOutcome:
    """The result of :meth:`Trainer.fit`: the unwrapped model (still in train mode) and the history."""

    model: Any
    history: list[dict]
    global_step: int
    steps_per_epoch: int
    total_steps: int
    resumed_from: Path | None
    lrs: list[float] = field(default_factory=list)  # learning rate of each optimizer step of this run


def default_record(stats: EpochStats, model) -> dict:
    """Epoch, steps, global step, the mean loss parts and the epoch's time."""
    return {
        "epoch": stats.epoch,
        "steps": stats.steps,
        "global_step": stats.global_step,
        **stats.means,
        "time_s": round(stats.time_s, 3),
    }


def default_postfix(parts: dict[str, float], lr: float) -> dict[str, str]:
    """Every loss part and the learning rate."""
    return {**{k: f"{v:.4f}" for k, v in parts.items()}, "lr": f"{lr:.2e}"}


@dataclass
class _Run:
    """The prepared objects and counters of one :meth:`Trainer.fit`."""

    wrapped: Any  # the prepared model (DDP-wrapped under several processes)
    net: Any  # the same model unwrapped: what loss_fn runs
    optimizer: Any
    scheduler: Any
    clip_params: list
    max_grad_norm: float
    steps_per_epoch: int
    total: int
    step: int
    lrs: list[float] = field(default_factory=list)


class Trainer:
    """One Accelerator and the loop that runs on it (see the module docstring)."""

    def __init__(self) -> None:
        from accelerate import Accelerator

        self.accelerator = Accelerator()

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes

    def log(self, msg: str, *args) -> None:
        """``logger.info`` on the main process only."""
        if self.is_main:
            logger.info(msg, *args)

    def open_run(
        self,
        out: Path,
        *,
        resume: bool,
        overwrite: bool,
        label: str = "output folder",
        names: tuple[str, str] = ("--overwrite", "--resume"),
    ) -> tuple[Path, dict] | None:
        """Make ``out`` ready: refuse a non-empty one, clear it (``overwrite``) or find the checkpoint
        to ``resume`` from (returned; ``None`` for a fresh start). ``names``: how the messages call
        the overwrite and resume switches.

        Raises:
            ValueError: both ``resume`` and ``overwrite``.
            NotADirectoryError: ``out`` is a file.
            FileExistsError: ``out`` is not empty and neither is set.
        """
        from slimformer.train import _clear_dir

        over, res = names
        if resume and overwrite:
            raise ValueError(f"resume and overwrite exclude each other: {res} continues, {over} restarts")
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(f"{label} {str(out)!r} is a file")
        found = None
        if out.is_dir() and any(out.iterdir()):
            if overwrite:
                self.accelerator.wait_for_everyone()  # every process has seen the old contents
                if self.is_main:
                    self.log("overwrite: clearing %s", out)
                    _clear_dir(out)
            elif resume:
                found = latest_checkpoint(out)
            else:
                raise FileExistsError(
                    f"{label} {str(out)!r} is not empty: pass {over} to replace its contents "
                    f"or {res} to continue the training saved in it"
                )
        if resume and found is None:
            self.log("resume: no checkpoint in %s, starting fresh", out)
        if self.is_main:
            out.mkdir(parents=True, exist_ok=True)
        self.accelerator.wait_for_everyone()
        return found

    def fit(
        self,
        model,
        param_groups: list[dict],
        batches_for: Callable[[int], Iterable],
        loss_fn: LossFn,
        settings: LoopSettings,
        *,
        frozen: tuple = (),
        record: Callable[[EpochStats, Any], dict] = default_record,
        postfix: Callable[[dict[str, float], float], dict[str, str]] = default_postfix,
        clip: Callable[[Any], Iterable] | None = None,
        checkpoints: Path | None = None,
        meta: dict | None = None,
        resume_from: tuple[Path, dict] | None = None,
    ) -> TrainOutcome:
        """Train ``model`` in place; see the module docstring for who owns what.

        Args:
            model: the module to train; ``loss_fn`` receives it unwrapped (on the device).
            param_groups: AdamW groups (groups without ``lr`` get ``settings.lr``).
            batches_for: the batches of epoch ``e`` (0-based): a ``DataLoader`` (sharded by
                accelerate) or a list of tensor dicts (sharded by :func:`shard`).
            loss_fn: ``(model, batch, global_step) -> (loss, {part: float})``.
            settings: epochs, schedule, clipping, progress bar.
            frozen: modules (a teacher) moved to the device, not trained.
            record: the epoch's history entry from its :class:`EpochStats` (validation goes here).
            postfix: the progress bar's postfix from a step's parts and learning rate.
            clip: the parameters to clip (default: all of the model's).
            checkpoints: the run folder to write ``checkpoints/epoch-N`` into (none without it).
            meta: extra fields of ``trainer_state.json`` (config, data identity).
            resume_from: ``(checkpoint, trainer state)`` to continue from.
        """
        acc = self.accelerator
        state = resume_from[1] if resume_from else {}
        start = state.get("epoch", 0)
        history: list[dict] = list(state.get("history", []))
        first = self._epoch_batches(batches_for(start))
        run = self._start(model, param_groups, len(first), settings, state.get("global_step", 0), clip)
        for module in frozen:
            module.to(acc.device)
        if resume_from is not None:
            acc.load_state(str(resume_from[0]))  # weights, optimizer, scheduler and RNG states
            self.log("resumed from %s (epoch %d done, step %d)", resume_from[0], start, run.step)
        bar = self._bar(settings, run.total, run.step)

        def show(parts: dict[str, float], lr: float) -> None:
            bar.update(1)
            bar.set_postfix(postfix(parts, lr))

        for epoch in range(start, settings.epochs):
            if run.step >= run.total:
                break
            batches = first if epoch == start else self._epoch_batches(batches_for(epoch))
            t_epoch = time.perf_counter()
            n, sums = self._run_epoch(run, batches, loss_fn, show)
            lr = run.scheduler.get_last_lr()[0]
            stats = EpochStats(epoch + 1, n, run.step, self._mean(sums, n), lr, time.perf_counter() - t_epoch)
            history.append(record(stats, run.net))
            self.log("%s epoch %d/%d: %s", settings.desc, epoch + 1, settings.epochs, history[-1])
            if checkpoints is not None:
                self._checkpoint(checkpoints, epoch + 1, run.step, history, meta or {})
        bar.close()
        out = acc.unwrap_model(run.wrapped, keep_fp32_wrapper=False)
        acc.free_memory()  # drop the accelerator's references to model / optimizer / loaders
        ckpt = resume_from[0] if resume_from else None
        return TrainOutcome(out, history, run.step, run.steps_per_epoch, run.total, ckpt, run.lrs)

    def _start(self, model, param_groups: list[dict], steps_per_epoch: int, settings: LoopSettings, step: int, clip):
        """AdamW and the schedule over this run's steps, all prepared by the accelerator."""
        import torch

        total = settings.epochs * steps_per_epoch
        if settings.max_steps is not None:
            total = min(total, settings.max_steps)
        optimizer = torch.optim.AdamW(param_groups, lr=settings.lr)
        warmup = math.ceil(settings.warmup_ratio * total)
        scheduler = linear_schedule(optimizer, warmup, total, self.num_processes)
        wrapped, optimizer, scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.log(
            "%s: %d epochs x %d steps (total %d, warmup %d), %d process(es)",
            settings.desc, settings.epochs, steps_per_epoch, total, warmup, self.num_processes,
        )  # fmt: skip
        net = self.accelerator.unwrap_model(wrapped)
        return _Run(
            wrapped=wrapped,
            net=net,
            optimizer=optimizer,
            scheduler=scheduler,
            clip_params=list(clip(net) if clip is not None else wrapped.parameters()),
            max_grad_norm=settings.max_grad_norm,
            steps_per_epoch=steps_per_epoch,
            total=total,
            step=step,
        )

    def _run_epoch(self, run: _Run, batches: Iterable, loss_fn: LossFn, show) -> tuple[int, dict[str, float]]:
        """Optimizer steps over ``batches`` (until the run's total); the step count and part sums."""
        acc = self.accelerator
        run.wrapped.train()
        sync = [p for p in run.wrapped.parameters() if p.requires_grad]
        sums: dict[str, float] = {}
        n = 0
        for batch in batches:
            batch = {k: v.to(acc.device) for k, v in batch.items()}
            loss, parts = loss_fn(run.net, batch, run.step)
            acc.backward(loss)
            self._average_gradients(sync)
            acc.clip_grad_norm_(run.clip_params, run.max_grad_norm)
            run.optimizer.step()
            run.lrs.append(run.scheduler.get_last_lr()[0])  # the rate this step used
            run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
            run.step, n = run.step + 1, n + 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            show(parts, run.scheduler.get_last_lr()[0])
            if run.step >= run.total:
                break
        return n, sums

    # --- pieces of the loop

    def _epoch_batches(self, batches: Iterable):
        """A DataLoader sharded by accelerate, or this process's share of a list of batches."""
        from torch.utils.data import DataLoader

        if isinstance(batches, DataLoader):
            return self.accelerator.prepare_data_loader(batches)
        return shard(list(batches), self.accelerator.process_index, self.num_processes)

    def _average_gradients(self, params: list) -> None:
        """Mean of the gradients over processes. ``loss_fn`` runs the unwrapped model (methods
        call more than ``forward``), so DDP's own synchronisation never fires: do it here, with
        one all-reduce per gradient dtype over a flat copy."""
        if self.num_processes == 1:
            return
        import torch
        import torch.distributed as dist

        by_dtype: dict[torch.dtype, list] = {}
        for p in params:
            if p.grad is None:  # unused this step on this process: the others still expect it
                p.grad = torch.zeros_like(p)
            by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
        for grads in by_dtype.values():
            flat = torch.cat([g.reshape(-1) for g in grads])  # (sum of numels,)
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat.div_(self.num_processes)
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()

    def _mean(self, sums: dict[str, float], n: int) -> dict[str, float]:
        """Per-part means over the epoch's steps, averaged over processes."""
        if not sums:
            return {}
        means = {k: v / max(n, 1) for k, v in sums.items()}
        if self.num_processes == 1:
            return means
        import torch

        t = torch.tensor(list(means.values()), dtype=torch.float64, device=self.accelerator.device)
        return dict(zip(means, self.accelerator.reduce(t, "mean").tolist(), strict=True))

    def _bar(self, settings: LoopSettings, total: int, step: int):
        from tqdm.auto import tqdm

        return tqdm(
            total=total,
            initial=step,
            desc=settings.desc,
            unit="step",
            disable=not (settings.progress and self.is_main),
        )

    def _checkpoint(self, run: Path, epoch: int, step: int, history: list[dict], meta: dict) -> None:
        """``accelerator.save_state`` then ``trainer_state.json``; RNG states are saved after the
        epoch's record (evaluation), exactly where the next epoch starts."""
        ckpt_dir = run / CHECKPOINTS_DIR / f"epoch-{epoch}"
        self.accelerator.save_state(str(ckpt_dir))
        if self.is_main:
            state = {"epoch": epoch, "global_step": step, **meta, "history": history}
            if "validation" in history[-1]:
                state["validation"] = history[-1]["validation"]  # the latest metrics, at the top
            write_json(ckpt_dir / TRAINER_STATE_NAME, state)  # last: marks it complete
        self.accelerator.wait_for_everyone()
