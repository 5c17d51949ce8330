"""BERT sequence classifiers (MiniLM is BERT)."""

from __future__ import annotations

import torch

from slimformer.arch.base import ArchAdapter, ModelDims, bert_style_tiny


class BertAdapter(ArchAdapter):
    family = "bert"
    model_types = ("bert",)
    head_paths = ("bert.pooler", "classifier")  # the pooler is trained with the classifier
    exit_head_paths = ("bert.pooler.dense", "classifier")

    def dims(self, config) -> ModelDims:
        return ModelDims(
            family=self.family,
            hidden=config.hidden_size,
            num_heads=config.num_attention_heads,
            head_size=config.hidden_size // config.num_attention_heads,
            ffn=config.intermediate_size,
            num_layers=config.num_hidden_layers,
            vocab_size=config.vocab_size,
            max_positions=config.max_position_embeddings,
            type_vocab_size=config.type_vocab_size,
            num_labels=config.num_labels,
        )

    def tiny_config(self, *, layers: int = 3, num_labels: int = 3):
        from transformers import BertConfig

        return BertConfig(**bert_style_tiny(layers=layers, num_labels=num_labels))

    def base_model(self, model):
        return model.bert

    def embed(self, model, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None):
        return self.base_model(model).embeddings(input_ids=input_ids, token_type_ids=token_type_ids)

    def classify(self, model, hidden: torch.Tensor) -> torch.Tensor:
        pooled = self.base_model(model).pooler(hidden)  # (B, hidden), tanh(W h_cls)
        return model.classifier(model.dropout(pooled))
