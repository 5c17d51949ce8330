"""Adapters: one view of every family, and our own layer loop equals the model's forward."""

import pytest
import torch
from transformers import GPT2Config

from conftest import FAMILIES, IMAGE_FAMILIES, make_inputs, make_tiny_model
from slimformer.arch import ADAPTERS, get_adapter, get_adapter_for_config
from slimformer.arch import FAMILIES as ADAPTER_FAMILIES


def test_registry_maps_each_model_type_to_one_tested_family():
    by_type = {t: a for a in ADAPTER_FAMILIES.values() for t in a.model_types}
    assert by_type == ADAPTERS and set(FAMILIES) | set(IMAGE_FAMILIES) == {a.family for a in ADAPTERS.values()}


def test_adapter_loop_equals_model_forward(tiny_model, tiny_inputs):
    adapter = get_adapter(tiny_model)
    with torch.no_grad():
        expected = tiny_model(**tiny_inputs).logits
        got = adapter.forward(tiny_model, **tiny_inputs)
    torch.testing.assert_close(got, expected)


def test_adapter_view_shapes(tiny_model):
    adapter = get_adapter(tiny_model)
    dims = adapter.dims(tiny_model.config)
    assert (dims.hidden, dims.num_heads, dims.head_size, dims.ffn, dims.num_layers) == (32, 4, 8, 37, 3)
    assert len(adapter.layers(tiny_model)) == 3
    for layer in adapter.layers(tiny_model):
        att, ffn = adapter.attention(layer), adapter.ffn(layer)
        assert att.num_heads == 4 and att.q.out_features == 32 and att.o.in_features == 32
        assert ffn.width == 37 and ffn.fc_out.in_features == 37


def test_padding_changes_nothing_for_the_unpadded_row(family):
    model = make_tiny_model(family)
    inputs = make_inputs(pad_last=3)
    with torch.no_grad():
        a = get_adapter(model).forward(model, **inputs)
        b = model(**inputs).logits
    torch.testing.assert_close(a, b)


def test_unsupported_architecture_names_model_type_and_supported():
    with pytest.raises(ValueError, match=r"model_type 'gpt2'.*bert.*distilbert.*roberta"):
        get_adapter_for_config(GPT2Config())


def test_tiny_tokenizer_knows_its_words(tiny_tokenizer):
    ids = tiny_tokenizer("good movie")["input_ids"]
    assert tiny_tokenizer.unk_token_id not in ids and max(ids) < 99
