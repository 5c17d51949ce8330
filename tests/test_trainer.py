"""The shared trainer: schedule, sharding, parameter groups, resume checks, losses, and the same
learning-rate schedule and result under two CPU processes (torchrun, gloo) as under one.

Run as a script (``ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 tests/test_trainer.py OUT_DIR``)
it is the worker of :func:`test_two_processes_follow_the_one_process_schedule`.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from conftest import WORDS, make_tiny_model
from slimformer.checkpoints import check_resumable, latest_checkpoint
from slimformer.data import Example, TaskData
from slimformer.losses import blend, hidden_mse, logit_kl
from slimformer.trainer import LoopSettings, Trainer, decay_groups, linear_schedule, shard

# 8 batches of 4 rows; two processes take 4 each per epoch, one process takes them merged in pairs
N_BATCHES, ROWS, EPOCHS = 8, 4, 3
SETTINGS = LoopSettings(epochs=EPOCHS, lr=0.05, warmup_ratio=0.25, progress=False, desc="toy")


def toy_batches() -> list[dict]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_BATCHES * ROWS, 6, generator=g)  # (N, 6)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()  # (N,) 3 classes
    return [{"x": x[i : i + ROWS], "y": y[i : i + ROWS]} for i in range(0, len(x), ROWS)]


def merged_pairs(batches: list[dict]) -> list[dict]:
    """What one process must see to match two: batches 2k and 2k+1 as one."""
    return [{k: torch.cat([a[k], b[k]]) for k in a} for a, b in zip(batches[::2], batches[1::2], strict=True)]


def toy_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.LayerNorm(8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def toy_loss(net, batch: dict, step: int):
    loss = F.cross_entropy(net(batch["x"]), batch["y"])  # mean over the rows, ()
    return loss, {"loss": loss.item()}


def train_toy(batches_for, out: Path | None = None, resume_from=None, settings: LoopSettings = SETTINGS):
    model = toy_model()
    outcome = Trainer().fit(
        model, decay_groups(model, 0.01), batches_for, toy_loss, settings,
        checkpoints=out, meta={"config": {"lr": settings.lr}}, resume_from=resume_from,
    )  # fmt: skip
    return outcome


# --- pieces ----------------------------------------------------------------------------------------


def test_schedule_warms_up_then_decays_to_zero_whatever_the_process_count():
    for n in (1, 2, 4):
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = linear_schedule(opt, 2, 10, n)
        lrs = []
        for _ in range(10):  # what accelerate's prepared scheduler does per optimizer step
            lrs.append(sched.get_last_lr()[0])
            opt.step()
            for _ in range(n):
                sched.step()
        torch.testing.assert_close(
            torch.tensor(lrs), torch.tensor([0, 0.5, 1, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8])
        )


def test_shard_gives_every_process_the_same_number_of_batches():
    items = list(range(5))
    assert shard(items, 0, 1) == items
    parts = [shard(items, r, 2) for r in range(2)]
    assert parts == [[0, 2, 4], [1, 3, 0]]  # padded by wrapping around
    assert [len(shard(items, r, 3)) for r in range(3)] == [2, 2, 2]


def test_decay_groups_split_by_rate_and_decay():
    model = toy_model()
    groups = decay_groups(model, 0.1, lr_of=lambda name: 1.0 if name == "3" else 0.5)
    by_key = {(g.get("lr"), g["weight_decay"]): {id(p) for p in g["params"]} for g in groups}
    assert by_key[(1.0, 0.1)] == {id(model[3].weight)} and by_key[(1.0, 0.0)] == {id(model[3].bias)}
    assert by_key[(0.5, 0.0)] == {id(model[0].bias), id(model[1].weight), id(model[1].bias)}
    model[0].weight.requires_grad_(False)
    assert all(id(model[0].weight) not in {id(p) for p in g["params"]} for g in decay_groups(model, 0.1))


@pytest.mark.parametrize(
    ("name", "value"), [("epochs", 0), ("lr", -1.0), ("max_steps", 0), ("warmup_ratio", 1.0), ("max_grad_norm", 0.0)]
)
def test_loop_settings_name_the_bad_field(name, value):
    with pytest.raises(ValueError, match=rf"LoopSettings\.{name}={value!r} is not allowed"):
        LoopSettings(**{**vars(SETTINGS), name: value})


def test_check_resumable_names_what_differs(tmp_path):
    state = {"config": {"lr": 0.1, "epochs": 2}, "epoch": 2}
    with pytest.raises(ValueError, match="no random_states"):
        check_resumable(tmp_path, state, {"lr": 0.1, "epochs": 3}, may_change=("epochs",), epochs=3)
    torch.save({"python": 1}, tmp_path / "random_states_0.pkl")
    check_resumable(tmp_path, state, {"lr": 0.1, "epochs": 3}, may_change=("epochs",), epochs=3)
    with pytest.raises(ValueError, match=r"lr \(checkpoint 0\.1, now 0\.2\); only epochs may change"):
        check_resumable(tmp_path, state, {"lr": 0.2, "epochs": 3}, may_change=("epochs",), epochs=3)
    with pytest.raises(ValueError, match="content_hash a, now b"):
        check_resumable(tmp_path, state, state["config"], may_change=(), epochs=2, data_hash="b", saved_hash="a")
    with pytest.raises(ValueError, match="done 2 epochs, more than epochs=1"):
        check_resumable(tmp_path, state, state["config"], may_change=("epochs",), epochs=1)


def test_open_run_refuses_clears_or_resumes(tmp_path):
    trainer = Trainer()
    out = tmp_path / "run"
    assert trainer.open_run(out, resume=False, overwrite=False) is None and out.is_dir()
    (out / "x.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="--overwrite"):
        trainer.open_run(out, resume=False, overwrite=False)
    assert (out / "x.txt").exists()
    assert trainer.open_run(out, resume=True, overwrite=False) is None  # nothing to resume: fresh
    assert trainer.open_run(out, resume=False, overwrite=True) is None and not any(out.iterdir())
    with pytest.raises(ValueError, match="exclude"):
        trainer.open_run(out, resume=True, overwrite=True)


# --- losses --------------------------------------------------------------------------------------


def test_logit_kl_is_zero_on_equal_logits_and_matches_the_formula():
    s, t = torch.randn(5, 3), torch.randn(5, 3)
    assert logit_kl(t, t, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    q = torch.softmax(t / 2, -1)
    expected = (q * (q.log() - torch.log_softmax(s / 2, -1))).sum(-1).mean() * 4
    torch.testing.assert_close(logit_kl(s, t, 2.0), expected)
    with pytest.raises(ValueError, match="temperature"):
        logit_kl(s, t, 0.0)


def test_hidden_mse_ignores_padding_and_is_relative():
    h = [torch.randn(2, 4, 8) for _ in range(2)]
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    noisy = [x.clone() for x in h]
    for x in noisy:
        x[0, 3] += 100.0  # a padded position: ignored
    assert hidden_mse(noisy, h, mask).item() == pytest.approx(0.0, abs=1e-6)
    zero = [torch.zeros_like(x) for x in h]
    assert hidden_mse(zero, h, mask).item() == pytest.approx(1.0)  # ||h||^2 / ||h||^2
    with pytest.raises(ValueError, match="2 student layers but 1"):
        hidden_mse(h, h[:1], mask)
    assert blend(torch.tensor(1.0), torch.tensor(3.0), 0.25).item() == 1.5


# --- the loop --------------------------------------------------------------------------------------


def test_fit_schedules_records_and_resumes_bit_exactly(tmp_path):
    batches = toy_batches()
    full = train_toy(lambda epoch: batches, tmp_path / "full")
    steps = EPOCHS * N_BATCHES
    assert full.global_step == full.total_steps == steps == len(full.lrs)
    assert full.lrs[0] == 0.0 and max(full.lrs) == pytest.approx(SETTINGS.lr) and full.lrs[-1] < full.lrs[-2]
    assert [r["epoch"] for r in full.history] == [1, 2, 3] and full.history[-1]["loss"] < full.history[0]["loss"]

    def crash_in_epoch_2(epoch: int):
        if epoch == 1:
            raise RuntimeError("simulated crash")
        return batches

    out = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_toy(crash_in_epoch_2, out)
    found = latest_checkpoint(out)
    assert found[0].name == "epoch-1" and found[1]["global_step"] == N_BATCHES
    resumed = train_toy(lambda epoch: batches, out, resume_from=found)
    assert resumed.resumed_from.name == "epoch-1" and resumed.global_step == steps
    assert resumed.lrs == full.lrs[N_BATCHES:]  # the schedule goes on where it stopped
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]
    for a, b in zip(resumed.model.state_dict().values(), full.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_max_steps_ends_the_schedule_there():
    batches = toy_batches()
    short = train_toy(lambda epoch: batches, settings=LoopSettings(**{**vars(SETTINGS), "max_steps": 5}))
    assert short.global_step == short.total_steps == 5 and [r["steps"] for r in short.history] == [5]
    assert short.lrs[:2] == [0.0, pytest.approx(SETTINGS.lr / 2)]  # warmup: ceil(0.25 * 5) = 2 steps


# --- every method resumes bit-exactly after a crash ------------------------------------------------


def word_task() -> TaskData:
    """Label 1 iff the text holds "good"; 32 train / 8 validation examples."""
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(40)]
    ex = [Example(t, int("good" in t.split())) for t in texts]
    return TaskData("words", ["no", "yes"], {"train": ex[:32], "validation": ex[32:], "test": []}, "words0")


def _skim(tokenizer, out: Path, resume: bool):
    from slimformer.skim import SkimConfig, skim

    cfg = SkimConfig(epochs=2, batch_size=8, max_length=24, distill=0.5)
    run = skim(make_tiny_model("bert", num_labels=2), cfg, word_task(), tokenizer=tokenizer, out_dir=out,
               resume=resume, progress=False)  # fmt: skip
    return run.model, run.report["resumed_from"]


def _slim(tokenizer, out: Path, resume: bool):
    from slimformer.slim import SlimConfig, slim

    cfg = SlimConfig(epochs=2, batch_size=8, group_size=8, init_examples=16, max_length=16, eval_budgets=(1.0, 0.4))
    net = slim(make_tiny_model("bert", num_labels=2), cfg, word_task(), tokenizer=tokenizer, out_dir=out,
               resume=resume, progress=False)  # fmt: skip
    return net, net.info["report"]["resumed_from"]


@pytest.mark.parametrize("method", [_skim, _slim], ids=["skim", "slim"])
def test_methods_resume_bit_exactly_after_a_crash(method, tiny_tokenizer, tmp_path, monkeypatch):
    import slimformer.data
    import slimformer.slim.train

    full, _ = method(tiny_tokenizer, tmp_path / "full", False)
    real = slimformer.data.make_loader

    def crash_in_epoch_2(*args, **kw):
        if kw.get("group_by_length") and kw.get("seed") == 1:  # the second epoch's training batches
            raise RuntimeError("simulated crash")
        return real(*args, **kw)

    for module in (slimformer.data, slimformer.slim.train):
        monkeypatch.setattr(module, "make_loader", crash_in_epoch_2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        method(tiny_tokenizer, tmp_path / "crashed", False)
    for module in (slimformer.data, slimformer.slim.train):
        monkeypatch.setattr(module, "make_loader", real)
    resumed, resumed_from = method(tiny_tokenizer, tmp_path / "crashed", True)
    assert resumed_from.endswith("epoch-1")
    expected = full.state_dict()
    for name, value in resumed.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0, msg=name)


# --- two processes ---------------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_follow_the_one_process_schedule(tmp_path):
    """Two gloo processes on 8 batches (4 each per epoch) = one process on the 4 merged pairs:
    the same learning rate at every optimizer step, the same weights on both ranks, the same result."""
    import slimformer

    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    src = str(Path(slimformer.__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([src, env_path] if (env_path := os.environ.get("PYTHONPATH")) else [src]),
    }
    env.update(OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true")
    # torchrun, not `accelerate launch --cpu`: the latter needs mpirun for several CPU processes
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), __file__, str(tmp_path),
    ]  # fmt: skip
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.skip("launching two processes timed out (a busy machine)")
    tail = (proc.stdout + proc.stderr)[-3000:]
    if proc.returncode != 0 and not list(tmp_path.glob("started-*")):
        pytest.skip(f"cannot launch two processes here: {tail}")
    assert proc.returncode == 0, tail
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2)]
    one = train_toy(lambda epoch: merged_pairs(toy_batches()))
    assert len(one.lrs) == EPOCHS * N_BATCHES // 2
    for got in ranks:
        assert got["num_processes"] == 2 and got["steps_per_epoch"] == one.steps_per_epoch
        assert got["lrs"] == pytest.approx(one.lrs, rel=1e-12, abs=0)  # not decayed twice as fast
        assert [r["loss"] for r in got["history"]] == pytest.approx([r["loss"] for r in one.history], rel=1e-5)
    assert ranks[0]["weights"] == ranks[1]["weights"]  # gradients were averaged: the ranks agree
    for name, value in one.model.state_dict().items():
        torch.testing.assert_close(torch.tensor(ranks[0]["weights"][name]), value, rtol=1e-5, atol=1e-6)
    assert time.perf_counter() - t0 < 120


def _worker(out_dir: Path) -> None:
    """One rank of the two-process run: train the toy model, write what it saw."""
    from accelerate import PartialState

    torch.set_num_threads(1)
    state = PartialState(cpu=True)  # gloo on the CPU (the launcher also sets ACCELERATE_USE_CPU)
    rank = state.process_index
    (out_dir / f"started-{rank}").write_text("")
    batches = toy_batches()
    outcome = train_toy(lambda epoch: batches)
    result = {
        "num_processes": state.num_processes,
        "steps_per_epoch": outcome.steps_per_epoch,
        "lrs": outcome.lrs,
        "history": outcome.history,
        "weights": {k: v.tolist() for k, v in outcome.model.state_dict().items()},
    }
    (out_dir / f"rank-{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
