"""The cost model: parameters, bytes and MACs of a structure, and the marginal cost of each unit.

This is the one source of truth for every budget. MACs are multiply-accumulates for one sequence
of ``seq_len`` tokens: every Linear layer of the encoder, the two attention matmuls (QK^T and AV)
and the classification head (pooler + classifier, on the first token only; a token classifier's
head runs on every token). Embeddings are
lookups and count 0 MACs, except a projection of narrower embeddings up to the hidden size
(ELECTRA-small), one Linear per token; norms, softmax, activations and bias adds are not counted (they are
O(T * hidden), under 1% of the total for these models). Tested against
``torch.utils.flop_counter.FlopCounterMode`` on real forward passes.

Family terms come from :class:`~slimformer.arch.ModelDims`: a gated (GLU) FFN has two input rows
per neuron; a bias-free family (ModernBERT) has no Linear biases; a pre-norm family has no
attention norm in its first layer, a final norm, a normed head and no position table. Local
(sliding-window) attention is computed densely under a mask, so it costs what global attention
costs; rotary embeddings are elementwise (not counted).

DeBERTa's disentangled attention adds, per layer and head, a score against every row of the shared
relative-position table for each of c2p and p2c (``T x rows x s`` each; the gather that picks each
pair's row is free) and the table's projections by q / k (``rows x d x s`` each). Those projections
run once per forward, whatever the batch: counted here per sequence, they are exact at batch 1 and
overstate a batched forward; the budgets' ratios are unchanged (every term scales with the width).
The shared table and its norm are counted with the embeddings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from slimformer.arch import ModelDims
from slimformer.structure import LayerShape, Structure

MACS_NOTE = (
    "encoder linear layers + attention matmuls + classifier head, per sequence; "
    "embeddings are lookups (0 MACs); norms, softmax and activations not counted"
)


def image_seq_len(dims: ModelDims) -> int:
    """Tokens per image of an image family (patches + special tokens); 0 for a text family."""
    return dims.max_positions if dims.is_image else 0


def layer_macs(dims: ModelDims, shape: LayerShape, seq_len: int) -> dict[str, int]:
    """MACs of one layer for one sequence: ``{"attention", "ffn", "total"}``."""
    t, d = seq_len, dims.hidden
    attention = shape.heads * dims.head_size * _attention_macs_per_width(dims, t)
    ffn = _ffn_matrices(dims) * t * d * shape.ffn
    return {"attention": attention, "ffn": ffn, "total": attention + ffn}


def _attention_macs_per_width(dims: ModelDims, t: int) -> int:
    """MACs of one layer's attention per unit of its width (heads x head size), for ``t`` tokens."""
    d, rows = dims.hidden, dims.rel_rows
    # q, k, v and output projections: 4 (T x d) @ (d x width) products; scores and weighted sum:
    # 2 per head (T x s) @ (s x T), i.e. 2 * T^2 * width. DeBERTa: c2p / p2c scores against every
    # table row (T x rows each) and the table's projections (rows x d each).
    return 4 * t * d + 2 * t * t + dims.rel_terms * t * rows + dims.rel_projections * rows * d


def _own_rel_projections(dims: ModelDims) -> int:
    """DeBERTa without share_att_key: position Linears per layer (hidden -> width, with biases)."""
    return dims.rel_projections if dims.rel_own_projections else 0


def _ffn_matrices(dims: ModelDims) -> int:
    """Weight rows/columns one FFN neuron owns, in units of ``hidden``: in (+ gate) and out."""
    return 3 if dims.gated_ffn else 2


def layer_params(dims: ModelDims, shape: LayerShape) -> dict[str, int]:
    """Parameters of one layer: ``{"attention", "ffn", "total"}`` (LayerNorms included)."""
    d, width, b, f = dims.hidden, shape.heads * dims.head_size, int(dims.biases), shape.ffn
    norm = dims.norm_size * d
    attention_norm = 0 if dims.pre_norm and shape.origin == 0 else norm  # pre-norm: the first layer has none
    # q, k, v (weights + biases) and DeBERTa's own position projections, output projection (its bias
    # survives even with 0 heads), LayerNorm
    qkv = 3 + _own_rel_projections(dims)
    attention = qkv * (d * width + b * width) + (width * d + b * d) + attention_norm
    in_rows = f * (2 if dims.gated_ffn else 1)  # a GLU has a value row and a gate row per neuron
    ffn = (d * in_rows + b * in_rows) + (f * d + b * d) + norm
    return {"attention": attention, "ffn": ffn, "total": attention + ffn}


def embedding_params(dims: ModelDims) -> int:
    """Token, position and type tables with their LayerNorm, plus the projection up to ``hidden`` if any.

    DeBERTa's relative-position table (shared by the layers) and its LayerNorm count here too.
    An image family: the patch projection (weights and bias), the special tokens and the position
    table (no norm).
    """
    if dims.is_image:
        d = dims.hidden
        return dims.patch_inputs * d + d + dims.special_tokens * d + dims.max_positions * d
    width = dims.embedding_size or dims.hidden
    project = width * dims.hidden + dims.hidden if dims.embedding_size else 0
    positions = dims.max_positions if dims.position_table else 0
    relative = dims.rel_rows * dims.hidden + (dims.norm_size * dims.hidden if dims.rel_norm else 0)
    tables = (dims.vocab_size + positions + dims.type_vocab_size) * width + dims.norm_size * width
    return tables + project + relative


def embedding_macs(dims: ModelDims, seq_len: int) -> int:
    """Lookups cost nothing; a projection of narrower embeddings (ELECTRA-small) costs one per token.

    An image family's patch projection costs ``patch_inputs * hidden`` per patch.
    """
    if dims.is_image:
        return dims.num_patches * dims.patch_inputs * dims.hidden
    return seq_len * dims.embedding_size * dims.hidden


