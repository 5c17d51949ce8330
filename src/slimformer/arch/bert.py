"""BERT sequence classifiers (MiniLM is BERT)."""

from __future__ import annotations

import torch

from slimformer.arch.base import ArchAdapter, ModelDims, bert_named_dims, bert_style_tiny
from slimformer.tasks import is_token_classifier


class BertAdapter(ArchAdapter):
    family = "bert"
    model_types = ("bert",)
    head_paths = ("bert.pooler", "classifier")  # the pooler is trained with the classifier
    exit_head_paths = ("bert.pooler.dense", "classifier")

    def dims(self, config) -> ModelDims:
        return bert_named_dims(self.family, config)

    def tiny_config(self, *, layers: int = 3, num_labels: int = 3):
        from transformers import BertConfig

        return BertConfig(**bert_style_tiny(layers=layers, num_labels=num_labels))

    def base_model(self, model):
        return model.bert

    def embed(self, model, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None):
        return self.base_model(model).embeddings(input_ids=input_ids, token_type_ids=token_type_ids)

    def classify(self, model, hidden: torch.Tensor) -> torch.Tensor:
        if is_token_classifier(model):
            return self.classify_tokens(model, hidden)  # (B, T, num_labels)
        pooled = self.base_model(model).pooler(hidden)  # (B, hidden), tanh(W h_cls)
        return model.classifier(model.dropout(pooled))
