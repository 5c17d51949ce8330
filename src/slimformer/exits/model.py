"""A classifier with an exit after every layer, and batched inference that drops finished rows.

:class:`MultiExitModel` wraps a (possibly slender: uneven per-layer shapes) sequence classifier,
built from its config with the same structure code as saved pruned models, and adds a small exit
head after every layer but the last; the last exit is the classifier's own head, so with the rule
``none`` the model computes exactly what the wrapped classifier computes.

Inference runs its own layer loop through the architecture adapter. After each exit it applies
the rule to every row, writes the finished rows' logits into the output at their original
indices, and carries on with only the unfinished rows (hidden states, padding mask and rule state
are index-selected; trailing padding columns no longer used by any row are cut off). Every row's
result is therefore what it would be if it ran alone, in the same order.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from slimformer.arch import get_adapter_for_config
from slimformer.exits.config import HEAD_KINDS, ExitRule
from slimformer.hf_remote.modeling_slimformer import SLIM_CLASSES

EXIT_KEY = "slimformer_exit"
FORMAT_VERSION = 1


class ExitHead(nn.Module):
    """A small classifier reading one layer's output.

    * ``mean``: masked mean of the real tokens, dense + tanh, then linear. Early layers of a
      model fine-tuned through its last-layer [CLS] carry little about the input at [CLS] yet;
      the mean of the tokens does.
    * ``pooler``: the [CLS] / <s> token, dense + tanh, then linear (the BERT pooler's shape).
    * ``linear``: the [CLS] token, linear only.
    """

    def __init__(self, hidden: int, num_labels: int, kind: str, dropout: float = 0.1):
        super().__init__()
        if kind not in HEAD_KINDS:
            raise ValueError(f"exit head kind {kind!r}: must be one of {', '.join(HEAD_KINDS)}")
        self.kind = kind
        self.dense = nn.Linear(hidden, hidden) if kind != "linear" else None
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, num_labels)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``hidden (B, T, d)``, ``mask (B, T)`` 0/1 padding mask -> logits ``(B, C)``."""
        if self.kind == "mean":
            m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            x = (hidden * m).sum(1) / m.sum(1).clamp(min=1)  # (B, d)
        else:
            x = hidden[:, 0]  # (B, d): the [CLS] / <s> token
        if self.dense is not None:
            x = torch.tanh(self.dense(x))
        return self.out(self.dropout(x))  # (B, C)

    def macs(self, seq_len: int) -> int:
        """Multiply-accumulates per sequence of ``seq_len`` tokens (the mean's additions count as MACs)."""
        d, c = self.out.in_features, self.out.out_features
        pooling = seq_len * d if self.kind == "mean" else 0
        return pooling + (d * d if self.dense is not None else 0) + d * c


@dataclass
class ExitOutput(ModelOutput):
    """``logits`` (B, C) of the exit each row left at; ``exit_layers`` (B,): layers it ran (1..L)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    exit_layers: torch.Tensor | None = None


def exit_spec(config) -> dict:
    """The exit section of a config, checked.

    Raises:
        ValueError: no section, or an unknown format.
    """
    spec = getattr(config, EXIT_KEY, None)
    if not spec:
        raise ValueError(f"the config has no {EXIT_KEY!r} section: not a multi-exit model")
    if int(spec.get("format", 0)) != FORMAT_VERSION:
        raise ValueError(f"unsupported {EXIT_KEY} format {spec.get('format')!r}; this version reads {FORMAT_VERSION}")
    return spec


def rule_step(rule: ExitRule, logits: torch.Tensor, state: dict) -> torch.Tensor:
    """Which rows leave at this exit: ``(b, C) -> (b,)`` bool; updates ``state`` (patience counters).

    The same function decides at inference and in calibration, so both agree on every row.
    """
    if rule.kind == "none":
        return torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
    if rule.kind == "patience":
        pred = logits.argmax(-1)  # (b,)
        last = state.get("pred")
        streak = torch.ones_like(pred) if last is None else torch.where(pred == last, state["streak"] + 1, 1)
        state["pred"], state["streak"] = pred, streak
        return streak >= rule.patience
    logp = F.log_softmax(logits.float(), dim=-1)  # (b, C)
    if rule.kind == "confidence":
        return logp.max(-1).values.exp() >= rule.threshold
    entropy = -(logp.exp() * logp).sum(-1) / math.log(logits.shape[-1])  # (b,) in [0, 1]
    return entropy <= rule.threshold


def _select_state(state: dict, keep: torch.Tensor) -> dict:
    return {k: v.index_select(0, keep) for k, v in state.items()}


class MultiExitModel(PreTrainedModel):
    """A sequence classifier with an exit after every layer (see the module docstring).

    ``forward(input_ids, attention_mask, token_type_ids, labels)`` returns :class:`ExitOutput`.
    The exit rule lives in ``config.slimformer_exit["rule"]`` (:meth:`set_rule`), so it saves and
    loads with the model; ``forward(..., exit_rule=...)`` overrides it for one call.
    """

    config_class = PretrainedConfig
    base_model_prefix = "backbone"
    main_input_name = "input_ids"
    # attention runs inside the wrapped classifier's layers, which support these
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    def __init__(self, config):
        super().__init__(config)
        spec = exit_spec(config)
        self.adapter = get_adapter_for_config(config)
        self.backbone = SLIM_CLASSES[self.adapter.family](config)  # per-layer shapes from config.slimformer
        dims = self.adapter.dims(config)
        n = len(self.adapter.layers(self.backbone))
        dropout = float(getattr(config, "hidden_dropout_prob", getattr(config, "dropout", 0.1)) or 0.0)
        self.exits = nn.ModuleList(ExitHead(dims.hidden, dims.num_labels, spec["head"], dropout) for _ in range(n - 1))
        self.post_init()

    # --- construction and settings -----------------------------------------------------------
    @classmethod
    def from_classifier(cls, model, *, head: str = "mean", rule: ExitRule | None = None) -> MultiExitModel:
        """Wrap a copy of a fine-tuned classifier (pruned or not); exit heads start from its own head.

        Raises:
            ValueError: unsupported architecture or head kind.
        """
        if isinstance(model, MultiExitModel):
            return copy.deepcopy(model)
        if head not in HEAD_KINDS:
            raise ValueError(f"head={head!r}: must be one of {', '.join(HEAD_KINDS)}")
        adapter = get_adapter_for_config(model.config)
        config = copy.deepcopy(model.config)
        config.__dict__.pop("auto_map", None)  # remote code of a saved slender classifier: not this layout
        rule = rule or ExitRule(kind="none")
        setattr(config, EXIT_KEY, {"format": FORMAT_VERSION, "head": head, "rule": rule.to_dict()})
        wrapper = cls(config)
        wrapper.backbone.load_state_dict(model.state_dict())
        paths = adapter.exit_head_paths  # the model's own dense + output layers, where it has them
        if paths is not None:
            dense, out = (model.get_submodule(p) for p in paths)
            with torch.no_grad():
                for ex in wrapper.exits:
                    if ex.dense is not None:
                        ex.dense.load_state_dict(dense.state_dict())
                    ex.out.load_state_dict(out.state_dict())
        return wrapper.eval()

    @classmethod
    def from_pretrained(cls, path, *args, config=None, **kwargs):
        """Load a saved multi-exit folder (the config is read with ``AutoConfig``)."""
        if config is None:
            config = AutoConfig.from_pretrained(str(path))
        return super().from_pretrained(path, *args, config=config, **kwargs)

    @property
    def num_layers(self) -> int:
        return len(self.exits) + 1

    @property
    def rule(self) -> ExitRule:
        return ExitRule.from_dict(exit_spec(self.config)["rule"])

    def set_rule(self, rule: ExitRule) -> MultiExitModel:
        """Make ``rule`` the model's exit rule (saved with it); returns the model."""
        if not isinstance(rule, ExitRule):
            raise ValueError(f"rule={rule!r}: must be an ExitRule")
        spec = dict(exit_spec(self.config))
        spec["rule"] = rule.to_dict()
        setattr(self.config, EXIT_KEY, spec)
        return self

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):  # only the exit heads get here: from_classifier overwrites the rest
            std = getattr(self.config, "initializer_range", 0.02) or 0.02
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    # --- forward -----------------------------------------------------------------------------
    def all_exits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        *,
        hidden_states: bool = False,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Every exit's logits on the full batch (training, calibration).

        Returns:
            ``(logits, hidden)``: ``L`` tensors ``(B, C)`` (the last from the classifier's own head)
            and, when ``hidden_states``, the ``L`` layer outputs ``(B, T, d)`` (else an empty list).
        """
        ad, bb = self.adapter, self.backbone
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = ad.embed(bb, input_ids, token_type_ids)  # (B, T, d)
        mask = ad.layer_mask(bb, hidden, attention_mask)
        logits, states = [], []
        layers = ad.layers(bb)
        for i, layer in enumerate(layers):
            hidden = ad.run_layer(layer, hidden, mask)  # (B, T, d)
            logits.append(self.exits[i](hidden, attention_mask) if i < len(self.exits) else ad.classify(bb, hidden))
            if hidden_states:
                states.append(hidden)
        return logits, states

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        exit_rule: ExitRule | None = None,
        **kwargs,
    ) -> ExitOutput:
        """Logits of the exit each row leaves at (training mode: every row runs every layer)."""
        rule = exit_rule if exit_rule is not None else self.rule
        if self.training:
            rule = ExitRule(kind="none")
        logits, exit_layers = self._early_exit(input_ids, attention_mask, token_type_ids, rule)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float(), labels.to(logits.device))
        return ExitOutput(loss=loss, logits=logits, exit_layers=exit_layers)

    def _early_exit(self, input_ids, attention_mask, token_type_ids, rule: ExitRule):
        ad, bb = self.adapter, self.backbone
        b = input_ids.shape[0]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = ad.embed(bb, input_ids, token_type_ids)  # (B, T, d)
        rows = torch.arange(b, device=hidden.device)  # original index of each live row
        exit_layers = torch.full((b,), self.num_layers, dtype=torch.long, device=hidden.device)
        out: torch.Tensor | None = None
        mask2d = attention_mask  # (b, T), shrinks with the live rows
        state: dict = {}
        layers = ad.layers(bb)
        mask = ad.layer_mask(bb, hidden, mask2d)
        for i, layer in enumerate(layers):
            hidden = ad.run_layer(layer, hidden, mask)  # (b, T, d)
            if i == len(layers) - 1:
                logits = ad.classify(bb, hidden)  # (b, C)
                out = logits.new_zeros(b, logits.shape[-1]) if out is None else out
                out[rows] = logits
                break
            if rule.kind == "none":
                continue
            logits = self.exits[i](hidden, mask2d)  # (b, C)
            done = rule_step(rule, logits, state)  # (b,)
            if not bool(done.any()):
                continue
            out = logits.new_zeros(b, logits.shape[-1]) if out is None else out
            out[rows[done]] = logits[done]
            exit_layers[rows[done]] = i + 1
            keep = (~done).nonzero().squeeze(1)  # (b',)
            if keep.numel() == 0:
                break
            rows, hidden, mask2d = rows[keep], hidden.index_select(0, keep), mask2d.index_select(0, keep)
            state = _select_state(state, keep)
            used = mask2d.any(0).nonzero()  # columns some live row still attends to
            length = int(used.max()) + 1 if used.numel() else 1
            if length < mask2d.shape[1]:  # trailing padding of rows that left: drop it
                hidden, mask2d = hidden[:, :length], mask2d[:, :length]
            mask = ad.layer_mask(bb, hidden, mask2d)
        return out, exit_layers


def exit_cost_table(model: MultiExitModel, seq_len: int) -> dict:
    """Cost of leaving after each depth, from the cost model plus the exit heads.

    Returns:
        ``{"macs_by_depth": [MACs of a row that runs k layers, k = 1..L], "dense_macs": MACs of
        the wrapped classifier (every layer, its own head, no exits), "params": backbone + exits,
        "exit_params": the exit heads alone, "exit_macs": per exit head}``. A row that runs ``k <
        L`` layers evaluated exits 1..k; a row that runs all ``L`` evaluated exits 1..L-1 and the
        classifier's head (only when the rule is not ``none``).
    """
    from slimformer.cost import cost_of, embedding_macs, head_macs
    from slimformer.structure import Structure

    structure = Structure.from_model(model.backbone)
    cost = cost_of(structure, seq_len)
    exit_macs = [ex.macs(seq_len) for ex in model.exits]
    by_depth, run = [], embedding_macs(structure.dims, seq_len)
    for k, layer in enumerate(cost.layers, start=1):
        run += layer["macs"]
        heads = sum(exit_macs[:k]) + (head_macs(structure.dims) if k == len(cost.layers) else 0)
        by_depth.append(run + heads)
    exit_params = sum(p.numel() for p in model.exits.parameters())
    return {
        "macs_by_depth": by_depth,
        "dense_macs": cost.macs,
        "params": cost.params + exit_params,
        "exit_params": exit_params,
        "exit_macs": exit_macs,
        "seq_len": seq_len,
    }


def expected_macs(model: MultiExitModel, exit_layers: torch.Tensor, seq_len: int) -> float:
    """Mean MACs per row given where each row left (``exit_layers`` 1..L), at ``seq_len`` tokens."""
    table = exit_cost_table(model, seq_len)["macs_by_depth"]
    return float(sum(table[int(k) - 1] for k in exit_layers.tolist()) / max(1, exit_layers.numel()))
