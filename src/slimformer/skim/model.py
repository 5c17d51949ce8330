"""The skimming classifier: a keep/skim predictor before every layer after the first.

:class:`SkimMixin` turns a sequence classifier of any supported family into one with its own layer
loop (through the family's :class:`~slimformer.arch.ArchAdapter`: embed, run_layer, classify):

* **inference** (:meth:`SkimMixin.skim_forward`, used by ``forward`` in eval mode) is
  deterministic: a token is kept when its predictor's keep-minus-skim logit exceeds the threshold
  shift (0 by default). Skimmed tokens are removed for real: each sample's kept tokens are gathered
  and repacked into the shortest padded batch before the layer runs, so later layers see shorter
  sequences at batch size 1 and in batches. A skimmed token stays skimmed; its hidden state is
  frozen and forwarded to the output (``return_token_states=True`` scatters all of them back).
* **training** (:meth:`SkimMixin.skim_forward_masked`, used by ``forward`` in train mode) samples
  hard Gumbel-softmax decisions with straight-through gradients and removes skimmed tokens from the
  keys with an additive mask before the softmax, so a kept token sees exactly the keys it sees
  at inference. With ``noise=False`` it is the masked twin of inference (the tests check they agree).

[CLS] (position 0) is never skimmed; padding is never kept.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from slimformer.arch import get_adapter
from slimformer.hf_remote.modeling_slimformer import SLIM_CLASSES

SKIM_KEY = "slimformer_skim"
FORMAT = 1


class SkimPredictor(nn.Module):
    """A small MLP scoring each token: ``(..., hidden) -> (..., 2)`` logits ``[skim, keep]``."""

    def __init__(self, hidden: int, width: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden, width)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(width, 2)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden)))

    def reset(self, init_keep_logit: float) -> None:
        """Small random weights; biases such that every token starts with ``init_keep_logit``."""
        with torch.no_grad():
            for fc in (self.fc1, self.fc2):
                fc.weight.normal_(0.0, 0.02)
                fc.bias.zero_()
            self.fc2.bias.copy_(torch.tensor([-init_keep_logit / 2, init_keep_logit / 2]))

    def macs_per_token(self) -> int:
        return self.fc1.in_features * self.fc1.out_features + self.fc2.in_features * self.fc2.out_features


def keep_score(logits: torch.Tensor) -> torch.Tensor:
    """Keep-minus-skim logit: ``(..., 2) -> (...)``; a token is kept when it exceeds the shift."""
    return logits[..., 1] - logits[..., 0]


@dataclass
class SkimClassifierOutput(SequenceClassifierOutput):
    """``SequenceClassifierOutput`` plus skimming statistics.

    Attributes:
        skim_tokens: eval mode: ``(B, L)`` tokens each sample ran through each layer.
        skim_kept: train mode: ``(B, L - 1)`` differentiable fraction of real tokens kept per
            skimmed layer (what the skim loss averages).
    """

    skim_tokens: torch.Tensor | None = None
    skim_kept: torch.Tensor | None = None


@dataclass
class SkimOutput:
    """What one skimming pass returns.

    Attributes:
        logits: ``(B, num_labels)``.
        tokens: ``(B, L)`` tokens each sample ran through each layer (layer 0: all real tokens).
        states: ``(B, T, hidden)`` final state of every position (skimmed tokens: the state they
            had when skimmed), or ``None`` when not asked for.
    """

    logits: torch.Tensor
    tokens: torch.Tensor
    states: torch.Tensor | None = None


class SkimMixin:
    """Mixed into a family's classifier (first base): predictors plus the skimming layer loops."""

    #: Gumbel-softmax temperature of train-mode forward passes (set by training; not saved).
    skim_tau: float = 1.0

    def _init_skim(self) -> None:
        spec = getattr(self.config, SKIM_KEY, None)
        if not isinstance(spec, dict) or int(spec.get("format", 0)) != FORMAT:
            raise ValueError(f"config.{SKIM_KEY}={spec!r}: expected a dict with format {FORMAT}")
        self._skim_adapter = get_adapter(self)
        n_layers = len(self._skim_adapter.layers(self))
        if n_layers < 2:
            raise ValueError(f"token skimming needs at least 2 layers, the model has {n_layers}")
        hidden = self._skim_adapter.dims(self.config).hidden
        width = int(spec["predictor_hidden"])
        self.skim_predictors = nn.ModuleList(SkimPredictor(hidden, width) for _ in range(n_layers - 1))

    @property
    def skim_shift(self) -> float:
        """Threshold on the keep-minus-skim logit (higher: fewer tokens kept). Saved with the model."""
        return float(getattr(self.config, SKIM_KEY).get("shift", 0.0))

    @skim_shift.setter
    def skim_shift(self, value: float) -> None:
        value = float(value)
        if value != value:
            raise ValueError("skim_shift must be a number or +-inf, got nan")
        getattr(self.config, SKIM_KEY)["shift"] = value

    # --- inference: real removal --------------------------------------------------------------
    def skim_forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        *,
        return_token_states: bool = False,
    ) -> SkimOutput:
        """Deterministic skimming inference with skimmed tokens physically removed (see the module doc)."""
        hidden, attention_mask = self.skim_first_layer(input_ids, attention_mask, token_type_ids)
        return self.skim_rest(hidden, attention_mask, return_token_states=return_token_states)

    def skim_first_layer(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings and the first layer, which sees every token: ``(B, T, D)`` states and the ``(B, T)`` mask."""
        adapter = self._skim_adapter
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = adapter.embed(self, input_ids, token_type_ids)  # (B, T, D)
        mask = adapter.layer_mask(self, hidden, attention_mask)
        return adapter.run_layer(adapter.layers(self)[0], hidden, mask), attention_mask

    def skim_rest(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        shift: float | None = None,
        return_token_states: bool = False,
    ) -> SkimOutput:
        """Layers 1.. with skimming, from the first layer's output (``shift``: default the model's)."""
        adapter, layers = self._skim_adapter, self._skim_adapter.layers(self)
        b, t, _ = hidden.shape
        valid = attention_mask.bool()  # (B, T') real tokens of the current packed batch
        tokens = [valid.sum(1)]  # per layer: (B,) tokens it ran on
        pos = states = None
        if return_token_states:
            pos = torch.arange(t, device=hidden.device).expand(b, t)  # (B, T') original position of each slot
            states = hidden.clone()  # (B, T, D)
        shift = self.skim_shift if shift is None else float(shift)
        if b == 1:  # no padding to keep after the first cut: index the kept tokens, no mask at all
            padded = not bool(valid.all())
            no_mask = adapter.layer_mask(self, hidden, None)
        for i in range(1, len(layers)):
            keep = keep_score(self.skim_predictors[i - 1](hidden)) > shift  # (B, T')
            keep[:, 0] = True  # [CLS]: packing keeps the order, so it is always slot 0
            if b == 1:
                if padded:
                    keep &= valid
                    padded = False
                idx = keep[0].nonzero().squeeze(1)  # (T_new,)
                if idx.numel() < hidden.shape[1]:
                    hidden = hidden[:, idx]  # (1, T_new, D)
                    pos = None if pos is None else pos[:, idx]
                tokens.append(idx.new_full((1,), idx.numel()))
                valid, mask = None, no_mask
            else:
                keep &= valid
                n = keep.sum(1)  # (B,)
                tokens.append(n)
                t_new = int(n.max())
                if t_new < hidden.shape[1]:
                    # kept slots first, in order (stable sort), then cut to the longest sample
                    idx = torch.sort(keep.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :t_new]
                    hidden = hidden.gather(1, idx.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))  # (B, T_new, D)
                    pos = None if pos is None else pos.gather(1, idx)
                    valid = torch.arange(t_new, device=n.device) < n.unsqueeze(1)  # (B, T_new)
                else:  # the longest sample kept everything: same length, the others' skimmed slots masked
                    valid = keep
                mask = adapter.layer_mask(self, hidden, valid.long())
            hidden = adapter.run_layer(layers[i], hidden, mask)
            if states is not None:
                if valid is None:
                    states[:, pos[0]] = hidden
                else:
                    rows, slots = valid.nonzero(as_tuple=True)
                    states[rows, pos[rows, slots]] = hidden[rows, slots]
        logits = adapter.classify(self, hidden)  # reads [CLS] (slot 0) only
        return SkimOutput(logits, torch.stack(tokens, 1), states)

    # --- training: the same removal as an attention mask ----------------------------------------
    def skim_forward_masked(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        *,
        noise: bool = True,
        tau: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Skimming as masks over the full sequence, differentiable (straight-through).

        Args:
            noise: sample hard Gumbel-softmax decisions (training); ``False``: the deterministic
                threshold of inference, for checking that both agree.
            tau: Gumbel-softmax temperature (only shapes the gradients).

        Returns:
            ``(logits (B, C), kept (B, L - 1))``: ``kept[:, i]`` is the fraction of each sample's
            real tokens that layer ``i + 1`` runs on (differentiable: the skim loss).
        """
        adapter, layers = self._skim_adapter, self._skim_adapter.layers(self)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = adapter.embed(self, input_ids, token_type_ids)  # (B, T, D)
        real = attention_mask.to(hidden.dtype)  # (B, T)
        low = torch.finfo(hidden.dtype).min

        def key_mask(alive: torch.Tensor) -> torch.Tensor:  # (B, T) 0/1 -> additive (B, 1, 1, T)
            hard = alive.detach()
            # forward: 0 for kept keys, `low` for removed ones; backward: d mask / d alive = 1, the
            # gradient of the keep decision through the keys' attention scores (finite, unlike -inf)
            return ((1.0 - hard) * low + (alive - hard))[:, None, None, :]

        hidden = adapter.run_layer(layers[0], hidden, key_mask(real))
        alive, kept = real, []
        first = torch.ones_like(real[:, :1])  # (B, 1): [CLS] is always kept
        n_real = real.sum(1)  # (B,)
        for i in range(1, len(layers)):
            logits2 = self.skim_predictors[i - 1](hidden)  # (B, T, 2)
            if noise:
                sample = nn.functional.gumbel_softmax(logits2, tau=tau, hard=True)[..., 1]  # (B, T), straight-through
            else:
                sample = (keep_score(logits2) > self.skim_shift).to(hidden.dtype)
            alive = alive * torch.cat([first, sample[:, 1:]], 1)  # once skimmed, skimmed for good
            new = adapter.run_layer(layers[i], hidden, key_mask(alive))
            a = alive.unsqueeze(-1)  # (B, T, 1)
            hidden = a * new + (1.0 - a) * hidden  # skimmed tokens keep their state
            kept.append(alive.sum(1) / n_real)
        return adapter.classify(self, hidden), torch.stack(kept, 1)

    # --- the transformers entry point ------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_token_states: bool = False,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> SkimClassifierOutput:
        """Classify: skimming inference in eval mode, Gumbel-masked skimming in train mode.

        ``return_token_states`` (or ``output_hidden_states``) puts the final state of every
        position in ``hidden_states[0]`` (eval mode only). ``loss`` is cross-entropy when
        ``labels`` are given.
        """
        if input_ids is None:
            raise ValueError("input_ids is required")
        if self.training:
            logits, kept = self.skim_forward_masked(input_ids, attention_mask, token_type_ids, tau=self.skim_tau)
            out = SkimClassifierOutput(logits=logits, skim_kept=kept)
        else:
            res = self.skim_forward(
                input_ids,
                attention_mask,
                token_type_ids,
                return_token_states=bool(return_token_states or output_hidden_states),
            )
            states = None if res.states is None else (res.states,)
            out = SkimClassifierOutput(logits=res.logits, hidden_states=states, skim_tokens=res.tokens)
        if labels is not None:
            if self.config.num_labels == 1:
                out.loss = nn.functional.mse_loss(out.logits.squeeze(-1), labels.to(out.logits.dtype))
            else:
                out.loss = nn.functional.cross_entropy(out.logits, labels)
        return out


