"""FinetuneConfig validation and finetune(): learning, outputs, refusal/overwrite, resume."""

from __future__ import annotations

import dataclasses
import json
import logging
import random

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import slimformer.train as train_mod
from conftest import WORDS, make_tiny_model
from slimformer.data import Example, TaskData
from slimformer.evaluate import predict
from slimformer.train import FinetuneConfig, finetune, latest_checkpoint
from slimformer.trainer import decay_groups

# 64 train examples, batch 8: 8 steps per epoch. 8 epochs at lr 3e-3 learn the task (~1 s).
LEARN = FinetuneConfig(epochs=8, lr=3e-3, batch_size=8, warmup_ratio=0.1, max_length=16, eval_batch_size=16)
SHORT = dataclasses.replace(LEARN, epochs=2)
STEPS_PER_EPOCH = 8


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer):
    return tiny_tokenizer


def make_task(seed: int = 0, name: str = "has-good") -> TaskData:
    """Label 1 iff the text contains "good"; balanced; 64 / 16 / 16 examples."""
    rng = random.Random(seed)
    others = [w for w in WORDS if w != "good"]

    def example(i: int) -> Example:
        words = rng.choices(others, k=rng.randint(3, 8))
        if i % 2:
            words.insert(rng.randrange(len(words) + 1), "good")
        return Example(" ".join(words), i % 2)

    splits = {
        "train": [example(i) for i in range(64)],
        "validation": [example(i) for i in range(16)],
        "test": [example(i) for i in range(16)],
    }
    return TaskData(name=name, label_names=["no", "yes"], splits=splits, content_hash=f"hash{seed}")


def new_model():
    return make_tiny_model("bert", num_labels=2)


def run(tokenizer, out_dir, config=SHORT, task=None, model=None, **kwargs) -> dict:
    return finetune(
        model if model is not None else new_model(),
        tokenizer,
        task if task is not None else make_task(),
        config,
        out_dir,
        progress=False,
        **kwargs,
    )


def final_weights(out_dir) -> dict[str, torch.Tensor]:
    return load_file(str(out_dir / "model.safetensors"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tokenizer):
    out = tmp_path_factory.mktemp("trained") / "run"
    model = new_model()
    report = run(tokenizer, out, LEARN, model=model)
    return model, report, out


# ------------------------------------------------------------------------------------------------
# FinetuneConfig


def test_config_defaults_and_help():
    cfg = FinetuneConfig()
    assert cfg.to_dict() == {
        "epochs": 2,
        "lr": 5e-5,
        "batch_size": 32,
        "max_length": 64,
        "warmup_ratio": 0.06,
        "weight_decay": 0.01,
        "seed": 0,
        "eval_batch_size": 64,
        "group_by_length": True,
        "max_steps": None,
    }
    for f in dataclasses.fields(FinetuneConfig):
        assert f.metadata.get("help"), f.name
    with pytest.raises(TypeError):
        FinetuneConfig(2)  # keyword-only
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("epochs", 0),
        ("epochs", 1.5),
        ("epochs", True),
        ("lr", 0),
        ("lr", -1e-3),
        ("lr", float("nan")),
        ("lr", "1e-3"),
        ("batch_size", 0),
        ("max_length", 1),
        ("warmup_ratio", 1.0),
        ("warmup_ratio", -0.1),
        ("weight_decay", -0.01),
        ("weight_decay", float("inf")),
        ("seed", -1),
        ("seed", 2**32),
        ("eval_batch_size", 0),
        ("max_steps", 0),
        ("max_steps", 2.5),
        ("group_by_length", 1),
    ],
)
def test_config_rejects_bad_values(name, value):
    with pytest.raises(ValueError, match=rf"\b{name}=") as err:
        FinetuneConfig(**{name: value})
    assert repr(value) in str(err.value)
    assert "must be" in str(err.value)


def test_config_json_round_trip():
    cfg = FinetuneConfig(epochs=3, lr=1e-3, batch_size=4, warmup_ratio=0.0, seed=7, max_steps=5)
    assert FinetuneConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert FinetuneConfig.from_dict({"epochs": 4}) == FinetuneConfig(epochs=4)  # missing keys: defaults
    ints = FinetuneConfig(lr=1, weight_decay=0)  # ints accepted for float fields, stored as floats
    assert isinstance(ints.lr, float) and FinetuneConfig.from_dict(ints.to_dict()) == ints
    with pytest.raises(ValueError, match="bogus.*colour|colour.*bogus"):
        FinetuneConfig.from_dict({"epochs": 1, "bogus": 1, "colour": "red"})


