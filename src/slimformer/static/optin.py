"""OPTIN importance (Khaki & Plataniotis, ICLR 2024): the damage that masking one unit does.

The damage of a mask ``m`` is one loss, the same for heads and neurons, so scores are comparable::

    D(m) = mean_x KL(p(.|x) || p_m(.|x)) + w / L * sum_j mean_t ||h_j,m - h_j||^2 / mean_t ||h_j||^2

with ``p`` the softmax of the dense logits, ``h_j`` the output hidden states of layer ``j`` (of
``L``), ``mean_t`` over the non-padding tokens and ``w = trajectory_weight``. A unit in layer ``l``
leaves layers ``j < l`` unchanged, so its trajectory term covers its own layer's output and every
later one (OPTIN's distillation of the features downstream of the unit). The normaliser
``mean_t ||h_j||^2`` is measured once, on the dense model, so the term is scale-free.

* Heads are scored exactly: mask one head, rerun layers ``l..L-1`` from cached dense inputs.
* Neurons are too many to mask one by one; their score is the Gauss-Newton (Fisher) diagonal of
  the same loss at ``m = 1`` (where it and its gradient are zero):
  ``1/2 E_x sum_y p_y (d log p_y / d m_i)^2`` (exact, one backward pass per class but one; with
  more than :data:`EXACT_CLASSES` classes, e.g. ImageNet's 1,000, it is sampled instead:
  :data:`OUTPUT_PROBES` labels ``y ~ p`` per example, whose ``e_y - p`` directions have the
  softmax Fisher ``diag(p) - p p^T`` as their expected outer product) plus
  ``w / L * sum_j ||d h_j / d m_i||^2 / (n_tok mean_t ||h_j||^2)`` estimated with Rademacher
  probes (Hutchinson: ``E[(v^T J)^2] = ||J||^2``). Mask variables are per example, so one
  backward pass gives per-example gradients (squares are taken per example).
  ``benchmarks/neuron_score_agreement.py`` measures how this ranks against exact masking.

The output term follows the model's task kind (:mod:`slimformer.static.output_loss`): the KL
above for a sequence classifier; ``1/2 (z - z_m)^2`` for a one-logit head (regression, reranker);
the per-token KL averaged over non-padding tokens for a token classifier; and ``1 - cos(e, e_m)``
of the unit-length pooled embeddings for an embedding model (no labels, no head), which equals
``1/2 ||e - e_m||^2``, so its Gauss-Newton diagonal is ``1/2 sum_d (d e_d / d m_i)^2``, estimated
with Rademacher probes over the embedding dimensions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from slimformer.arch import get_adapter
from slimformer.static.importance import Batches, Importance
from slimformer.static.output_loss import OutputLoss
from slimformer.surgery import masked

logger = logging.getLogger(__name__)

#: A unit to mask: ``("head" | "ffn", layer index, unit index within the layer)``.
Unit = tuple[str, int, int]


def score_optin(
    model,
    batches: Batches,
    *,
    seed: int = 0,
    progress: bool = True,
    trajectory_weight: float = 1.0,
    head_examples: int | None = 64,
    neuron_examples: int | None = None,
    probes: int = 1,
) -> Importance:
    """OPTIN scores: exact masking damage for heads, its Gauss-Newton estimate for FFN neurons.

    Args:
        model: a sequence classifier of a supported family, or an embedding model (module
            docstring), in eval mode (left unchanged).
        batches: calibration batches (see :data:`~slimformer.static.importance.Batches`); no
            labels are needed.
        seed: seeds the example samples and the Hutchinson probes.
        progress: show tqdm progress bars.
        trajectory_weight: weight ``w`` of the hidden-state distillation term next to the KL term.
        head_examples: heads are masked one by one on a seeded sample of this many examples
            (None: all); exact head scoring costs about ``heads * layers / 2`` forward passes of
            it. The trajectory normaliser ``mean_t ||h_j||^2`` is measured on the same sample.
        neuron_examples: the neuron estimate uses a seeded sample of this many examples (None: all).
        probes: Hutchinson probes per batch for the trajectory part of the neuron estimate.

    Returns:
        :class:`Importance` with ``comparable=True``; ``info`` holds timings and sample sizes.
    """
    if trajectory_weight < 0 or probes < 0:
        raise ValueError(f"trajectory_weight and probes must be >= 0, got {trajectory_weight}, {probes}")
    if not batches:
        raise ValueError("OPTIN needs at least one calibration batch")
    adapter = get_adapter(model)
    layers = adapter.layers(model)
    pad_id = getattr(model.config, "pad_token_id", None) or 0  # image configs have none
    total = sum(adapter.batch_rows(b) for b in batches)
    size = max(adapter.batch_rows(b) for b in batches)
    head_idx = _sample(total, head_examples, seed)
    head_batches = pack_examples(batches, indices=head_idx, batch_size=size, pad_id=pad_id)
    units: list[Unit] = [("head", i, h) for i, layer in enumerate(layers) for h in range(_heads(adapter, layer))]

    start = time.perf_counter()
    terms = masking_terms(model, head_batches, units, progress=progress, desc="optin heads")
    flat, norms = terms.scores(trajectory_weight), terms.norms()
    head_s = time.perf_counter() - start
    heads, k = [], 0
    for layer in layers:
        n = _heads(adapter, layer)
        heads.append(flat[k : k + n].clone())
        k += n

    start = time.perf_counter()
    neuron_idx = _sample(total, neuron_examples, seed + 1)
    neuron_batches = pack_examples(batches, indices=neuron_idx, batch_size=size, pad_id=pad_id)
    options = {"trajectory_weight": trajectory_weight, "probes": probes, "seed": seed, "progress": progress}
    _, ffn = gauss_newton(model, neuron_batches, norms=norms, **options)
    neuron_s = time.perf_counter() - start
    info = {
        "method": "optin",
        "trajectory_weight": trajectory_weight,
        "head_examples": len(head_idx),
        "neuron_examples": len(neuron_idx),
        "probes": probes,
        "hidden_norms": [round(float(x), 6) for x in norms],
        "head_seconds": round(head_s, 3),
        "neuron_seconds": round(neuron_s, 3),
    }
    n_head, n_neuron = len(head_idx), len(neuron_idx)
    logger.info("optin: heads %.1fs (%d examples), neurons %.1fs (%d)", head_s, n_head, neuron_s, n_neuron)
    return Importance(tuple(heads), tuple(ffn), comparable=True, info=info)


def masking_scores(
    model, batches: Batches, units: Sequence[Unit], *, trajectory_weight: float = 1.0, progress: bool = True
) -> torch.Tensor:
    """Exact OPTIN damage ``D`` of masking each unit alone (normaliser measured on ``batches``).

    Returns:
        ``(len(units),)`` float32 scores, in the order of ``units``.
    """
    return masking_terms(model, batches, list(units), progress=progress).scores(trajectory_weight)


def gauss_newton(
    model,
    batches: Batches,
    *,
    norms: torch.Tensor,
    trajectory_weight: float = 1.0,
    probes: int = 1,
    seed: int = 0,
    progress: bool = True,
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Gauss-Newton estimate of the OPTIN damage of masking each head and neuron (module docstring).

    Args:
        norms: ``(L,)`` dense ``mean_t ||h_j||^2`` per layer output (from :func:`hidden_norms` or
            the exact head pass), so the estimate targets the same loss as exact masking.
        probes: Hutchinson probes per batch for the trajectory term (0: KL term only).

    Returns:
        ``(heads, ffn)``: per layer, ``(H_l,)`` and ``(F_l,)`` float32 scores.
    """
    from tqdm.auto import tqdm

    adapter = get_adapter(model)
    layers = adapter.layers(model)
    n_ex = sum(adapter.batch_rows(b) for b in batches)
    n_tok = sum(adapter.tokens(model, b) for b in batches)
    # Weight of each layer's summed squared error in D; a probe is scaled by its square root.
    coef = trajectory_weight / (len(layers) * n_tok * norms.double().clamp_min(1e-12))  # (L,)
    sizes = [_heads(adapter, layer) for layer in layers] + [adapter.ffn(layer).width for layer in layers]
    acc = [torch.zeros(n, dtype=torch.float64) for n in sizes]  # heads then FFN, per layer
    live = [i for i, n in enumerate(sizes) if n]
    gen = torch.Generator().manual_seed(seed)
    loss = OutputLoss.of(model)
    for batch in tqdm(batches if live else [], desc="optin gauss-newton", disable=not progress, leave=False):
        with torch.enable_grad(), example_masks(model, adapter.batch_rows(batch)) as (head_m, ffn_m):
            dense = _forward(adapter, model, batch)
        leaves = [(head_m + ffn_m)[i] for i in live]
        logits = dense.logits  # (B, C) or (B, T, C) logits, or (B, d) unit embeddings
        for direction, weight in loss.directions(logits, dense.keep, gen):
            grads = torch.autograd.grad((logits * direction).sum(), leaves, retain_graph=True)
            for i, g in zip(live, grads, strict=True):
                acc[i] += weight / n_ex * g.double().pow(2).sum(0).cpu()  # per-example squares, (H,) or (F,)
        keep = dense.keep.to(logits)[..., None]  # (B, T, 1)
        for _ in range(probes if trajectory_weight > 0 else 0):
            target = logits.new_zeros(())
            for j, h in enumerate(dense.states[1:]):
                v = torch.randint(0, 2, h.shape, generator=gen).to(h) * 2 - 1  # (B, T, d) Rademacher
                target = target + (v * keep * h).sum() * float(coef[j].sqrt())
            grads = torch.autograd.grad(target, leaves, retain_graph=True)
            for i, g in zip(live, grads, strict=True):
                acc[i] += g.double().pow(2).sum(0).cpu() / probes
        del dense, logits
    n = len(layers)
    return tuple(a.float() for a in acc[:n]), tuple(a.float() for a in acc[n:])


