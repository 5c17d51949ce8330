"""RoBERTa-shaped sequence classifiers: BERT's layers, their own embeddings and classification head.

XLM-RoBERTa and CamemBERT are RoBERTa with their own classes (and vocabularies) in transformers.
"""

from __future__ import annotations

import torch

from slimformer.arch.base import bert_style_tiny
from slimformer.arch.bert import BertAdapter
from slimformer.tasks import is_token_classifier


class RobertaAdapter(BertAdapter):
    family = "roberta"
    model_types = ("roberta",)
    head_paths = ("classifier",)
    exit_head_paths = ("classifier.dense", "classifier.out_proj")

    def _config_class(self):
        from transformers import RobertaConfig

        return RobertaConfig

    def tiny_config(self, *, layers: int = 3, num_labels: int = 3):
        # positions count from padding_idx + 1, so 70 rows leave 68 usable ones
        fields = {**bert_style_tiny(layers=layers, num_labels=num_labels), "max_position_embeddings": 70}
        return self._config_class()(**fields, pad_token_id=1)

    def position_offset(self, config) -> int:
        pad = getattr(config, "pad_token_id", None)
        return (1 if pad is None else pad) + 1

    def base_model(self, model):
        return model.roberta

    def embed(self, model, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None):
        # position ids are derived from input_ids (padding_idx offset) inside the embeddings
        return self.base_model(model).embeddings(input_ids=input_ids, token_type_ids=token_type_ids)

    def classify(self, model, hidden: torch.Tensor) -> torch.Tensor:
        if is_token_classifier(model):
            return self.classify_tokens(model, hidden)  # (B, T, num_labels)
        return model.classifier(hidden)  # RobertaClassificationHead reads the <s> token itself


class XLMRobertaAdapter(RobertaAdapter):
    family = "xlm-roberta"
    model_types = ("xlm-roberta",)

    def _config_class(self):
        from transformers import XLMRobertaConfig

        return XLMRobertaConfig


class CamembertAdapter(RobertaAdapter):
    family = "camembert"
    model_types = ("camembert",)

    def _config_class(self):
        from transformers import CamembertConfig

        return CamembertConfig