# ------------------------------------------------------------------------------------------------
# finetune: learning and outputs


def test_finetune_learns(trained):
    _, report, _ = trained
    losses = [e["train_loss"] for e in report["epochs"]]
    assert [e["epoch"] for e in report["epochs"]] == list(range(1, 9))
    assert losses[-1] < 0.5 * losses[0], losses
    assert report["validation"] == report["epochs"][-1]["validation"]
    assert report["validation"]["accuracy"] >= 0.8, report["validation"]  # chance is 0.5
    assert report["validation"]["n"] == 16 and "mcc" in report["validation"]


def test_finetune_writes_checkpoints_model_and_report(trained):
    _, report, out = trained
    for n in range(1, 9):
        ckpt = out / "checkpoints" / f"epoch-{n}"
        for name in ("model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl"):
            assert (ckpt / name).is_file(), (ckpt, name)
        state = json.loads((ckpt / "trainer_state.json").read_text())
        assert state["epoch"] == n and state["global_step"] == n * STEPS_PER_EPOCH
        assert state["config"] == LEARN.to_dict()
        assert state["validation"] == report["epochs"][n - 1]["validation"]
    assert latest_checkpoint(out)[0].name == "epoch-8"
    for name in ("config.json", "model.safetensors", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "finetune_report.json").read_text()) == report
    task = make_task()
    assert report["task"] == {
        "name": task.name,
        "content_hash": task.content_hash,
        "sizes": {"train": 64, "validation": 16, "test": 16},
        "label_names": ["no", "yes"],
    }
    assert report["config"] == LEARN.to_dict()
    assert report["global_step"] == report["total_steps"] == 8 * STEPS_PER_EPOCH
    assert report["steps_per_epoch"] == STEPS_PER_EPOCH
    assert report["resumed_from"] is None and report["stopped_early"] is False
    assert report["wall_time_s"] > 0


def test_saved_model_reloads_with_identical_logits(trained, tokenizer):
    model, _, out = trained
    test = make_task().split("test")
    reloaded = AutoModelForSequenceClassification.from_pretrained(out)
    assert reloaded.config.id2label == {0: "no", 1: "yes"}
    assert reloaded.config.label2id == {"no": 0, "yes": 1}
    expected = predict(model, tokenizer, test, progress=False)
    torch.testing.assert_close(predict(reloaded, tokenizer, test, progress=False), expected, rtol=0, atol=0)
    saved_tok = AutoTokenizer.from_pretrained(out)
    assert saved_tok("the good movie")["input_ids"] == tokenizer("the good movie")["input_ids"]


def test_max_steps_caps_training(tokenizer, tmp_path):
    report = run(tokenizer, tmp_path / "run", dataclasses.replace(SHORT, epochs=3, max_steps=3))
    assert report["global_step"] == report["total_steps"] == 3
    assert report["stopped_early"] is True
    assert [e["steps"] for e in report["epochs"]] == [3]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["epoch-1"]


def test_no_weight_decay_on_biases_and_layernorm():
    model = new_model()
    decay, no_decay = (set(map(id, g["params"])) for g in decay_groups(model, 0.01))
    for name, p in model.named_parameters():
        expect_no_decay = name.endswith(".bias") or "LayerNorm" in name
        assert (id(p) in no_decay) == expect_no_decay and (id(p) in decay) != expect_no_decay, name


def test_argument_errors(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="resume"):
        run(tokenizer, tmp_path / "a", resume=True, overwrite=True)
    with pytest.raises(ValueError, match="3 output classes"):
        run(tokenizer, tmp_path / "b", model=make_tiny_model("bert", num_labels=3))
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        run(tokenizer, tmp_path / "file")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ------------------------------------------------------------------------------------------------
# existing output folders


def test_refuses_non_empty_dir_and_deletes_nothing(tokenizer, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError) as err:
        run(tokenizer, out)
    msg = str(err.value)
    assert str(out) in msg and "--overwrite" in msg and "--resume" in msg
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "precious"


def test_overwrite_clears_the_folder(tokenizer, tmp_path):
    out = tmp_path / "run"
    (out / "old" / "nested").mkdir(parents=True)
    (out / "stale.txt").write_text("old")
    report = run(tokenizer, out, dataclasses.replace(SHORT, max_steps=2), overwrite=True)
    assert not (out / "stale.txt").exists() and not (out / "old").exists()
    assert (out / "model.safetensors").is_file() and report["global_step"] == 2


