"""Save -> load reproduces outputs, with slimformer and with plain transformers (no slimformer)."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import make_inputs, make_tiny_model
from slimformer.export import is_slim_folder, load_slim, save_model
from slimformer.models import load_model
from slimformer.structure import Structure
from slimformer.surgery import KeepPlan, apply_plan

# Runs in a fresh interpreter where any import of slimformer fails, as if it were not installed.
PLAIN_LOAD = textwrap.dedent(
    """
    import importlib.abc, json, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "slimformer" or name.startswith("slimformer."):
                raise ImportError("slimformer must not be needed")
    sys.meta_path.insert(0, Block())
    import torch
    import transformers
    folder, inputs, auto = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    model = getattr(transformers, auto).from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        logits = model(**{k: torch.tensor(v) for k, v in inputs.items()}).logits
    print(json.dumps(logits.tolist()))
    """
)


def plain_transformers_logits(folder, inputs: dict, auto: str = "AutoModelForSequenceClassification") -> torch.Tensor:
    """Logits of ``folder`` loaded by plain transformers' ``auto`` class in a subprocess where slimformer
    cannot be imported."""
    payload = json.dumps({k: v.tolist() for k, v in inputs.items()})
    out = subprocess.run(
        [sys.executable, "-c", PLAIN_LOAD, str(folder), payload, auto],
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return torch.tensor(json.loads(out.stdout.strip().splitlines()[-1]))


def prune(model):
    plan = KeepPlan.removing(model, heads={0: [1, 2]}, neurons={1: range(9)}, attention=[2], layers=[1])
    return apply_plan(model, plan)


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def test_pruned_model_round_trips_with_slimformer(tiny_model, tiny_inputs, tiny_tokenizer, tmp_path):
    prune(tiny_model)
    expected = logits(tiny_model, tiny_inputs)
    folder = save_model(tiny_model, tiny_tokenizer, tmp_path / "m", extra={"method": "test"})
    assert is_slim_folder(folder)
    assert (folder / "modeling_slimformer.py").exists() and (folder / "tokenizer_config.json").exists()
    assert json.loads((folder / "slimformer.json").read_text()) == {"method": "test"}
    loaded = load_slim(folder)
    torch.testing.assert_close(logits(loaded, tiny_inputs), expected, rtol=0, atol=0)
    assert Structure.from_model(loaded) == Structure.from_model(tiny_model)
    model, tokenizer = load_model(str(folder))
    torch.testing.assert_close(logits(model, tiny_inputs), expected, rtol=0, atol=0)
    assert tokenizer("good movie")["input_ids"]


def test_pruned_model_loads_with_plain_transformers(tiny_model, tiny_tokenizer, tmp_path):
    prune(tiny_model)
    inputs = make_inputs()
    expected = logits(tiny_model, inputs)
    folder = save_model(tiny_model, tiny_tokenizer, tmp_path / "m")
    got = plain_transformers_logits(folder, inputs)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_dense_model_saves_as_plain_transformers(tiny_model, tiny_tokenizer, tmp_path):
    folder = save_model(tiny_model, tiny_tokenizer, tmp_path / "m")
    assert not is_slim_folder(folder) and not (folder / "modeling_slimformer.py").exists()
    model, _ = load_model(str(folder))
    torch.testing.assert_close(logits(model, make_inputs()), logits(tiny_model, make_inputs()))


def test_nothing_is_overwritten_silently(tiny_model, tiny_tokenizer, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not empty.*--overwrite"):
        save_model(tiny_model, tiny_tokenizer, folder)
    assert (folder / "keep.txt").read_text() == "precious"
    save_model(tiny_model, tiny_tokenizer, folder, overwrite=True)
    assert not (folder / "keep.txt").exists() and (folder / "config.json").exists()


def test_output_path_that_is_a_file(tiny_model, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        save_model(tiny_model, None, target)


def test_missing_model_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_model(str(tmp_path / "nope"))


def test_folder_loaders_dispatch_on_config_key(tmp_path, monkeypatch):
    """A folder whose config names a registered method key is loaded by that method's loader."""
    import json
    import sys
    import types

    from slimformer import models

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "slimformer_fake": {"x": 1}}))
    calls = []
    fake = types.ModuleType("fake_loader_mod")
    fake.load = lambda path: calls.append(path) or "MODEL"
    monkeypatch.setitem(sys.modules, "fake_loader_mod", fake)
    monkeypatch.setitem(models.FOLDER_LOADERS, "slimformer_fake", "fake_loader_mod:load")
    assert models._folder_loader(str(folder))(str(folder)) == "MODEL"
    assert calls == [str(folder)]
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "slimformer_fake": None}))
    assert models._folder_loader(str(folder)) is None


def test_load_model_refuses_to_relabel_a_trained_head(tmp_path, tiny_tokenizer):
    from slimformer.models import load_model, model_label_names

    model = make_tiny_model("bert", num_labels=2)
    model.config.id2label, model.config.label2id = {0: "pos", 1: "neg"}, {"pos": 0, "neg": 1}
    folder = save_model(model, tiny_tokenizer, tmp_path / "m")
    loaded, _ = load_model(str(folder), label_names=["pos", "neg"])
    assert model_label_names(loaded.config) == ["pos", "neg"]
    with pytest.raises(ValueError, match=r"fine-tuned with classes \['pos', 'neg'\], not \['neg', 'pos'\]"):
        load_model(str(folder), label_names=["neg", "pos"])
    assert model_label_names(make_tiny_model("bert", num_labels=2).config) is None  # LABEL_0, LABEL_1
