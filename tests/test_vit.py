"""The shared contract on every image family (ViT, DeiT), image tasks, and the CLI on an image model.

The text suite feeds token ids; image families take pixel values, so they get this suite, which
iterates the registry's image families: cost model = FlopCounterMode, surgery = masking, uneven
models saved and loaded with plain transformers (``trust_remote_code``) with identical logits,
ONNX export verified, and every registered method run or refused with its reason.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForImageClassification

from conftest import IMAGE_FAMILIES, make_tiny_model
from slimformer.arch import FAMILIES, get_adapter
from slimformer.cost import cost_of
from slimformer.data import align_labels, load_task, make_loader
from slimformer.export import save_model
from slimformer.images import ImageProcessor
from slimformer.methods import MethodData, apply, available
from slimformer.models import load_model
from slimformer.structure import Structure
from slimformer.surgery import KeepPlan, apply_plan, masked
from test_export import plain_transformers_logits
from test_methods import EXAMPLES


def make_tiny_vit(family: str = "vit", *, num_labels: int = 3, layers: int = 3, seed: int = 0, labels=None):
    """A seeded random image classifier from the adapter's tiny config (16 x 16 RGB, 4 x 4 patches)."""
    config = FAMILIES[family].tiny_config(layers=layers, num_labels=num_labels)
    if labels is not None:
        config.id2label = dict(enumerate(labels))
        config.label2id = {n: i for i, n in enumerate(labels)}
    torch.manual_seed(seed)
    model = AutoModelForImageClassification.from_config(config).eval()
    with torch.no_grad():  # random init gives logits ~0.01; scale so that differences show
        model.classifier.weight.mul_(50)
    return model


def pixels(model, batch: int = 2, seed: int = 0) -> dict:
    return get_adapter(model).random_inputs(model.config, batch=batch, seed=seed)


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def cut(model):
    plan = KeepPlan.removing(model, heads={0: [1, 2]}, neurons={1: range(9)}, attention=[2], layers=[1])
    return apply_plan(model, plan)


@pytest.fixture(params=IMAGE_FAMILIES)
def image_family(request) -> str:
    return request.param


def test_image_families_are_registered_with_their_inputs():
    assert set(IMAGE_FAMILIES) == {"vit", "deit"}
    for family in IMAGE_FAMILIES:
        adapter = FAMILIES[family]
        assert adapter.modality == "image" and adapter.input_names(None) == ("pixel_values",)
    with pytest.raises(ValueError, match="no adapter"):
        make_tiny_model("not-a-family")


def test_adapter_layer_loop_equals_the_model(image_family):
    model = make_tiny_vit(image_family)
    x = pixels(model)
    torch.testing.assert_close(get_adapter(model).forward_batch(model, x), logits(model, x))


@pytest.mark.parametrize("pruned", [False, True])
def test_cost_model_equals_flop_counter_and_parameter_count(image_family, pruned):
    model = make_tiny_vit(image_family)
    if pruned:
        cut(model)
    model.config._attn_implementation = "eager"  # so the attention matmuls are visible to the counter
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(**pixels(model, batch=1))
    cost = cost_of(Structure.from_model(model), seq_len=128)  # the image size fixes the tokens
    assert cost.seq_len == 16 + FAMILIES[image_family].special_tokens
    assert cost.macs == counter.get_total_flops() // 2
    assert cost.params == sum(p.numel() for p in model.parameters())


def test_surgery_equals_masking_and_changes_the_model(image_family):
    model = make_tiny_vit(image_family)
    x = pixels(model)
    dense = logits(model, x)
    heads = [torch.tensor([1.0, 0, 0, 1]), torch.ones(4), torch.zeros(4)]
    ffn = [torch.ones(37), torch.cat([torch.zeros(9), torch.ones(28)]), torch.ones(37)]
    with torch.no_grad(), masked(model, heads, ffn, [True, False, True]):
        expected = model(**x).logits
    small = cut(model)
    torch.testing.assert_close(logits(small, x), expected)
    assert not torch.allclose(expected, dense, atol=1e-3)  # the plan really changed the model
    assert [(s.heads, s.ffn) for s in Structure.from_model(small).layers] == [(2, 37), (0, 37)]


