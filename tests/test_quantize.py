"""int8 dynamic quantization and bf16: outputs stay close, modules really change, save -> load is exact."""

import json

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from conftest import make_inputs, make_tiny_model
from slimformer.arch import get_adapter
from slimformer.axformer import hard_attention_of, set_hard_attention
from slimformer.export import save_model
from slimformer.quantize import (
    Bf16Config,
    Int8Config,
    is_bf16,
    is_quantized,
    is_quantized_folder,
    load_quantized,
    quantize_dynamic_int8,
    save_quantized,
    size_on_disk,
    to_bf16,
)
from slimformer.structure import Structure
from slimformer.surgery import KeepPlan, apply_plan


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def kinds(model) -> set[type]:
    return {type(m) for m in model.modules()}


QLINEAR, QEMBEDDING = torch.ao.nn.quantized.dynamic.Linear, torch.ao.nn.quantized.Embedding


def test_quantized_outputs_stay_close_and_modules_change(tiny_model, tiny_inputs):
    expected = logits(tiny_model, tiny_inputs)
    q = quantize_dynamic_int8(tiny_model)
    got = logits(q, tiny_inputs)
    assert not is_quantized(tiny_model) and is_quantized(q)  # the input model is untouched
    assert not {QLINEAR, QEMBEDDING} & kinds(tiny_model)
    assert {QLINEAR, QEMBEDDING} <= kinds(q)
    assert not any(type(m) is nn.Linear for m in q.modules())
    assert not torch.equal(got, expected)  # it really is a different (int8) computation
    torch.testing.assert_close(got, expected, rtol=0.05, atol=0.02 * float(expected.abs().max()) + 1e-3)
    assert q.config.slimformer_quantization == {"method": "dynamic_int8", "per_channel": True, "embeddings": True}
    assert Structure.from_model(q) == Structure.from_model(tiny_model)


def test_without_embeddings_the_word_embeddings_stay_fp32(tiny_model):
    q = quantize_dynamic_int8(tiny_model, Int8Config(embeddings=False, per_channel=False))
    assert type(q.get_input_embeddings()) is nn.Embedding and QLINEAR in kinds(q)


def with_topk(model) -> dict:
    """Layer 0 switched to top-2 attention, where the family has hard attention (DeBERTa has not)."""
    if "hard_attention" in get_adapter(model).refused:
        return {}
    set_hard_attention(model, {0: 2})
    return {0: 2}


def test_pruned_model_with_top_k_quantizes_saves_and_loads_exactly(tiny_model, tiny_tokenizer, tmp_path):
    apply_plan(tiny_model, KeepPlan.removing(tiny_model, heads={0: [1]}, attention=[1], ffn=[2], layers=[]))
    topk = with_topk(tiny_model)
    inputs = make_inputs()
    q = quantize_dynamic_int8(tiny_model)
    zero = [m for m in q.modules() if type(m) is nn.Linear]  # removed sublayers' zero-size projections
    assert zero and all(m.weight.numel() == 0 for m in zero)
    folder = save_quantized(q, tiny_tokenizer, tmp_path / "q", extra={"method": "test"})
    assert is_quantized_folder(folder) and json.loads((folder / "slimformer.json").read_text()) == {"method": "test"}
    loaded = load_quantized(folder)
    assert is_quantized(loaded) and hard_attention_of(loaded) == topk
    torch.testing.assert_close(logits(loaded, inputs), logits(q, inputs), rtol=0, atol=0)


def test_dense_model_round_trips_too(tiny_tokenizer, tmp_path):
    model = make_tiny_model("distilbert")
    q = quantize_dynamic_int8(model)
    loaded = load_quantized(save_quantized(q, tiny_tokenizer, tmp_path / "q"))
    inputs = make_inputs()
    torch.testing.assert_close(logits(loaded, inputs), logits(q, inputs), rtol=0, atol=0)


