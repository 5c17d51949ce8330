"""A model's shape as data: per-layer kept heads and FFN width, and which original layer each is.

The cost model, surgery, save/load and reports all read the same :class:`Structure`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from slimformer.arch import ModelDims, get_adapter
from slimformer.tasks import is_token_classifier


@dataclass(frozen=True)
class LayerShape:
    """One present layer: ``heads`` attention heads and ``ffn`` FFN neurons (0 = sublayer removed)."""

    heads: int
    ffn: int
    origin: int  # index of this layer in the original (unpruned) model


@dataclass(frozen=True)
class Structure:
    """Per-layer shapes of a (possibly pruned) encoder, with its unchanging dimensions."""

    dims: ModelDims
    layers: tuple[LayerShape, ...]

    @classmethod
    def from_model(cls, model) -> Structure:
        """Read the structure off a model's actual modules (not its config)."""
        adapter = get_adapter(model)
        dims = adapter.dims(model.config)
        if is_token_classifier(model):
            dims = replace(dims, token_head=True)
        spec = getattr(model.config, "slimformer", None) or {}
        origins = spec.get("origin") or []
        layers = []
        for i, layer in enumerate(adapter.layers(model)):
            origin = origins[i] if i < len(origins) else i
            layers.append(LayerShape(adapter.attention(layer).num_heads, adapter.ffn(layer).width, origin))
        return cls(dims, tuple(layers))

    @classmethod
    def dense(cls, dims: ModelDims) -> Structure:
        """The unpruned structure of an architecture."""
        return cls(dims, tuple(LayerShape(dims.num_heads, dims.ffn, i) for i in range(dims.num_layers)))

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def total_heads(self) -> int:
        return sum(s.heads for s in self.layers)

    @property
    def total_ffn(self) -> int:
        return sum(s.ffn for s in self.layers)

    def is_dense(self) -> bool:
        return self == Structure.dense(self.dims)

    def to_config_spec(self) -> dict:
        """What the saved config records (read back by ``hf_remote/modeling_slimformer.py``)."""
        return {
            "format": 1,
            "layers": [{"heads": s.heads, "ffn": s.ffn} for s in self.layers],
            "origin": [s.origin for s in self.layers],
            "original_layers": self.dims.num_layers,
        }

    def to_dict(self) -> dict:
        return {
            "family": self.dims.family,
            "hidden": self.dims.hidden,
            "head_size": self.dims.head_size,
            "layers": [{"heads": s.heads, "ffn": s.ffn, "origin": s.origin} for s in self.layers],
        }