def test_uneven_model_loads_with_plain_transformers(image_family, tmp_path):
    model = cut(make_tiny_vit(image_family))
    x = pixels(model)
    folder = save_model(model, ImageProcessor.for_model(model.config), tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {"AutoModelForImageClassification": f"modeling_slimformer.Slim{type(model).__name__}"}
    plain = plain_transformers_logits(folder, {"pixel_values": x["pixel_values"]}, "AutoModelForImageClassification")
    torch.testing.assert_close(plain, logits(model, x))
    loaded, processor = load_model(str(folder), require_head=True)
    torch.testing.assert_close(logits(loaded, x), logits(model, x), rtol=0, atol=0)
    assert isinstance(processor, ImageProcessor) and processor.size == (16, 16)


def test_onnx_export_of_a_pruned_model_matches_pytorch(tmp_path):
    from slimformer.onnx_export import ExportConfig, export_onnx

    model = cut(make_tiny_vit("vit"))
    report = export_onnx(
        model, ImageProcessor.for_model(model.config), tmp_path / "onnx", ExportConfig(optimize=False), bench=None,
        progress=False,
    )  # fmt: skip
    assert report["passed"] and report["inputs"] == ["pixel_values"]
    assert report["verification"]["fp32"]["max_abs_diff"] < 1e-4


# --- image data ----------------------------------------------------------------------------------


def write_images(root, classes=("cat", "dog"), per_class=10, size=(12, 10)):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_digits_task_is_real_seeded_and_stratified():
    task = load_task("digits")
    assert task.info["modality"] == "image" and task.label_names == [str(i) for i in range(10)]
    assert sum(task.sizes().values()) == 1797 and task.sizes()["test"] in range(170, 190)
    assert all(len(task.info["counts"]["test"]) == 10 for _ in [0])  # every class in test
    assert load_task("digits").content_hash == task.content_hash
    assert load_task("digits", seed=1).content_hash != task.content_hash


def test_image_folder_pooled_and_split_layouts(tmp_path):
    write_images(tmp_path / "pooled")
    task = load_task(str(tmp_path / "pooled"))
    assert task.label_names == ["cat", "dog"] and sum(task.sizes().values()) == 20
    for split in ("train", "validation", "test"):
        write_images(tmp_path / "splits" / split, per_class=3)
    task = load_task(str(tmp_path / "splits"))
    assert task.sizes() == {"train": 6, "validation": 6, "test": 6}
    # labels follow the model's id2label order, never the folder order
    aligned = align_labels(task, ["dog", "cat"])
    assert [e.label for e in aligned.split("test")] == [1 - e.label for e in task.split("test")]
    with pytest.raises(ValueError, match="'cat'.*does not know"):
        align_labels(task, ["dog", "bird"])


def test_image_folder_bad_layouts_are_refused(tmp_path):
    write_images(tmp_path / "a" / "train")
    write_images(tmp_path / "a" / "test", classes=("cat", "bird"), per_class=2)
    with pytest.raises(ValueError, match="bird"):
        load_task(str(tmp_path / "a"))
    (tmp_path / "b" / "cat").mkdir(parents=True)
    (tmp_path / "b" / "cat" / "x.png").write_bytes(b"not a png")
    (tmp_path / "b" / "dog").mkdir()
    with pytest.raises(ValueError, match="without image files"):
        load_task(str(tmp_path / "b"))


def test_processor_resizes_rescales_and_normalises(tmp_path):
    model = make_tiny_vit("vit")
    write_images(tmp_path / "imgs", per_class=10)
    task = load_task(str(tmp_path / "imgs"))
    proc = ImageProcessor.for_model(model.config, mean=0.5, std=0.25)
    batch = next(iter(make_loader(task.split("train"), proc, batch_size=4)))
    assert batch["pixel_values"].shape == (4, 3, 16, 16) and batch["labels"].shape == (4,)
    white = proc.pixel_values([Image.new("RGB", (10, 12), (255, 255, 255))])
    torch.testing.assert_close(white, torch.full((1, 3, 16, 16), 2.0))  # (1 - 0.5) / 0.25


def test_image_model_folder_without_preprocessor_is_refused(tmp_path):
    model = make_tiny_vit("vit")
    model.save_pretrained(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json.*size, mean and std"):
        load_model(str(tmp_path / "m"))
    bad = {"size": {"height": 32, "width": 32}}
    (tmp_path / "m" / "preprocessor_config.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"size \(32, 32\).*\(16, 16\)"):
        load_model(str(tmp_path / "m"))


def test_text_and_image_tasks_do_not_mix(tiny_tokenizer):
    from slimformer.commands.common import check_modality

    digits = load_task("digits")
    with pytest.raises(ValueError, match="a text model needs text examples"):
        make_loader(digits.split("test")[:4], tiny_tokenizer)
    with pytest.raises(ValueError, match="is an image task.*classifies text"):
        check_modality(make_tiny_model("bert"), digits, "bert-tiny", "digits")
    text = load_task("digits")
    object.__setattr__(text, "info", {**text.info, "modality": "text"})
    with pytest.raises(ValueError, match="is a text task.*classifies images: give an image task"):
        check_modality(make_tiny_vit("vit"), text, "vit-tiny", "notes.csv")


# --- every registered method: runs, or is refused with its reason ----------------------------------

RUNS = {
    "optin": {"budget": "macs=0.6"},
    "fisher": {"budget": "macs=0.6"},
    "magnitude": {"budget": "macs=0.6"},
    "random": {"budget": "macs=0.6"},
    "recover": {"max_steps": 2, "lr": 1e-3, "warmup_ratio": 0.0},  # one batch: no warmup step at lr 0
    "int8": {},
    "bf16": {},
}


@pytest.fixture(scope="module")
def image_task(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    write_images(root, classes=("a", "b", "c"), per_class=10)
    return load_task(str(root))


@pytest.mark.parametrize("name", available())
def test_every_method_runs_or_is_refused_with_its_reason(name, image_task):
    from slimformer.methods import get_method

    model = make_tiny_vit("vit", labels=image_task.label_names)
    adapter = get_adapter(model)
    method = get_method(name)
    data = MethodData(tokenizer=ImageProcessor.for_model(model.config), task=image_task, calibration=16, progress=False)
    if name in adapter.refused:
        with pytest.raises(ValueError, match=f"{name} is not available for vit models: .+"):
            apply(method, model, method.config_from(EXAMPLES[name]), data)
        return
    assert name in RUNS, f"method {name!r} is neither run nor refused for image models"
    if name == "recover":  # distil a pruned copy from the dense model (dense from itself learns nothing)
        data.teacher, model = model, cut(make_tiny_vit("vit", labels=image_task.label_names))
    before = logits(model, pixels(model))
    result = apply(method, model, method.config_from(RUNS[name]), data)
    torch.testing.assert_close(logits(model, pixels(model)), before)  # the input is untouched
    x = pixels(model)
    if name == "bf16":
        x = {k: v.bfloat16() for k, v in x.items()}
    out = logits(result.model, x).float()
    assert out.shape == before.shape and not torch.allclose(out, before, atol=1e-6)
    json.dumps(result.report, default=str)


def test_optin_end_to_end_through_the_cli(image_task, tmp_path):
    from typer.testing import CliRunner

    from slimformer.cli import app

    model = make_tiny_vit("vit", labels=image_task.label_names)
    save_model(model, ImageProcessor.for_model(model.config), tmp_path / "dense")
    runner = CliRunner()
    args = ["prune", str(tmp_path / "dense"), "--task", str(image_task.name), "--budget", "macs=0.5"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "small"), "--calibration", "16", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["relative"]["macs"] <= 0.5 and report["seq_len"] == 17
    result = runner.invoke(app, ["evaluate", str(tmp_path / "small"), "--task", image_task.name, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n"] == len(image_task.split("test"))
    result = runner.invoke(app, ["evaluate", str(tmp_path / "small"), "--task", "rotten_tomatoes"])
    assert result.exit_code != 0 and "classifies images" in result.output
    result = runner.invoke(app, ["info", str(tmp_path / "small"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["seq_len"] == 17
