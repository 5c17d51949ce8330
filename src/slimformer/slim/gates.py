"""Gates on heads, FFN neuron groups and whole layers, and the gated model that trains with them.

Every attention head and every group of ``group_size`` FFN neurons of every layer has one gate
logit ``s``. Units are ranked by ``s - log(cost / mean cost)`` (importance per unit of cost); a
budget keeps the longest prefix of that ranking whose cost fits (so the unit sets of two budgets
are nested), and a layer none of whose units is kept is dropped whole (it becomes the identity,
which is what surgery does with a removed layer). Costs come from the cost model
(:meth:`slimformer.budget.Budget.measure`) by finite differences, so the same ranking serves
memory, parameter and MACs budgets.

In training the hard 0/1 masks of a sampled budget go forward and the gradient reaches the logits
through the keep probabilities ``p = sigmoid(s)`` (straight-through); in evaluation the masks are
exactly 0/1. Masks are applied through the :class:`~slimformer.arch.ArchAdapter` (hooks before
the attention output projection and the second FFN projection), never by touching BERT classes.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from slimformer.arch import get_adapter
from slimformer.budget import Budget
from slimformer.structure import LayerShape, Structure


@dataclass(frozen=True)
class UnitCosts:
    """What each unit costs in one budget's unit (bytes, params or MACs), from the cost model.

    Attributes:
        head: one attention head (its q/k/v rows and output-projection columns).
        neuron: one FFN neuron.
        layer: a present layer with no heads and no neurons (LayerNorms, output biases).
        encoder: the whole dense encoder (every layer, every unit).
        rest: everything outside the encoder (embeddings, classifier), for the current vocabulary.
    """

    head: float
    neuron: float
    layer: float
    encoder: float
    rest: float


def unit_costs(structure: Structure, budget: Budget) -> UnitCosts:
    """Per-unit costs of ``structure`` in ``budget``'s unit (every cost is linear in the units).

    Raises:
        ValueError: a latency budget (its cost is not a sum over units).
    """
    if budget.kind == "latency":
        raise ValueError(f"{budget}: slimming extracts by memory, params or macs budgets, not latency")
    dims = structure.dims

    def cost(*layers: LayerShape) -> float:
        return budget.measure(Structure(dims, tuple(layers)))

    rest = cost()
    layer = cost(LayerShape(0, 0, 0)) - rest
    head = cost(LayerShape(1, 0, 0)) - rest - layer
    neuron = cost(LayerShape(0, 1, 0)) - rest - layer
    encoder = budget.measure(structure) - rest
    return UnitCosts(head=head, neuron=neuron, layer=layer, encoder=encoder, rest=rest)


@dataclass(frozen=True)
class Selection:
    """Hard masks of one budget: ``heads (L, H)``, ``groups (L, G)`` and ``layers (L,)`` (bool), and their cost."""

    heads: torch.Tensor
    groups: torch.Tensor
    layers: torch.Tensor
    cost: float


class Gates(nn.Module):
    """Gate logits of every head ``(L, H)`` and FFN neuron group ``(L, G)`` of a dense encoder."""

    def __init__(self, num_layers: int, num_heads: int, ffn: int, group_size: int):
        super().__init__()
        if min(num_layers, num_heads, ffn, group_size) < 1:
            raise ValueError(
                f"Gates need >= 1 layer, head, FFN neuron and group size; got {num_layers}, {num_heads}, {ffn}, "
                f"{group_size}"
            )
        groups = math.ceil(ffn / group_size)
        self.group_size = group_size
        self.head_logits = nn.Parameter(torch.zeros(num_layers, num_heads))
        self.ffn_logits = nn.Parameter(torch.zeros(num_layers, groups))
        sizes = torch.full((groups,), group_size, dtype=torch.long)
        sizes[-1] = ffn - group_size * (groups - 1)
        self.register_buffer("group_sizes", sizes, persistent=False)  # (G,)

    @property
    def num_layers(self) -> int:
        return self.head_logits.shape[0]

    def keep_probs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sigmoid(head logits) (L, H), sigmoid(ffn logits) (L, G))``."""
        return torch.sigmoid(self.head_logits), torch.sigmoid(self.ffn_logits)

    def unit_cost_tensors(self, costs: UnitCosts) -> tuple[torch.Tensor, torch.Tensor]:
        """Cost of each head ``(L, H)`` and each group ``(L, G)``."""
        h = torch.full_like(self.head_logits, costs.head, dtype=torch.float64)
        g = (self.group_sizes.to(torch.float64) * costs.neuron).expand(self.num_layers, -1)
        return h, g

    @torch.no_grad()
    def select(self, limit: float, costs: UnitCosts) -> Selection:
        """The longest prefix of the ranking whose encoder cost is at most ``limit`` (see module docstring)."""
        h_cost, g_cost = self.unit_cost_tensors(costs)
        cost = torch.cat([h_cost.flatten(), g_cost.flatten()])  # (N,)
        logits = torch.cat([self.head_logits.detach().flatten(), self.ffn_logits.detach().flatten()]).double()
        key = logits - torch.log(cost / cost.mean())
        n_layers, n_heads, n_groups = self.num_layers, self.head_logits.shape[1], self.ffn_logits.shape[1]
        layer_of = torch.cat(
            [torch.arange(n_layers).repeat_interleave(n_heads), torch.arange(n_layers).repeat_interleave(n_groups)]
        ).tolist()
        order = torch.argsort(key, descending=True, stable=True).tolist()  # ties: lower index first
        keep = torch.zeros(len(order), dtype=torch.bool)
        layers = torch.zeros(n_layers, dtype=torch.bool)
        total, costs_list = 0.0, cost.tolist()
        for u in order:
            step = costs_list[u] + (0.0 if layers[layer_of[u]] else costs.layer)
            if total + step > limit:
                break
            total += step
            keep[u] = True
            layers[layer_of[u]] = True
        heads = keep[: n_layers * n_heads].view(n_layers, n_heads)
        groups = keep[n_layers * n_heads :].view(n_layers, n_groups)
        return Selection(heads=heads, groups=groups, layers=layers, cost=total)

    def expected_cost(self, costs: UnitCosts) -> torch.Tensor:
        """Differentiable expected encoder cost when each unit is kept with its probability, ``()``."""
        p_h, p_g = self.keep_probs()
        h_cost, g_cost = self.unit_cost_tensors(costs)
        # a layer is present unless all of its units are dropped
        p_layer = 1 - torch.exp(
            torch.log1p(-p_h.clamp(max=1 - 1e-6)).sum(1) + torch.log1p(-p_g.clamp(max=1 - 1e-6)).sum(1)
        )
        return (p_h * h_cost.float()).sum() + (p_g * g_cost.float()).sum() + costs.layer * p_layer.sum()

    def neuron_mask(self, groups: torch.Tensor) -> torch.Tensor:
        """Per-group values ``(L, G)`` -> per-neuron values ``(L, F)``."""
        return groups.repeat_interleave(self.group_sizes.to(groups.device), dim=1)


