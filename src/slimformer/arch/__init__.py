"""Architecture adapters: the registry that maps a ``config.model_type`` to its adapter."""

from __future__ import annotations

from slimformer.arch.base import ArchAdapter, AttentionView, FFNView, ModelDims
from slimformer.arch.bert import BertAdapter
from slimformer.arch.deberta import DebertaV2Adapter
from slimformer.arch.distilbert import DistilBertAdapter
from slimformer.arch.electra import ElectraAdapter
from slimformer.arch.modernbert import ModernBertAdapter
from slimformer.arch.roberta import CamembertAdapter, RobertaAdapter, XLMRobertaAdapter
from slimformer.arch.vit import DeiTAdapter, ViTAdapter

#: family -> adapter, one per family. Tests build a tiny model of each (``tiny_config``), so
#: registering a family is what puts it under the shared test suite.
FAMILIES: dict[str, ArchAdapter] = {}
#: model_type -> adapter.
ADAPTERS: dict[str, ArchAdapter] = {}
for _adapter in (
    BertAdapter(),
    RobertaAdapter(),
    DistilBertAdapter(),
    XLMRobertaAdapter(),
    CamembertAdapter(),
    ElectraAdapter(),
    ModernBertAdapter(),
    DebertaV2Adapter(),
    ViTAdapter(),
    DeiTAdapter(),
):
    FAMILIES[_adapter.family] = _adapter
    for _model_type in _adapter.model_types:
        ADAPTERS[_model_type] = _adapter
#: model_type -> why it is not supported, where that is worth more than the generic message.
REFUSED_TYPES = {
    "deberta": "DeBERTa (v1) fuses q, k and v into one in_proj with separate q / v biases, which the "
    "adapters do not slice; DeBERTa-v2 and v3 (model_type 'deberta-v2') are supported",
}


def get_adapter_for_config(config) -> ArchAdapter:
    """The adapter for a config, or ``ValueError`` naming its ``model_type`` and the supported ones."""
    model_type = getattr(config, "model_type", None)
    if model_type in REFUSED_TYPES:
        raise ValueError(f"unsupported architecture: model_type {model_type!r}: {REFUSED_TYPES[model_type]}")
    if model_type not in ADAPTERS:
        raise ValueError(
            f"unsupported architecture: model_type {model_type!r}; supported: {', '.join(sorted(ADAPTERS))}"
        )
    return ADAPTERS[model_type]


def get_adapter(model) -> ArchAdapter:
    """The adapter for a model instance (a sequence or image classifier of a supported family)."""
    adapter = get_adapter_for_config(model.config)
    if not hasattr(model, "classifier"):
        kind = "an image" if adapter.modality == "image" else "a sequence"
        raise ValueError(f"{type(model).__name__} is not {kind} classifier; load it with {adapter.auto_class}")
    return adapter


def require(model, method: str) -> None:
    """``ValueError`` saying why, when ``model``'s family refuses ``method`` (see ``ArchAdapter.refused``).

    A model of no registered family (a wrapper) passes: the method checks what it needs itself.
    """
    adapter = ADAPTERS.get(getattr(getattr(model, "config", None), "model_type", None))
    if adapter is not None:
        adapter.require(method)


__all__ = [
    "ADAPTERS",
    "FAMILIES",
    "ArchAdapter",
    "AttentionView",
    "FFNView",
    "ModelDims",
    "get_adapter",
    "get_adapter_for_config",
    "require",
]
