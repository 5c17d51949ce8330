"""Repair a pruned model without retraining: refit the output projections by least squares.

Pruning a head or a neuron removes its contribution to the residual stream, and the error grows
layer after layer. Following the "mask tuning" step of Kwon et al. (2022, *A Fast Post-Training
Pruning Framework for Transformers*) but with a full linear refit instead of per-unit scales, each
sublayer's output projection (attention ``o``, FFN ``fc_out``; weight and bias, over the units that
remain) is re-solved so that the pruned model's pre-LayerNorm residual sum matches the dense
model's on calibration tokens::

    attention:  min_{W,b} sum_t || x_p + W a_p + b - (x_d + O_d(attn_d(x_d))) ||^2 + lam ||W - W_0||_F^2
    FFN:        min_{W,b} sum_t || h_p + W m_p + b - (h_d + F_d(h_d)) ||^2        + lam ||W - W_0||_F^2

over all non-padding tokens ``t``, where ``x`` is the layer input, ``a_p`` the kept heads' outputs
(the input of ``o``), ``h = LN1(x + O(attn(x)))`` and ``m_p`` the kept neurons' activations (the input
of ``fc_out``); ``_p`` is the pruned model, ``_d`` the dense one. The FFN problem uses the already
repaired attention, and layer ``l`` sees the output of the already repaired layers ``0..l-1``, so the
fit corrects upstream errors instead of accumulating them.

Regularisation: ``lam = ridge * trace(A^T A) / k`` (the mean squared activation of a unit, times the
token count), so ``ridge`` is unitless; it pulls ``W`` towards the pruned weights ``W_0`` rather than
towards zero, so a badly determined direction keeps its original weight and ``ridge -> inf`` gives
back the unrepaired model. The bias is not regularised. A sublayer with no units left (0 heads /
0 neurons) has only its bias refit, to the mean residual. The normal equations are accumulated
batch by batch in float64 and solved by Cholesky (least squares if singular).

Cost: per layer, one dense pass and about 2.3 pruned passes over the calibration batches plus the
float64 products, about 3x one dense forward in all (MiniLM-L6, 512 examples: ~25 s on one
thread). Memory: both models' hidden states at the current layer and the dense FFN targets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from slimformer.arch import ArchAdapter, get_adapter
from slimformer.static.importance import Batches
from slimformer.structure import Structure

logger = logging.getLogger(__name__)


class _Stop(Exception):
    """Raised from a hook to end a layer's forward once the activation we need is captured."""


@dataclass
class _Batch:
    """One calibration batch as it flows through both models, one layer at a time."""

    keep: torch.Tensor  # (B, T) bool, non-padding tokens
    x_d: torch.Tensor  # (B, T, hidden) dense model's input to the current layer
    x_p: torch.Tensor  # (B, T, hidden) pruned (already repaired) model's input to the current layer
    mask_d: object  # what adapter.run_layer expects for the dense model
    mask_p: object