class SlimmedModel(nn.Module):
    """A dense classifier with gates; forward runs it at a budget through the adapter's layer loop.

    Attributes:
        model: the (trainable) dense classifier.
        gates: its :class:`Gates`.
        costs: encoder-memory costs of the units (fp32 bytes), what training budgets are fractions of.
        fraction: when set, a plain ``forward(**batch)`` runs at this encoder-memory fraction (for
            :func:`slimformer.evaluate.evaluate`); ``None`` runs the dense model ungated.
        info: JSON-ready metadata (task, training report) carried to the run folder.
    """

    def __init__(self, model: nn.Module, group_size: int = 64, gates: Gates | None = None):
        super().__init__()
        self.adapter = get_adapter(model)
        structure = Structure.from_model(model)
        if not structure.is_dense():
            raise ValueError(
                "slimming needs an unpruned model (every head and FFN neuron present); this one has "
                f"{[(s.heads, s.ffn) for s in structure.layers]}"
            )
        dims = structure.dims
        self.model = model
        self.gates = gates or Gates(dims.num_layers, dims.num_heads, dims.ffn, group_size)
        self.costs = unit_costs(structure, Budget(kind="memory", value=1.0, relative=True))
        self.fraction: float | None = None
        self.info: dict = {}

    @property
    def config(self):
        return self.model.config

    def select(self, fraction: float) -> Selection:
        """Hard masks at ``fraction`` of the dense encoder's memory."""
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction={fraction!r}: must be in (0, 1]")
        return self.gates.select(fraction * self.costs.encoder, self.costs)

    @contextmanager
    def at(self, fraction: float | None):
        """Run plain ``forward`` calls at ``fraction`` inside the block (``None``: ungated)."""
        old, self.fraction = self.fraction, fraction
        try:
            yield self
        finally:
            self.fraction = old

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        selection: Selection | None = None,
        straight_through: bool = False,
        hidden_states: bool = False,
    ):
        """Logits ``(B, C)`` at ``selection`` (or at ``self.fraction``; neither: ungated).

        Args:
            straight_through: forward the hard masks, backpropagate into the gate logits through
                the keep probabilities.
            hidden_states: also return every original layer's output ``(B, T, hidden)`` (a dropped
                layer passes its input through) as ``output.hidden_states``.
        """
        if selection is None and self.fraction is not None:
            selection = self.select(self.fraction)
        heads = groups = layers = None
        if selection is not None:
            heads, groups, layers = (x.float() for x in (selection.heads, selection.groups, selection.layers))
            if straight_through:
                p_h, p_g = self.gates.keep_probs()
                heads = heads + p_h - p_h.detach()  # value: the hard mask; gradient: d/dp
                groups = groups + p_g - p_g.detach()
            neurons = self.gates.neuron_mask(groups)  # (L, F)
        m, adapter = self.model, self.adapter
        hidden = adapter.embed(m, input_ids, token_type_ids)  # (B, T, hidden)
        mask = adapter.layer_mask(m, hidden, attention_mask)
        outputs = []
        with _unit_masks(adapter, m, heads, neurons if selection is not None else None):
            for i, layer in enumerate(adapter.layers(m)):
                if layers is None or layers[i] > 0:
                    hidden = adapter.run_layer(layer, hidden, mask)
                outputs.append(hidden)
        logits = adapter.classify(m, hidden)  # (B, C)
        return SequenceClassifierOutput(logits=logits, hidden_states=tuple(outputs) if hidden_states else None)


@contextmanager
def _unit_masks(adapter, model, heads: torch.Tensor | None, neurons: torch.Tensor | None):
    """Scale head outputs before the output projection and neuron activations before ``fc_out``."""
    handles = []

    def head_hook(gate: torch.Tensor, head_size: int):
        def hook(module, args):
            scale = gate.to(args[0].dtype).repeat_interleave(head_size)  # (H * s,)
            return (args[0] * scale, *args[1:])  # (B, T, H * s)

        return hook

    def ffn_hook(gate: torch.Tensor):
        def hook(module, args):
            return (args[0] * gate.to(args[0].dtype), *args[1:])  # (B, T, F) * (F,)

        return hook

    try:
        if heads is not None:
            for i, layer in enumerate(adapter.layers(model)):
                att = adapter.attention(layer)
                handles.append(att.o.register_forward_pre_hook(head_hook(heads[i], att.head_size)))
                handles.append(adapter.ffn(layer).fc_out.register_forward_pre_hook(ffn_hook(neurons[i])))
        yield
    finally:
        for h in handles:
            h.remove()