@contextmanager
def example_masks(model, batch_size: int):
    """Mask variables per example (ones, requiring grad): ``(B, H_l)`` for heads, ``(B, F_l)`` for neurons.

    Example ``b`` of a batch is masked by row ``b`` only, so one backward pass of a sum of
    per-example losses leaves each example's gradient in its own row (through
    :func:`slimformer.surgery.masked`, which takes per-example masks).

    Yields:
        ``(head_masks, ffn_masks)``, one leaf tensor per layer each.
    """
    adapter = get_adapter(model)
    layers = adapter.layers(model)
    device = adapter.ffn(layers[0]).fc_out.weight.device if len(layers) else None
    heads = [torch.ones(batch_size, _heads(adapter, layer), device=device, requires_grad=True) for layer in layers]
    ffn = [torch.ones(batch_size, adapter.ffn(layer).width, device=device, requires_grad=True) for layer in layers]

    # (B, 1, H) / (B, 1, F) views broadcast over tokens; gradients flow back to the leaves
    with masked(model, head_masks=[m[:, None, :] for m in heads], ffn_masks=[m[:, None, :] for m in ffn]):
        yield heads, ffn


@torch.no_grad()
def hidden_norms(model, batches: Batches) -> torch.Tensor:
    """Dense ``mean_t ||h_j||^2`` over non-padding tokens of each layer's output: ``(L,)`` float64."""
    adapter = get_adapter(model)
    sq = torch.zeros(len(adapter.layers(model)), dtype=torch.float64)
    n_tok = 0
    for batch in batches:
        dense = _forward(adapter, model, batch)
        keep = dense.keep.to(torch.float64)  # (B, T)
        sq += torch.stack([(h.double().pow(2).sum(-1) * keep).sum() for h in dense.states[1:]])
        n_tok += int(keep.sum())
    return sq / max(n_tok, 1)