def test_int8_folder_is_much_smaller(tiny_tokenizer, tmp_path):
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=2000,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=64,
    )
    model = BertForSequenceClassification(cfg).eval()
    fp32 = size_on_disk(save_model(model, None, tmp_path / "fp32"))
    int8 = size_on_disk(save_quantized(quantize_dynamic_int8(model), None, tmp_path / "int8"))
    assert int8 < fp32 / 2.5  # ~3x here; per-tensor overheads weigh less in real-sized models (MiniLM ~4x)


def test_bad_input(tiny_model, tiny_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="save_model"):
        save_quantized(tiny_model, tiny_tokenizer, tmp_path / "a")
    with pytest.raises(ValueError, match="already quantized"):
        quantize_dynamic_int8(quantize_dynamic_int8(tiny_model))
    with pytest.raises(FileNotFoundError, match="model_int8.pt"):
        load_quantized(save_model(tiny_model, tiny_tokenizer, tmp_path / "fp32"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        size_on_disk(tmp_path / "missing")
    with pytest.raises(ValueError, match="per_channel"):
        Int8Config(per_channel="yes")
    with pytest.raises(ValueError, match="unknown field"):
        Int8Config.from_dict({"bits": 4})


def test_size_on_disk_counts_files(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 10)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"y" * 5)
    assert size_on_disk(tmp_path / "a") == 10 and size_on_disk(tmp_path) == 15


# ---- bf16 --------------------------------------------------------------------------------------------------


def test_bf16_copy_stays_close_and_really_is_bf16(tiny_model, tiny_inputs):
    expected = logits(tiny_model, tiny_inputs)
    half = to_bf16(tiny_model)
    got = logits(half, tiny_inputs)
    assert is_bf16(half) and not is_bf16(tiny_model)  # the input model is untouched
    assert got.dtype is torch.bfloat16 and not torch.equal(got.float(), expected)
    torch.testing.assert_close(got.float(), expected, rtol=0.05, atol=0.02 * float(expected.abs().max()) + 1e-3)
    assert Structure.from_model(half) == Structure.from_model(tiny_model)


def test_pruned_bf16_model_with_top_k_saves_half_size_and_loads_exactly(tiny_model, tiny_tokenizer, tmp_path):
    from slimformer.models import load_model

    apply_plan(tiny_model, KeepPlan.removing(tiny_model, heads={0: [1]}, attention=[1], ffn=[2], layers=[]))
    topk = with_topk(tiny_model)
    half = to_bf16(tiny_model)
    fp32_folder = save_model(tiny_model, None, tmp_path / "fp32")
    folder = save_model(half, tiny_tokenizer, tmp_path / "bf16")
    weights = "model.safetensors"
    assert (folder / weights).stat().st_size < 0.55 * (fp32_folder / weights).stat().st_size
    loaded, _ = load_model(str(folder))
    assert is_bf16(loaded) and hard_attention_of(loaded) == topk
    assert Structure.from_model(loaded) == Structure.from_model(half)
    inputs = make_inputs()
    torch.testing.assert_close(logits(loaded, inputs), logits(half, inputs), rtol=0, atol=0)


def test_bf16_and_int8_do_not_stack(tiny_model):
    with pytest.raises(ValueError, match="int8 quantization starts from the fp32 model"):
        quantize_dynamic_int8(to_bf16(tiny_model))
    with pytest.raises(ValueError, match="bf16 applies to an fp32 model"):
        to_bf16(quantize_dynamic_int8(tiny_model))
    with pytest.raises(ValueError, match="Bf16Config takes no fields"):
        Bf16Config.from_dict({"keep": "classifier"})


def test_bf16_warns_where_the_cpu_has_no_native_bf16(tiny_model, monkeypatch, caplog):
    import slimformer.quantize as quantize

    monkeypatch.setattr(quantize, "bf16_supported", lambda: False)
    with caplog.at_level("WARNING", logger="slimformer.quantize"):
        to_bf16(tiny_model)
    assert "slower than fp32" in caplog.text
    caplog.clear()
    monkeypatch.setattr(quantize, "bf16_supported", lambda: True)
    with caplog.at_level("WARNING", logger="slimformer.quantize"):
        to_bf16(tiny_model)
    assert caplog.text == ""