def _skim_class(base: type) -> type:
    def __init__(self, config, *args, **kwargs):
        base.__init__(self, config, *args, **kwargs)
        self._init_skim()

    name = base.__name__.replace("Slim", "Skim", 1)
    return type(name, (SkimMixin, base), {"__init__": __init__, "__module__": __name__, "__doc__": SkimMixin.__doc__})


#: family -> skimming classifier class (built on the classes that also hold pruned shapes).
SKIM_CLASSES: dict[str, type] = {family: _skim_class(cls) for family, cls in SLIM_CLASSES.items()}


def is_skim_model(model) -> bool:
    return isinstance(model, SkimMixin)


def build_skim_model(model, *, predictor_hidden: int = 64, init_keep_logit: float = 2.0, shift: float = 0.0):
    """A skimming copy of a sequence classifier: its weights (not shared) plus fresh predictors.

    Raises:
        ValueError: unsupported architecture, a family that cannot skim (ModernBERT), an already
            skimming model, fewer than 2 layers.
    """
    if is_skim_model(model):
        raise ValueError("the model already skims; pass the dense classifier it was built from")
    adapter = get_adapter(model)
    adapter.require("skim")
    config = copy.deepcopy(model.config)
    cls = SKIM_CLASSES[adapter.family]
    setattr(config, SKIM_KEY, {"format": FORMAT, "predictor_hidden": int(predictor_hidden), "shift": float(shift)})
    config.architectures = [cls.__name__]
    skimmer = cls(config)
    missing, unexpected = skimmer.load_state_dict(model.state_dict(), strict=False)
    stray = [k for k in missing if not k.startswith("skim_predictors.")]
    if stray or unexpected:
        raise ValueError(f"cannot copy the weights into a skimming model: missing {stray}, unexpected {unexpected}")
    for predictor in skimmer.skim_predictors:
        predictor.reset(init_keep_logit)
    param = next(model.parameters())
    return skimmer.to(param.device).eval()
