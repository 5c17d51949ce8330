"""ELECTRA sequence classifiers (the discriminator fine-tuned): BERT's layers, a RoBERTa-like head.

Where ``embedding_size`` differs from ``hidden_size`` (ELECTRA-small), the embeddings are
narrower and a Linear ``embeddings_project`` lifts them to the hidden size before the first layer.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from slimformer.arch.base import ModelDims, bert_style_tiny
from slimformer.arch.bert import BertAdapter
from slimformer.tasks import is_token_classifier


class ElectraAdapter(BertAdapter):
    family = "electra"
    model_types = ("electra",)
    head_paths = ("classifier",)
    exit_head_paths = ("classifier.dense", "classifier.out_proj")

    def dims(self, config) -> ModelDims:
        dims = super().dims(config)
        if config.embedding_size != config.hidden_size:
            return replace(dims, embedding_size=config.embedding_size)
        return dims

    def tiny_config(self, *, layers: int = 3, num_labels: int = 3):
        from transformers import ElectraConfig

        return ElectraConfig(**bert_style_tiny(layers=layers, num_labels=num_labels), embedding_size=32)

    def base_model(self, model):
        return model.electra

    def embed(self, model, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None):
        base = self.base_model(model)
        hidden = base.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)  # (B, T, embedding_size)
        if hasattr(base, "embeddings_project"):
            hidden = base.embeddings_project(hidden)  # (B, T, hidden)
        return hidden

    def classify(self, model, hidden: torch.Tensor) -> torch.Tensor:
        if is_token_classifier(model):
            return self.classify_tokens(model, hidden)  # (B, T, num_labels)
        return model.classifier(hidden)  # ElectraClassificationHead reads the [CLS] token itself