def pack_examples(
    batches: Batches, *, indices: Sequence[int] | None = None, batch_size: int = 32, pad_id: int = 0
) -> Batches:
    """Regroup calibration examples into batches of similar length: less padding, same outputs.

    Args:
        indices: which examples to keep, counting across batches in order (None: all).
        batch_size: examples per new batch.
        pad_id: input id written at padding positions (the model's ``pad_token_id``).

    Returns:
        New batches, shortest examples first; each is padded to its own longest example.
    """
    if "input_ids" not in batches[0]:
        return _pack_rows(batches, indices=indices, batch_size=batch_size)
    rows = [(bi, r) for bi, b in enumerate(batches) for r in range(len(b["input_ids"]))]
    if indices is not None:
        rows = [rows[i] for i in indices]
    lengths = [int(batches[bi]["attention_mask"][r].sum()) for bi, r in rows]
    order = sorted(range(len(rows)), key=lambda i: lengths[i])
    out: Batches = []
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        t = max(lengths[i] for i in chunk)
        new = {"input_ids": torch.full((len(chunk), t), pad_id, dtype=torch.long)}
        new["attention_mask"] = torch.zeros(len(chunk), t, dtype=torch.long)
        first = batches[rows[chunk[0]][0]]
        if first.get("token_type_ids") is not None:
            new["token_type_ids"] = torch.zeros(len(chunk), t, dtype=torch.long)
        for k, i in enumerate(chunk):
            bi, r = rows[i]
            keep = batches[bi]["attention_mask"][r].bool()  # works for left or right padding
            n = lengths[i]
            new["input_ids"][k, :n] = batches[bi]["input_ids"][r][keep]
            new["attention_mask"][k, :n] = 1
            if "token_type_ids" in new:
                new["token_type_ids"][k, :n] = batches[bi]["token_type_ids"][r][keep]
        if "labels" in first and first["labels"].dim() == 2:  # per-token labels (B, T), -100 at padding
            new["labels"] = torch.full((len(chunk), t), -100, dtype=torch.long)
            for k, i in enumerate(chunk):
                bi, r = rows[i]
                new["labels"][k, : lengths[i]] = batches[bi]["labels"][r][batches[bi]["attention_mask"][r].bool()]
        elif "labels" in first:
            new["labels"] = torch.stack([batches[rows[i][0]]["labels"][rows[i][1]] for i in chunk])  # (B,)
        out.append(new)
    return out


