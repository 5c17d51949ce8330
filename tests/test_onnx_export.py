"""ONNX export: the file matches PyTorch (dense and pruned, every family), the checks can fail, bad input is refused."""

import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from conftest import make_inputs, make_tiny_model
from slimformer.bench import BenchConfig
from slimformer.commands.export import export_command
from slimformer.data import Example
from slimformer.evaluate import evaluate
from slimformer.export import save_model
from slimformer.hf_remote import modeling_slimformer as remote
from slimformer.onnx_export import (
    INT8_FILE,
    ONNX_FILE,
    REPORT_FILE,
    ExportConfig,
    OnnxModel,
    OnnxVerificationError,
    check_exportable,
    compare_latency,
    compare_logits,
    export_onnx,
    load_onnx,
    verification_batches,
)
from slimformer.structure import Structure
from slimformer.surgery import KeepPlan, apply_plan, masked

# Tiny random models have near-equal logits, so int8 may flip argmaxes: its bound is not tested here.
LOOSE_INT8 = ExportConfig(int8=True, int8_min_agreement=0.0)
TINY_BENCH = BenchConfig(batch_sizes=(1, 2), seq_len=16, repeats=2, warmup=1, threads=1)


def prune(model):
    """Uneven heads (layer 0), a layer with no FFN (1) and a layer with no attention (2)."""
    plan = KeepPlan.removing(model, heads={0: [1, 2]}, neurons={0: range(5)}, ffn=[1], attention=[2])
    return apply_plan(model, plan)


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def with_segments(model, inputs):
    """The tiny inputs plus zero token_type_ids when the family takes them (ONNX then gets them too)."""
    if getattr(model.config, "type_vocab_size", 0):
        return {**inputs, "token_type_ids": torch.zeros_like(inputs["input_ids"])}
    return inputs


@pytest.mark.parametrize("pruned", [False, True], ids=["dense", "pruned"])
def test_onnx_matches_pytorch(family, pruned, tiny_tokenizer, tmp_path):
    model = make_tiny_model(family)
    with torch.no_grad():  # random init gives logits ~0.01; scale the output layer so differences show
        [m for m in model.classifier.modules() if isinstance(m, torch.nn.Linear)][-1].weight.mul_(100)
    dense_logits = logits(model, make_inputs())
    if pruned:
        prune(model)
        shapes = [(s.heads, s.ffn) for s in Structure.from_model(model).layers]
        assert shapes == [(2, 32), (4, 0), (0, 37)]
        # the check that can fail: pruning changed the model by 10x the tolerance the export is held to
        assert (logits(model, make_inputs()) - dense_logits).abs().max() > 1e-3
    report = export_onnx(model, tiny_tokenizer, tmp_path / "out", LOOSE_INT8, bench=None, progress=False)

    fp32 = report["verification"]["fp32"]
    assert report["passed"] and fp32["passed"] and fp32["max_abs_diff"] <= 1e-4
    assert fp32["texts"] == 12 and fp32["batches"] == 5  # the default texts: 3 alone, then batches of 8 and 4
    assert len({shape[1] for shape in fp32["shapes"]}) > 1  # lengths differ across batches
    assert any((b["attention_mask"] == 0).any() for b in verification_batches(model, tiny_tokenizer))  # padding
    # ModernBERT's head ends in a LayerNorm, so its scaled logits are ~100x larger: bound int8 relative to them
    assert report["verification"]["int8"]["max_abs_diff"] < max(1.0, 0.02 * float(dense_logits.abs().max()))
    assert model.training is False

    # dynamic axes: batch sizes and lengths (longer than anything traced) the export never saw, padded
    onnx_model = OnnxModel(tmp_path / "out" / ONNX_FILE, threads=1)
    for batch, seq, pad in [(1, 5, 0), (3, 40, 11), (5, 9, 4)]:
        inputs = with_segments(model, make_inputs(batch, seq, seed=batch, pad_last=pad))
        torch.testing.assert_close(onnx_model(**inputs), logits(model, inputs), rtol=1e-4, atol=1e-5)
    int8 = OnnxModel(tmp_path / "out" / INT8_FILE, threads=1)
    assert int8(**with_segments(model, make_inputs())).shape == (2, 3)


