"""DistilBERT sequence classifiers."""

from __future__ import annotations

import torch
from torch import nn

from slimformer.arch.base import ArchAdapter, ModelDims
from slimformer.tasks import is_token_classifier


class DistilBertAdapter(ArchAdapter):
    family = "distilbert"
    model_types = ("distilbert",)
    head_paths = ("pre_classifier", "classifier")
    # exit heads start random: the pre-classifier is dense + ReLU, not the exits' dense + tanh

    def dims(self, config) -> ModelDims:
        return ModelDims(
            family=self.family,
            hidden=config.dim,
            num_heads=config.n_heads,
            head_size=config.dim // config.n_heads,
            ffn=config.hidden_dim,
            num_layers=config.n_layers,
            vocab_size=config.vocab_size,
            max_positions=config.max_position_embeddings,
            type_vocab_size=0,
            num_labels=config.num_labels,
        )

    def tiny_config(self, *, layers: int = 3, num_labels: int = 3):
        from transformers import DistilBertConfig

        return DistilBertConfig(
            vocab_size=99,
            dim=32,
            n_layers=layers,
            n_heads=4,
            hidden_dim=37,
            max_position_embeddings=64,
            num_labels=num_labels,
        )

    def base_model(self, model):
        return model.distilbert

    def embed(self, model, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None):
        return self.base_model(model).embeddings(input_ids)

    def classify(self, model, hidden: torch.Tensor) -> torch.Tensor:
        if is_token_classifier(model):
            return self.classify_tokens(model, hidden)  # (B, T, num_labels)
        pooled = nn.functional.relu(model.pre_classifier(hidden[:, 0]))  # (B, hidden)
        return model.classifier(model.dropout(pooled))