def _pack_rows(batches: Batches, *, indices: Sequence[int] | None, batch_size: int) -> Batches:
    """:func:`pack_examples` for batches without padding (images): the chosen rows, rebatched in order."""
    names = list(batches[0])
    rows = {k: torch.cat([b[k] for b in batches]) for k in names}  # (N, ...)
    if indices is not None:
        rows = {k: v[list(indices)] for k, v in rows.items()}
    n = len(rows[names[0]])
    return [{k: v[i : i + batch_size] for k, v in rows.items()} for i in range(0, n, batch_size)]


# ---------------------------------------------------------------- internals


@dataclass
class _Dense:
    states: list[torch.Tensor]  # L + 1 tensors (B, T, d): embeddings, then each layer's output
    mask: object  # what adapter.run_layer expects
    logits: torch.Tensor  # (B, C), (B, T, C) for a token classifier, (B, d) for an embedding model
    keep: torch.Tensor  # (B, T) 1 = a real token


def _forward(adapter, model, batch: dict) -> _Dense:
    hidden = adapter.embed_batch(model, batch)  # (B, T, d)
    keep = adapter.token_mask(batch, hidden)  # (B, T)
    mask = adapter.layer_mask(model, hidden, adapter.padding_mask(batch))
    states = [hidden]
    for layer in adapter.layers(model):
        hidden = adapter.run_layer(layer, hidden, mask)
        states.append(hidden)
    return _Dense(states, mask, OutputLoss.of(model).output(adapter, model, hidden, keep), keep)


def _heads(adapter, layer) -> int:
    return adapter.attention(layer).num_heads


def _sample(total: int, n: int | None, seed: int) -> list[int]:
    """A seeded sample of ``n`` of ``total`` example indices (all of them when ``n`` is None or larger)."""
    if n is None or n >= total:
        return list(range(total))
    if n < 1:
        raise ValueError(f"example counts must be >= 1 or None, got {n}")
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(total, generator=g)[:n].tolist())