def test_export_leaves_a_deployable_folder(tiny_tokenizer, tmp_path):
    model = prune(make_tiny_model("bert", num_labels=2))
    folder = tmp_path / "out"
    export_onnx(model, tiny_tokenizer, folder, LOOSE_INT8, bench=None, progress=False)
    assert {ONNX_FILE, INT8_FILE, REPORT_FILE, "tokenizer_config.json"} <= {p.name for p in folder.iterdir()}
    saved = json.loads((folder / REPORT_FILE).read_text())
    assert saved["inputs"] == ["input_ids", "attention_mask", "token_type_ids"] and saved["passed"]
    assert saved["model"]["layers"][1] == {"heads": 4, "ffn": 0}

    onnx_model, tokenizer = load_onnx(folder)
    enc = tokenizer(["good fun movie", "a very boring plot and bad actor"], padding=True, return_tensors="pt")
    torch.testing.assert_close(onnx_model(**enc), logits(model, enc), rtol=1e-4, atol=1e-5)
    examples = [Example(text=t, label=i % 2) for i, t in enumerate(["good movie", "bad plot", "great fun", "dull"] * 3)]
    got = onnx_model.evaluate(tokenizer, examples, batch_size=5)
    assert got == evaluate(model, tokenizer, examples, batch_size=5, progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_onnx(tmp_path / "nope")


def test_verification_detects_a_model_that_does_not_match(tiny_tokenizer, tmp_path):
    model = make_tiny_model("roberta")
    export_onnx(model, tiny_tokenizer, tmp_path / "out", bench=None, progress=False)
    onnx_model = OnnxModel(tmp_path / "out" / ONNX_FILE, threads=1)
    batches = verification_batches(model, tiny_tokenizer)
    assert compare_logits(model, onnx_model, batches)["max_abs_diff"] <= 1e-4
    with torch.no_grad():
        model.classifier.out_proj.bias[1] += 1e-3  # PyTorch changes, the file does not
    assert compare_logits(model, onnx_model, batches)["max_abs_diff"] == pytest.approx(1e-3, rel=1e-3)


def test_export_raises_or_flags_when_the_file_disagrees(tiny_tokenizer, tmp_path, monkeypatch):
    import slimformer.onnx_export as ox

    real_export = ox.torch_to_onnx

    def export_a_different_model(model, path, sample, **kwargs):
        other = make_tiny_model("distilbert", seed=1)
        return real_export(other, path, sample, **kwargs)

    monkeypatch.setattr(ox, "torch_to_onnx", export_a_different_model)
    model = make_tiny_model("distilbert")
    with pytest.raises(OnnxVerificationError, match=r"max \|logit diff\|.*> atol"):
        export_onnx(model, tiny_tokenizer, tmp_path / "a", bench=None, progress=False)
    assert json.loads((tmp_path / "a" / REPORT_FILE).read_text())["passed"] is False  # kept to inspect
    report = export_onnx(model, tiny_tokenizer, tmp_path / "b", ExportConfig(check=False), bench=None, progress=False)
    assert report["passed"] is False and report["verification"]["fp32"]["passed"] is False
    assert "latency" not in report


def test_latency_is_measured_beside_pytorch(tiny_tokenizer, tmp_path):
    model = prune(make_tiny_model("distilbert"))
    report = export_onnx(model, tiny_tokenizer, tmp_path / "out", LOOSE_INT8, bench=TINY_BENCH, progress=False)
    lat = report["latency"]
    assert lat["reference"] == "pytorch_fp32" and lat["onnx_threads"] == 1
    assert [r["batch_size"] for r in lat["results"]] == [1, 2]
    for row in lat["results"]:
        for name in ("pytorch_fp32", "onnx_fp32", "onnx_int8", "onnx_opt_fp32", "onnx_opt_int8"):
            assert row[name]["median_ms"] > 0 and row[name]["repeats"] == 2
        assert set(row["speedup"]) == {"onnx_fp32", "onnx_int8", "onnx_opt_fp32", "onnx_opt_int8"}
    assert lat["environment"]["onnxruntime"] and report["seconds"]["latency"] > 0
    with pytest.raises(ValueError, match="reference 'nope'"):
        compare_latency({"a": model}, TINY_BENCH, inputs_model=model, reference="nope", progress=False)


def test_custom_texts_and_inputs(tiny_tokenizer, tmp_path):
    model = make_tiny_model("bert")
    texts = ["good movie", "bad", "the story was very funny and the actor was great", "dull plot"]
    report = export_onnx(model, tiny_tokenizer, tmp_path / "out", texts=texts, bench=None, progress=False)
    assert report["verification"]["texts"] == "given" and report["verification"]["fp32"]["texts"] == 4
    onnx_model = OnnxModel(tmp_path / "out" / ONNX_FILE, threads=1)
    inputs = make_inputs()  # no token_type_ids: filled with zeros, as PyTorch does
    torch.testing.assert_close(onnx_model(**inputs), logits(model, inputs), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="inputs lack"):
        onnx_model(attention_mask=inputs["attention_mask"])
    with pytest.raises(ValueError, match="no verification texts"):
        export_onnx(model, tiny_tokenizer, tmp_path / "x", texts=[], bench=None, progress=False)


def test_nothing_is_overwritten(tiny_tokenizer, tmp_path):
    model = make_tiny_model("bert")
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_onnx(model, tiny_tokenizer, folder, bench=None, progress=False)
    assert (folder / "keep.txt").read_text() == "precious"
    export_onnx(model, tiny_tokenizer, folder, bench=None, overwrite=True, progress=False)
    assert not (folder / "keep.txt").exists() and (folder / ONNX_FILE).exists()
    with pytest.raises(ValueError, match="looks like a file"):
        export_onnx(model, tiny_tokenizer, tmp_path / "model.onnx", bench=None, progress=False)


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch.ao quantization is deprecated
def test_dynamic_and_unsupported_models_are_refused(tmp_path):
    model = make_tiny_model("bert")
    check_exportable(model)
    check_exportable(prune(make_tiny_model("roberta")))
    heads = [torch.ones(4)] * 3
    with masked(model, head_masks=heads), pytest.raises(ValueError, match="forward hooks"):
        check_exportable(model)
    quantized = torch.ao.quantization.quantize_dynamic(make_tiny_model("bert"), {torch.nn.Linear}, dtype=torch.qint8)
    with pytest.raises(ValueError, match="PyTorch-quantized"):
        check_exportable(quantized)
    from transformers import BertModel

    with pytest.raises(ValueError, match="not a sequence classifier"):
        check_exportable(BertModel(model.config))


def test_folder_loaded_with_plain_transformers_exports(tiny_tokenizer, tmp_path):
    from transformers import AutoModelForSequenceClassification

    # no layer without heads: slimformer.arch does not recognise the remote copy's HeadlessAttention yet
    model = make_tiny_model("bert")
    apply_plan(model, KeepPlan.removing(model, heads={0: [1, 2]}, ffn=[1]))
    folder = save_model(model, tiny_tokenizer, tmp_path / "model")
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules")  # its own copy of modeling_slimformer
    report = export_onnx(model, tiny_tokenizer, tmp_path / "out", bench=None, progress=False)
    assert report["passed"] and report["model"]["layers"][:2] == [{"heads": 2, "ffn": 37}, {"heads": 4, "ffn": 0}]


@pytest.mark.skipif(not hasattr(remote, "set_layer_topk"), reason="hard top-k attention not in this checkout")
def test_top_k_attention_is_refused():
    model = make_tiny_model("bert")
    layer = model.bert.encoder.layer[0]
    remote.set_layer_topk(layer, remote.FAMILY_PATHS["bert"], 2, head_size=8)
    with pytest.raises(ValueError, match="'bert.encoder.layer.0.attention.self' uses hard top-k attention"):
        check_exportable(model)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"opset": 13}, "opset=13"),
        ({"opset": 21}, "opset=21"),
        ({"atol": 0}, "atol=0"),
        ({"atol": float("nan")}, "atol=nan"),
        ({"int8_min_agreement": 1.5}, "int8_min_agreement=1.5"),
        ({"max_length": 4}, "max_length=4"),
        ({"verify_batch_size": 1}, "verify_batch_size=1"),
        ({"int8": "yes"}, "int8='yes'"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ExportConfig(**kwargs)


def test_config_round_trip():
    config = ExportConfig(int8=True, per_channel=False, atol=1e-5)
    assert ExportConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="ExportConfig: unknown field"):
        ExportConfig.from_dict({"int9": True})


