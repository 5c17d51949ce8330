"""The output term of OPTIN's damage, per task kind (see :mod:`slimformer.tasks`).

What "the outputs moved" means depends on what the outputs are:

* ``kl``: a sequence classifier, ``KL(p || p_m)`` of the softmax of its ``(B, C)`` logits.
* ``mse``: a one-logit head (a regression or reranker score), where a softmax over one logit is
  constant: ``1/2 (z - z_m)^2``.
* ``token``: a token classifier, the per-token KL (or, for one logit, squared error) averaged over
  each example's non-padding tokens, so a tag head's damage is on the scale of a sequence head's.
* ``embedding``: an embedding model, ``1 - cos(e, e_m)`` of its unit-length pooled embedding.

Each kind also gives the directions whose squared per-example gradients sum to the Gauss-Newton
estimate of its damage (:meth:`OutputLoss.directions`), which the neuron scores use.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.nn import functional as F

#: Hutchinson probes per batch for the estimated output terms (embeddings, token classifiers).
OUTPUT_PROBES = 8
#: Up to this many classes the KL term takes one exact backward pass per class but one (at most
#: about twice the sampled estimate's :data:`OUTPUT_PROBES` passes); more are sampled.
EXACT_CLASSES = 16
LOSS_KINDS = ("kl", "mse", "token", "embedding")


@dataclass(frozen=True)
class OutputLoss:
    """The output term for one model (:meth:`of`); ``single``: the head has one logit."""

    kind: str
    single: bool = False

    def __post_init__(self) -> None:
        if self.kind not in LOSS_KINDS:
            raise ValueError(f"output loss {self.kind!r} is not known; allowed: {', '.join(LOSS_KINDS)}")

    @staticmethod
    def of(model) -> OutputLoss:
        """The loss a model's kind calls for (read from the model, see :func:`slimformer.tasks.model_kind`)."""
        from slimformer.tasks import is_single_logit, model_kind

        kind = model_kind(model)
        if kind == "embedding":
            return OutputLoss("embedding")
        single = is_single_logit(model)
        if kind == "token":
            return OutputLoss("token", single)
        return OutputLoss("mse" if single else "kl", single)

    def output(self, adapter, model, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C)`` / ``(B, T, C)``, or an embedding model's unit-length pooled embedding ``(B, d)``."""
        if self.kind != "embedding":
            return adapter.classify(model, hidden)
        from slimformer.embedding import embedding_pooling

        return F.normalize(embedding_pooling(model)(hidden, attention_mask), dim=-1)

    def damage(self, dense: torch.Tensor, out: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Per-example damage ``(B,)`` of ``out`` against the ``dense`` outputs."""
        if self.kind == "embedding":
            return 1 - (dense.double() * out.double()).sum(-1)  # both unit length
        per = _logit_damage(dense.double(), out.double(), self.single)  # (B,) or (B, T)
        if self.kind != "token":
            return per
        keep = attention_mask.to(per.dtype)  # (B, T)
        return (per * keep).sum(-1) / keep.sum(-1).clamp_min(1)

    def directions(
        self, out: torch.Tensor, attention_mask: torch.Tensor, gen: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, float]]:
        """``(direction shaped like out, weight)`` pairs: ``weight * (d <out, direction> / d m)^2``,
        summed over the pairs and per example, is the Gauss-Newton estimate of the damage.

        ``kl``: the Fisher of the softmax is ``diag(p) - p p^T``; its eigenvectors with nonzero
        eigenvalue give ``C - 1`` exact backward passes; with more than :data:`EXACT_CLASSES` classes
        (ImageNet's 1,000), :data:`OUTPUT_PROBES` sampled directions ``e_y - p`` with ``y ~ p`` per
        example instead, unbiased since ``E_y[(e_y - p)(e_y - p)^T] = diag(p) - p p^T``. ``mse``: one
        pass. ``token``: the per-token Fisher square roots (or ones), each token's Rademacher
        combination of them scaled by ``1 / sqrt(tokens)``, :data:`OUTPUT_PROBES` passes
        (Hutchinson: the cross terms between tokens vanish in expectation). ``embedding``:
        Rademacher probes of ``1/2 ||e - e_m||^2``.
        """
        if self.kind == "embedding":
            for _ in range(OUTPUT_PROBES):
                yield _rademacher(out.shape, gen).to(out), 0.5 / OUTPUT_PROBES
            return
        if self.kind == "mse":
            yield torch.ones_like(out), 0.5
            return
        if self.kind == "kl" and out.shape[-1] > EXACT_CLASSES:
            p = out.detach().double().softmax(-1)  # (B, C)
            for _ in range(OUTPUT_PROBES):
                y = torch.multinomial(p.cpu(), 1, generator=gen).to(p.device)  # (B, 1): a label per example
                yield (torch.zeros_like(p).scatter_(1, y, 1.0) - p).to(out.dtype), 0.5 / OUTPUT_PROBES
            return
        cols = _fisher_roots(out, self.single)  # (..., C, K)
        if self.kind == "kl":
            for k in range(cols.shape[-1]):
                yield cols[..., k], 0.5
            return
        keep = attention_mask.to(out.dtype)  # (B, T)
        scale = (keep / keep.sum(-1, keepdim=True).clamp_min(1).sqrt())[..., None]  # (B, T, 1)
        for _ in range(OUTPUT_PROBES):
            r = _rademacher(cols.shape[:-2] + cols.shape[-1:], gen).to(out)  # (B, T, K)
            yield torch.einsum("btck,btk->btc", cols, r) * scale, 0.5 / OUTPUT_PROBES


def _logit_damage(p_logits: torch.Tensor, q_logits: torch.Tensor, single: bool) -> torch.Tensor:
    """KL(softmax p || softmax q) over the last axis, or ``1/2`` squared error of one logit."""
    if single:
        return 0.5 * (p_logits - q_logits).squeeze(-1).pow(2)
    logp, logq = F.log_softmax(p_logits, -1), F.log_softmax(q_logits, -1)
    return (logp.exp() * (logp - logq)).sum(-1)


def _fisher_roots(out: torch.Tensor, single: bool) -> torch.Tensor:
    """Columns ``(..., C, K)`` whose outer products sum to the softmax Fisher (ones for one logit)."""
    if single:
        return torch.ones(*out.shape, 1, dtype=out.dtype, device=out.device)
    p = out.detach().double().softmax(-1)  # (..., C)
    fisher = torch.diag_embed(p) - p[..., :, None] * p[..., None, :]  # (..., C, C)
    evals, evecs = torch.linalg.eigh(fisher)  # ascending; column 0 is the null direction
    return (evecs[..., 1:] * evals[..., None, 1:].clamp_min(0).sqrt()).to(out.dtype)  # (..., C, C-1)


def _rademacher(shape, gen: torch.Generator) -> torch.Tensor:
    return (torch.randint(0, 2, tuple(shape), generator=gen) * 2 - 1).float()