# ------------------------------------------------------------------------------------------------
# resume


def test_resume_matches_uninterrupted_run(tokenizer, tmp_path, monkeypatch):
    """Crash at the start of epoch 2 of a 2-epoch run, resume: same weights as never crashing.

    Exact equality holds on the CPU: the checkpoint restores weights, AdamW moments, the schedule
    and the RNG states (dropout), and epoch 2 shuffles with seed + 1 either way.
    """
    full = run(tokenizer, tmp_path / "full", SHORT)

    real_make_loader = train_mod.make_loader
    seeds: list[int] = []

    def crashing_make_loader(examples, tokenizer, **kw):
        if kw.get("shuffle") and kw["seed"] == SHORT.seed + 1:
            raise RuntimeError("simulated crash")
        return real_make_loader(examples, tokenizer, **kw)

    out = tmp_path / "crashed"
    monkeypatch.setattr(train_mod, "make_loader", crashing_make_loader)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tokenizer, out, SHORT)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["epoch-1"]
    assert not (out / "finetune_report.json").exists()

    def recording_make_loader(examples, tokenizer, **kw):
        if kw.get("shuffle"):
            seeds.append(kw["seed"])
        return real_make_loader(examples, tokenizer, **kw)

    monkeypatch.setattr(train_mod, "make_loader", recording_make_loader)
    resumed = run(tokenizer, out, SHORT, resume=True)
    assert seeds == [SHORT.seed + 1]  # only epoch 2 was trained
    assert resumed["resumed_from"] == str(out / "checkpoints" / "epoch-1")
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2]
    assert resumed["global_step"] == full["global_step"] == 2 * STEPS_PER_EPOCH
    for a, b in zip(resumed["epochs"], full["epochs"], strict=True):
        assert {k: v for k, v in a.items() if k != "time_s"} == {k: v for k, v in b.items() if k != "time_s"}

    expected, got = final_weights(tmp_path / "full"), final_weights(out)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)


def test_resume_with_more_epochs_continues_at_next_epoch(tokenizer, tmp_path):
    out = tmp_path / "run"
    first = run(tokenizer, out, dataclasses.replace(SHORT, epochs=1))
    assert first["global_step"] == STEPS_PER_EPOCH
    resumed = run(tokenizer, out, dataclasses.replace(SHORT, epochs=2), resume=True)
    assert resumed["resumed_from"].endswith("epoch-1")
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2]
    assert resumed["epochs"][0] == first["epochs"][0]
    assert resumed["global_step"] == 2 * STEPS_PER_EPOCH
    assert latest_checkpoint(out)[0].name == "epoch-2"
    assert json.loads((out / "finetune_report.json").read_text()) == resumed
    with pytest.raises(ValueError, match="done 2 epochs, more than epochs=1"):
        run(tokenizer, out, dataclasses.replace(SHORT, epochs=1), resume=True)
    weights = final_weights(out)
    again = run(tokenizer, out, dataclasses.replace(SHORT, epochs=2), resume=True)  # nothing left to do
    assert again["resumed_from"].endswith("epoch-2") and again["epochs"] == resumed["epochs"]
    for name, tensor in final_weights(out).items():
        torch.testing.assert_close(tensor, weights[name], rtol=0, atol=0)


def test_resume_refuses_changed_config_or_data(tokenizer, tmp_path):
    out = tmp_path / "run"
    run(tokenizer, out, dataclasses.replace(SHORT, max_steps=1))
    with pytest.raises(ValueError, match=r"lr \(checkpoint 0\.003, now 0\.001\)") as err:
        run(tokenizer, out, dataclasses.replace(SHORT, lr=1e-3, seed=1), resume=True)
    assert "seed" in str(err.value) and "epochs" not in str(err.value).split("only")[0]
    with pytest.raises(ValueError, match="content_hash"):
        run(tokenizer, out, SHORT, task=make_task(seed=1), resume=True)


def test_resume_without_checkpoint_starts_fresh(tokenizer, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="slimformer"):
        report = run(tokenizer, tmp_path / "new", dataclasses.replace(SHORT, max_steps=2), resume=True)
    assert "starting fresh" in caplog.text
    assert report["resumed_from"] is None and report["global_step"] == 2