# --- the command ------------------------------------------------------------------------------


def cli():
    app = typer.Typer()
    app.command("export")(export_command)
    app.command("noop")(lambda: None)  # two commands, so "export" is a subcommand as in slimformer.cli
    return app


def test_cli_export(tiny_tokenizer, tmp_path):
    model = prune(make_tiny_model("bert", num_labels=2))
    folder = save_model(model, tiny_tokenizer, tmp_path / "model")
    out = tmp_path / "onnx"
    args = ["export", str(folder), "--onnx", str(out), "--int8", "--min-agreement", "0", "--batch-sizes", "1"]
    args += ["--seq-len", "16", "--repeats", "2", "--warmup", "0", "--threads", "1"]
    runner = CliRunner()
    result = runner.invoke(cli(), [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and report["files"] == {
        "fp32": ONNX_FILE,
        "int8": INT8_FILE,
        "opt_fp32": "model.opt.onnx",
        "opt_int8": "model.opt.int8.onnx",
    }
    assert report["latency"]["results"][0]["batch_size"] == 1

    again = runner.invoke(cli(), [*args, "--json"])
    assert again.exit_code == 2 and "not empty" in again.stderr and again.stdout == ""

    human = runner.invoke(cli(), [*args, "--overwrite"])
    assert human.exit_code == 0, human.output
    assert "model.int8.onnx" in human.stdout and "speedup onnx_int8" in human.stdout and ": ok" in human.stdout

    bad = runner.invoke(cli(), ["export", str(folder), "--onnx", str(tmp_path / "x"), "--opset", "9", "--no-bench"])
    assert bad.exit_code == 2 and "opset=9" in bad.stderr


@pytest.mark.real
def test_real_minilm_matches_within_1e_4(tmp_path):
    from slimformer.models import load_model

    torch.manual_seed(0)
    model, tokenizer = load_model("minilm-l6", label_names=["rotten", "fresh"])
    apply_plan(model, KeepPlan.removing(model, heads={0: range(6), 3: range(12)}, neurons={1: range(0, 1536, 2)}))
    report = export_onnx(model, tokenizer, tmp_path / "out", ExportConfig(int8=True, check=False), bench=None)
    assert report["verification"]["fp32"]["max_abs_diff"] <= 1e-4
    assert report["bytes"]["int8"] < report["bytes"]["fp32"] * 0.3  # int8 weights and embeddings