class _NormalEquations:
    """Running float64 sums for ``min || Y - [X, 1] W ||^2`` (X: (N, k), Y: (N, hidden)); no ``1``
    column (intercept) when the projection has no bias (ModernBERT)."""

    def __init__(self, k: int, hidden: int, device: torch.device, *, intercept: bool = True):
        self.extra = int(intercept)
        self.gram = torch.zeros(k + self.extra, k + self.extra, dtype=torch.float64, device=device)  # (k+1, k+1)
        self.cross = torch.zeros(k + self.extra, hidden, dtype=torch.float64, device=device)  # (k+1, hidden)
        self.yy = 0.0  # ||Y||^2
        self.target = 0.0  # ||target||^2, the denominator of the relative error

    def add(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> None:
        ones = x.new_ones(x.shape[0], self.extra, dtype=torch.float64)
        xa = torch.cat([x.to(torch.float64), ones], dim=1)  # (N, k+1)
        y = y.to(torch.float64)  # (N, hidden)
        # float64 products, not only float64 sums: with float32 products a no-op repair (nothing
        # pruned, tiny ridge) already moves weights by ~3% along badly conditioned directions.
        self.gram += xa.T @ xa
        self.cross += xa.T @ y
        self.yy += float(y.square().sum())
        self.target += _sq_norm(target)

    def rel_error(self, w: torch.Tensor) -> float:
        """``||Y - [X,1] w|| / ||target||`` from the sums alone; ``w`` is (k+1, hidden)."""
        sq = self.yy - 2 * float((w * self.cross).sum()) + float((w * (self.gram @ w)).sum())
        return (max(sq, 0.0) / max(self.target, 1e-30)) ** 0.5

    def solve(self, w0: torch.Tensor, ridge: float) -> tuple[torch.Tensor, float]:
        """The regularised solution (k+1, hidden) and the absolute ridge ``lam`` used."""
        k = self.gram.shape[0] - self.extra
        if not self.gram.numel():  # no units and no bias: nothing to fit
            return w0, 0.0
        gram, rhs = self.gram.clone(), self.cross.clone()
        lam = ridge * float(gram.diagonal()[:k].mean()) if k else 0.0
        if lam > 0:
            idx = torch.arange(k, device=gram.device)
            gram[idx, idx] += lam
            rhs[:k] += lam * w0[:k]  # shrink towards the pruned weights, not towards zero
        chol, info = torch.linalg.cholesky_ex(gram)
        if int(info) == 0:
            return torch.cholesky_solve(rhs, chol), lam
        logger.debug("normal equations singular (k=%d, lam=%g); using least squares", k, lam)
        return torch.linalg.lstsq(gram.cpu(), rhs.cpu(), driver="gelsd").solution.to(gram.device), lam


def _sq_norm(x: torch.Tensor) -> float:
    """Squared Frobenius norm, accumulated in float64 without a float64 copy."""
    return float(torch.linalg.vector_norm(x, dtype=torch.float64)) ** 2


def _augmented(linear: nn.Linear) -> torch.Tensor:
    """``[W^T; b]``: (in + 1, out) float64, the layout of the normal equations' solution."""
    parts = [linear.weight.T] if linear.bias is None else [linear.weight.T, linear.bias[None]]
    return torch.cat(parts, dim=0).to(torch.float64)


def _assign(linear: nn.Linear, w: torch.Tensor) -> None:
    k = linear.in_features
    linear.weight.copy_(w[:k].T.to(linear.weight.dtype))  # (out, k)
    if linear.bias is not None:
        linear.bias.copy_(w[k].to(linear.bias.dtype))  # (out,)


@contextmanager
def _hooks(specs: list[tuple[nn.Module, str, str]]) -> Iterator[dict[str, torch.Tensor]]:
    """Capture activations: ``(module, key, kind)``; kind ``"in"`` / ``"out"`` stores the module's
    input / output under ``key``; ``"in!"`` stores the input and then stops the forward (raises
    :class:`_Stop`), so a pass that only needs an early activation skips the rest of the layer."""
    store: dict[str, torch.Tensor] = {}
    handles = []

    def pre(key: str, stop: bool):
        def hook(module, args):
            store[key] = args[0]
            if stop:
                raise _Stop

        return hook

    def post(key: str):
        def hook(module, args, output):
            store[key] = output

        return hook

    for module, key, kind in specs:
        if kind == "out":
            handles.append(module.register_forward_hook(post(key)))
        else:
            handles.append(module.register_forward_pre_hook(pre(key, kind == "in!")))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def _run(adapter: ArchAdapter, layer: nn.Module, hidden: torch.Tensor, mask) -> torch.Tensor | None:
    try:
        return adapter.run_layer(layer, hidden, mask)
    except _Stop:
        return None


def _check(pruned, dense, batches: Batches, ridge: float) -> ArchAdapter:
    if pruned is dense:
        raise ValueError("repair needs two models: the pruned one and the dense original (got the same object)")
    adapter, adapter_d = get_adapter(pruned), get_adapter(dense)
    hid_p, hid_d = adapter.dims(pruned.config).hidden, adapter_d.dims(dense.config).hidden
    if adapter.family != adapter_d.family or hid_p != hid_d:
        raise ValueError(
            f"pruned and dense models differ: pruned is {adapter.family!r} with hidden size {hid_p}, "
            f"dense is {adapter_d.family!r} with hidden size {hid_d}"
        )
    if not batches:
        raise ValueError("repair needs calibration data: batches is empty")
    if any(adapter.main_input not in b for b in batches):
        raise ValueError(
            f"every calibration batch needs {adapter.main_input!r} (and, for text, usually 'attention_mask')"
        )
    if not ridge >= 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    dense_params = {p.data_ptr() for p in dense.parameters()}
    for layer in adapter.layers(pruned):
        for lin in (adapter.attention(layer).o, adapter.ffn(layer).fc_out):
            if lin.weight.numel() and lin.weight.data_ptr() in dense_params:
                raise ValueError("the pruned model shares output projections with the dense one; pass a copy")
    return adapter


def _prepare(adapter: ArchAdapter, pruned, dense, batches: Batches) -> list[_Batch]:
    device = next(pruned.parameters()).device
    out = []
    for b in batches:
        b = {k: v.to(device) for k, v in b.items() if k != "labels"}
        x_d, x_p = adapter.embed_batch(dense, b), adapter.embed_batch(pruned, b)  # (B, T, hidden)
        am, pad = adapter.token_mask(b, x_d), adapter.padding_mask(b)  # (B, T); pad may be None
        mask_d, mask_p = adapter.layer_mask(dense, x_d, pad), adapter.layer_mask(pruned, x_p, pad)
        out.append(_Batch(am.bool(), x_d, x_p, mask_d, mask_p))
    return out


def _repair_layer(adapter: ArchAdapter, layer_p: nn.Module, layer_d: nn.Module, data: list[_Batch], ridge: float):
    """Refit one pruned layer's ``o`` then ``fc_out``; advance both models' hidden states past it."""
    att_p, ffn_p = adapter.attention(layer_p), adapter.ffn(layer_p)
    att_d, ffn_d = adapter.attention(layer_d), adapter.ffn(layer_d)
    hidden, device = att_p.o.out_features, att_p.o.weight.device

    # Pass 1: dense layer in full (targets of both sublayers, next input); pruned layer up to `o`.
    eq_att = _NormalEquations(att_p.o.in_features, hidden, device, intercept=att_p.o.bias is not None)
    ffn_targets = []
    specs = [
        (att_d.o, "o_d", "out"),
        (adapter.ffn_input(layer_d), "h_d", "in"),
        (ffn_d.fc_out, "f_d", "out"),
        (att_p.o, "a_p", "in!"),
    ]
    with _hooks(specs) as cap:
        for b in data:
            y_d = adapter.run_layer(layer_d, b.x_d, b.mask_d)  # (B, T, hidden)
            t_att = (b.x_d + cap["o_d"])[b.keep]  # (N, hidden) dense pre-LN1 residual sum
            ffn_targets.append((cap["h_d"] + cap["f_d"])[b.keep])  # (N, hidden) dense pre-LN2 sum
            _run(adapter, layer_p, b.x_p, b.mask_p)
            eq_att.add(cap["a_p"][b.keep], t_att - b.x_p[b.keep], t_att)  # (N, k_heads * s), (N, hidden)
            b.x_d = y_d
    w0 = _augmented(att_p.o)
    w, lam_att = eq_att.solve(w0, ridge)
    _assign(att_p.o, w)
    att = {"units": att_p.num_heads, "before": eq_att.rel_error(w0), "after": eq_att.rel_error(w), "lam": lam_att}

    # Pass 2: pruned layer with the repaired `o`, up to `fc_out`.
    eq_ffn = _NormalEquations(ffn_p.fc_out.in_features, hidden, device, intercept=ffn_p.fc_out.bias is not None)
    with _hooks([(adapter.ffn_input(layer_p), "h_p", "in"), (ffn_p.fc_out, "m_p", "in!")]) as cap:
        for b, t_ffn in zip(data, ffn_targets, strict=True):
            _run(adapter, layer_p, b.x_p, b.mask_p)
            eq_ffn.add(cap["m_p"][b.keep], t_ffn - cap["h_p"][b.keep], t_ffn)  # (N, F_kept), (N, hidden)
    w0 = _augmented(ffn_p.fc_out)
    w, lam_ffn = eq_ffn.solve(w0, ridge)
    _assign(ffn_p.fc_out, w)
    ffn = {"units": ffn_p.width, "before": eq_ffn.rel_error(w0), "after": eq_ffn.rel_error(w), "lam": lam_ffn}

    # Pass 3: the repaired layer's output is the next layer's input.
    err = ref = 0.0
    for b in data:
        b.x_p = adapter.run_layer(layer_p, b.x_p, b.mask_p)  # (B, T, hidden)
        err += _sq_norm((b.x_p - b.x_d)[b.keep])
        ref += _sq_norm(b.x_d[b.keep])
    return {"attention": att, "ffn": ffn, "output_error": (err / max(ref, 1e-30)) ** 0.5}


@torch.no_grad()
def repair(pruned, dense, batches: Batches, *, ridge: float = 1e-2, progress: bool = True) -> dict:
    """Refit, in place, the output projections of ``pruned`` to match ``dense`` on ``batches``.

    Layer by layer, first to last, the attention output projection and then the FFN output
    projection of each present layer are re-solved by ridge least squares (see the module
    docstring for the exact objective). Only their weights and biases change, never the shapes.
    Layers removed from ``pruned`` are skipped: the next present layer is fit to the dense output
    of its own origin layer (``Structure.origin``). ``dense`` is only read.

    Args:
        pruned: the pruned model (modified in place); same family and hidden size as ``dense``.
        dense: the original model the pruned one came from.
        batches: tokenized calibration batches (``input_ids``, ``attention_mask``, optional
            ``token_type_ids``); padding tokens are left out of the fit.
        ridge: unitless regularisation strength, relative to the mean squared unit activation.
        progress: show a tqdm bar over layers.

    Returns:
        ``{"layers": [...], "skipped": [...], "tokens": N, "seconds": s, "ridge": ridge}``; each
        layer entry has ``layer``, ``origin``, ``seconds``, ``output_error`` (relative error of its
        output vs the dense layer's, after repair) and, for ``attention`` and ``ffn``, ``units``
        (heads / neurons kept), ``lam`` (absolute ridge) and ``before`` / ``after``: the relative
        error ``||target - residual sum|| / ||target||`` with the original and the refit weights,
        both on the same (already repaired upstream) inputs. ``skipped`` lists the origins of the
        dense layers absent from ``pruned``.

    Raises:
        ValueError: different families or hidden sizes (naming both), empty or malformed batches,
            negative ridge, shared weights, or pruned layers whose origin is not in ``dense``.
    """
    start = time.perf_counter()
    adapter = _check(pruned, dense, batches, ridge)
    origins_p = [s.origin for s in Structure.from_model(pruned).layers]
    origins_d = [s.origin for s in Structure.from_model(dense).layers]
    if not set(origins_p) <= set(origins_d) or origins_p != sorted(origins_p):
        raise ValueError(f"pruned layers come from original layers {origins_p}; the dense model has {origins_d}")
    layers_p, layers_d = adapter.layers(pruned), adapter.layers(dense)
    by_origin = dict(zip(origins_p, layers_p, strict=True))
    modes = (pruned.training, dense.training)
    pruned.eval()  # no dropout: the fit must see the deterministic forward
    dense.eval()
    try:
        data = _prepare(adapter, pruned, dense, batches)
        tokens = int(sum(int(b.keep.sum()) for b in data))
        stats, skipped = [], []
        last = max(origins_p, default=-1)
        bar = tqdm(total=origins_d.index(last) + 1 if origins_p else 0, desc="repair", disable=not progress)
        for layer_d, origin in zip(layers_d, origins_d, strict=True):
            if origin > last:
                break  # nothing left to fit
            t0 = time.perf_counter()
            if origin in by_origin:
                entry = _repair_layer(adapter, by_origin[origin], layer_d, data, ridge)
                entry = {"layer": origins_p.index(origin), "origin": origin, **entry}
                entry["seconds"] = time.perf_counter() - t0
                stats.append(entry)
                logger.info(
                    "repair layer %d (origin %d): attention %.4f -> %.4f, ffn %.4f -> %.4f, output error %.4f",
                    entry["layer"],
                    origin,
                    entry["attention"]["before"],
                    entry["attention"]["after"],
                    entry["ffn"]["before"],
                    entry["ffn"]["after"],
                    entry["output_error"],
                )
            else:
                skipped.append(origin)  # removed layer: only the dense stream advances
                for b in data:
                    b.x_d = adapter.run_layer(layer_d, b.x_d, b.mask_d)
            bar.update()
        bar.close()
    finally:
        pruned.train(modes[0])
        dense.train(modes[1])
    seconds = time.perf_counter() - start
    logger.info("repair: %d layers refit on %d tokens in %.1f s", len(stats), tokens, seconds)
    return {"layers": stats, "skipped": skipped, "tokens": tokens, "seconds": seconds, "ridge": ridge}