def head_params(dims: ModelDims) -> int:
    """Pooler / pre-classifier (d x d) and classifier (d x labels), with biases.

    A pre-norm family adds its final norm and the head's norm; the classifier always has a bias.
    """
    d = dims.hidden
    if dims.is_image:  # the final norm and the classifier on [CLS]; no pooler
        return dims.norm_size * d + d * dims.num_labels + dims.num_labels
    norms = 2 * dims.norm_size * d if dims.pre_norm else 0
    if dims.token_head and not dims.pre_norm:
        return d * dims.num_labels + dims.num_labels  # a token classifier's Linear, no pooler
    return d * d + int(dims.biases) * d + norms + d * dims.num_labels + dims.num_labels


def head_macs(dims: ModelDims, seq_len: int = 1) -> int:
    """MACs of the head: once per sequence, or on each of ``seq_len`` tokens for a token classifier.

    An image family has no pooler: its classifier reads the final-normed [CLS] state.
    """
    if dims.is_image:
        return dims.hidden * dims.num_labels
    dense = dims.hidden * dims.hidden if dims.pre_norm or not dims.token_head else 0
    per = dense + dims.hidden * dims.num_labels
    return per * seq_len if dims.token_head else per


def _linear_weights(dims: ModelDims, structure: Structure) -> int:
    """Weights of Linear layers (what int8 dynamic quantization stores in one byte each)."""
    d = dims.hidden
    # an image family has no pooler (its patch projection is a Conv2d: not int8); nor has a token head
    pooler = 0 if dims.is_image else (d * d if dims.pre_norm or not dims.token_head else 0)
    total = pooler + d * dims.num_labels + dims.embedding_size * d
    for s in structure.layers:
        width = s.heads * dims.head_size
        total += (4 + _own_rel_projections(dims)) * d * width + _ffn_matrices(dims) * d * s.ffn
    return total


@dataclass(frozen=True)
class Cost:
    """The cost of a structure at one sequence length."""

    params: int
    encoder_params: int
    embedding_params: int
    head_params: int
    bytes_fp32: int
    bytes_fp16: int
    bytes_int8: int
    macs: int
    seq_len: int
    layers: tuple[dict, ...]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["layers"] = list(self.layers)
        out["macs_note"] = MACS_NOTE
        return out


def cost_of(structure: Structure, seq_len: int = 128) -> Cost:
    """Parameters, bytes and MACs of ``structure`` for sequences of ``seq_len`` tokens.

    An image family's token count is fixed by its image size (patches + special tokens): it
    replaces ``seq_len``, and ``Cost.seq_len`` records it.

    Raises:
        ValueError: ``seq_len`` < 1.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    dims = structure.dims
    seq_len = image_seq_len(dims) or seq_len
    layers = []
    for s in structure.layers:
        m, p = layer_macs(dims, s, seq_len), layer_params(dims, s)
        layers.append({"heads": s.heads, "ffn": s.ffn, "origin": s.origin, "macs": m["total"], "params": p["total"]})
    encoder = sum(x["params"] for x in layers)
    emb, head = embedding_params(dims), head_params(dims)
    params = encoder + emb + head
    linear = _linear_weights(dims, structure)
    return Cost(
        params=params,
        encoder_params=encoder,
        embedding_params=emb,
        head_params=head,
        bytes_fp32=4 * params,
        bytes_fp16=2 * params,
        bytes_int8=linear + 4 * (params - linear),  # int8 Linear weights, everything else fp32
        macs=embedding_macs(dims, seq_len) + sum(x["macs"] for x in layers) + head_macs(dims, seq_len),
        seq_len=seq_len,
        layers=tuple(layers),
    )


def per_forward_macs(structure: Structure) -> int:
    """MACs that :func:`cost_of` counts per sequence but a forward pays once, whatever its batch.

    DeBERTa's projections of the relative-position table (0 for every other family).
    """
    dims = structure.dims
    width = sum(s.heads for s in structure.layers) * dims.head_size
    return width * dims.rel_projections * dims.rel_rows * dims.hidden


def batch_macs(structure: Structure, seq_len: int, batch: int) -> int:
    """MACs of one forward over ``batch`` sequences of ``seq_len`` tokens (``batch`` x the per-sequence
    count, less the per-forward terms counted ``batch - 1`` times too many)."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    return batch * cost_of(structure, seq_len).macs - (batch - 1) * per_forward_macs(structure)


def marginal_costs(structure: Structure, seq_len: int = 128) -> dict:
    """What one unit costs, for budget-aware selection.

    Returns ``{"head": {"macs", "params"}, "neuron": {"macs", "params"},
    "layer": [{"macs", "params"} per layer], "token": [macs per layer for one more token]}``.
    """
    dims = structure.dims
    seq_len = image_seq_len(dims) or seq_len
    d, s, t, m = dims.hidden, dims.head_size, seq_len, _ffn_matrices(dims)
    head_params = (4 + _own_rel_projections(dims)) * d * s + (3 + _own_rel_projections(dims)) * s * int(dims.biases)
    layer, token = [], []
    for shape in structure.layers:
        layer.append({"macs": layer_macs(dims, shape, t)["total"], "params": layer_params(dims, shape)["total"]})
        token.append(layer_macs(dims, shape, t + 1)["total"] - layer_macs(dims, shape, t)["total"])
    return {
        "head": {"macs": s * _attention_macs_per_width(dims, t), "params": head_params},
        "neuron": {"macs": m * t * d, "params": m * d + (m - 1) * int(dims.biases)},
        "layer": layer,
        "token": token,
    }
