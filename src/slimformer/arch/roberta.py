"""RoBERTa sequence classifiers: BERT's layers, its own embeddings and classification head."""

from __future__ import annotations

import torch

from slimformer.arch.bert import BertAdapter


class RobertaAdapter(BertAdapter):
    family = "roberta"
    model_types = ("roberta",)

    def base_model(self, model):
        return model.roberta

    def embed(self, model, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None):
        # position ids are derived from input_ids (padding_idx offset) inside the embeddings
        return self.base_model(model).embeddings(input_ids=input_ids, token_type_ids=token_type_ids)

    def classify(self, model, hidden: torch.Tensor) -> torch.Tensor:
        return model.classifier(hidden)  # RobertaClassificationHead reads the <s> token itself