@dataclass
class MaskingTerms:
    """Per-example pieces of the exact damage of masking each unit, so any subset can be scored.

    Attributes:
        kl: ``(U, N)`` KL(dense || masked) of each example (``1 - cos`` for an embedding model).
        err: ``(U, N, L)`` squared error of each layer's output, summed over the example's tokens.
        sq: ``(N, L)`` dense squared norm of each layer's output, summed over the example's tokens.
        tokens: ``(N,)`` non-padding tokens of each example.
    """

    kl: torch.Tensor
    err: torch.Tensor
    sq: torch.Tensor
    tokens: torch.Tensor

    def norms(self, idx: Sequence[int] | None = None) -> torch.Tensor:
        """``(L,)`` dense ``mean_t ||h_j||^2`` over the chosen examples' tokens (float64)."""
        pick = slice(None) if idx is None else list(idx)
        return self.sq[pick].sum(0) / self.tokens[pick].sum().clamp_min(1)

    def scores(self, weight: float, idx: Sequence[int] | None = None) -> torch.Tensor:
        """``(U,)`` float32 damage ``D`` on the chosen examples (all by default)."""
        pick = slice(None) if idx is None else list(idx)
        kl, err, sq = self.kl[:, pick], self.err[:, pick], self.sq[pick]
        traj = (err.sum(1) / sq.sum(0).clamp_min(1e-12)).sum(-1) / max(sq.shape[-1], 1)  # (U,)
        return (kl.mean(1) + weight * traj).float()


@torch.no_grad()
def masking_terms(
    model, batches: Batches, units: Sequence[Unit], *, progress: bool = True, desc: str = "optin exact"
) -> MaskingTerms:
    """Mask each unit alone and rerun from its layer's cached dense input; examples in batch order."""
    from tqdm.auto import tqdm

    adapter = get_adapter(model)
    layers = adapter.layers(model)
    n_layers = len(layers)
    device = adapter.ffn(layers[0]).fc_out.weight.device if len(layers) else None
    head_masks = [torch.ones(_heads(adapter, layer), device=device) for layer in layers]
    ffn_masks = [torch.ones(adapter.ffn(layer).width, device=device) for layer in layers]
    loss = OutputLoss.of(model)
    kl, err, sq, tokens = [], [], [], []  # per batch: (U, B), (U, B, L), (B, L), (B,)
    bar = tqdm(total=len(batches) * len(units), desc=desc, disable=not progress, leave=False)
    # Dense and masked passes both run under the hooks, so an unmasked unit computes bit-identically.
    with masked(model, head_masks, ffn_masks):
        for batch in batches:
            dense = _forward(adapter, model, batch)
            keep = dense.keep.to(torch.float64)  # (B, T)
            sq.append(torch.stack([(h.double().pow(2).sum(-1) * keep).sum(-1) for h in dense.states[1:]], -1))
            tokens.append(keep.sum(-1))
            b_kl = torch.zeros(len(units), len(keep), dtype=torch.float64)
            b_err = torch.zeros(len(units), len(keep), n_layers, dtype=torch.float64)
            for u, (kind, li, idx) in enumerate(units):
                mask = (head_masks if kind == "head" else ffn_masks)[li]
                mask[idx] = 0.0
                try:
                    hidden = dense.states[li]
                    for j in range(li, n_layers):
                        hidden = adapter.run_layer(layers[j], hidden, dense.mask)
                        diff = (hidden - dense.states[j + 1]).double().pow(2).sum(-1)  # (B, T)
                        b_err[u, :, j] = (diff * keep).sum(-1)
                    out = loss.output(adapter, model, hidden, dense.keep)
                    b_kl[u] = loss.damage(dense.logits, out, dense.keep)
                finally:
                    mask[idx] = 1.0
                bar.update(1)
            kl.append(b_kl)
            err.append(b_err)
    bar.close()
    return MaskingTerms(torch.cat(kl, 1), torch.cat(err, 1), torch.cat(sq, 0), torch.cat(tokens, 0))
