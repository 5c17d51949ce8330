"""Output folders, saves and caches never lose or silently corrupt a user's files (issue 19)."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from slimformer.fsutil import (
    PARTIAL_MARK,
    atomic_write_text,
    check_output_dir,
    file_lock,
    staged_output_dir,
)


def _fill(folder: Path, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.txt").write_text(text)


@pytest.mark.parametrize("which", ["cwd", "parent", "home"])
def test_overwrite_refuses_the_working_folder_its_ancestors_and_home(tmp_path, monkeypatch, which):
    work = tmp_path / "work"
    _fill(work, "keep")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    _fill(tmp_path / "home", "keep")
    target = {"cwd": Path("."), "parent": Path(".."), "home": tmp_path / "home"}[which]
    with pytest.raises(ValueError, match="refusing to replace"):
        check_output_dir(target, overwrite=True)
    with pytest.raises(ValueError, match="refusing to replace"):
        with staged_output_dir(target, overwrite=True) as stage:
            (stage / "new.txt").write_text("x")
    assert (work / "a.txt").read_text() == "keep"


def test_overwrite_refuses_the_input_folder_and_its_parent(tmp_path):
    model = tmp_path / "models" / "m"
    _fill(model, "weights")
    for out in (model, model.parent):
        with pytest.raises(ValueError, match="input"):
            check_output_dir(out, overwrite=True, inputs=[model])
    assert (model / "a.txt").read_text() == "weights"


def test_output_checks_file_full_folder_and_permission(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        check_output_dir(tmp_path / "file")
    with pytest.raises(NotADirectoryError, match="is a file"):
        check_output_dir(tmp_path / "file" / "sub")
    _fill(tmp_path / "full", "x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        check_output_dir(tmp_path / "full")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: permissions are not enforced")
        with pytest.raises(PermissionError, match="cannot write") as info:
            check_output_dir(locked / "out")
        assert isinstance(info.value, ValueError)  # one line in the CLI, like every user error
    finally:
        locked.chmod(0o700)
    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"


def test_staged_output_replaces_only_when_complete(tmp_path):
    out = tmp_path / "out"
    _fill(out, "old")
    with pytest.raises(RuntimeError):
        with staged_output_dir(out, overwrite=True) as stage:
            (stage / "a.txt").write_text("half")
            assert (out / "a.txt").read_text() == "old"  # untouched while the new one is written
            raise RuntimeError("crash mid-save")
    assert (out / "a.txt").read_text() == "old"
    assert not [p for p in tmp_path.iterdir() if PARTIAL_MARK in p.name]
    dead = tmp_path / f".out{PARTIAL_MARK}999999999-abc"  # left by a killed save (no such pid)
    dead.mkdir()
    with staged_output_dir(out, overwrite=True) as stage:
        (stage / "b.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    mask = os.umask(0o022)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~mask  # not mkdtemp's private 0o700


@pytest.mark.parametrize("exchange", [True, False])
def test_staged_swap_with_and_without_rename_exchange(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setenv("SLIMFORMER_NO_EXCHANGE", "1")
    out = tmp_path / "out"
    _fill(out, "old")
    with staged_output_dir(out, overwrite=True) as stage:
        (stage / "a.txt").write_text("new")
    assert (out / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_write_uses_a_private_temp_name(tmp_path):
    path = tmp_path / "t.json"
    atomic_write_text(path, "1")
    atomic_write_text(path, "2")
    assert path.read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]


def _hold_lock(path: str, log: str, hold: float) -> None:
    with file_lock(path):
        with open(log, "a") as f:
            f.write(f"start {os.getpid()}\n")
        time.sleep(hold)
        with open(log, "a") as f:
            f.write(f"end {os.getpid()}\n")


def test_file_lock_serialises_processes(tmp_path):
    lock, log = str(tmp_path / "x.lock"), str(tmp_path / "log")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hold_lock, args=(lock, log, 0.3)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    events = [line.split()[0] for line in Path(log).read_text().splitlines()]
    assert events == ["start", "end", "start", "end"]  # never two holders at once
    with file_lock(lock), pytest.raises(TimeoutError, match="could not lock"):
        with file_lock(lock, timeout=0.2):
            pass


# ---------------------------------------------------------------- killing `slimformer prune` mid-save


def _tree_hash(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# (pause point, signal, replace a previous folder, expected state of --out afterwards)
KILLS = [
    ("save:weights", signal.SIGKILL, False, "absent"),
    ("save:weights", signal.SIGINT, True, "previous"),
    ("stage:complete", signal.SIGKILL, True, "previous"),
    ("swap:done", signal.SIGKILL, True, "new"),
]


def test_kill_between_fallback_renames_keeps_the_previous_folder_whole(tmp_path, monkeypatch):
    """Without an atomic exchange, a death between the two renames leaves the old output set aside, whole."""
    import slimformer.fsutil as fsutil

    def die(name: str) -> None:
        if name == "swap:between":
            raise KeyboardInterrupt

    monkeypatch.setenv("SLIMFORMER_NO_EXCHANGE", "1")
    monkeypatch.setattr(fsutil, "pause_point", die)
    out = tmp_path / "out"
    _fill(out, "old")
    with pytest.raises(KeyboardInterrupt):
        with staged_output_dir(out, overwrite=True) as stage:
            (stage / "a.txt").write_text("new")
    assert not out.exists()
    (aside,) = tmp_path.glob(".out.replaced-*")
    assert (aside / "old" / "a.txt").read_text() == "old"


def test_killed_prune_leaves_no_partial_output(tmp_path, tiny_tokenizer):
    """SIGKILL / SIGINT at points of `prune`'s save: --out is absent, the previous folder, or complete."""
    from typer.testing import CliRunner

    from conftest import make_inputs, make_tiny_model
    from slimformer.cli import app
    from slimformer.export import save_model
    from slimformer.models import load_model

    model = save_model(make_tiny_model("bert", num_labels=2), tiny_tokenizer, tmp_path / "model")
    task = tmp_path / "task.csv"
    task.write_text("text,label\n" + "".join(f"{'good fun' if i % 2 else 'bad dull'} {i},{i % 2}\n" for i in range(40)))
    args = ["prune", str(model), "--task", str(task), "--method", "magnitude", "--budget", "params=0.9"]
    args += ["--calibration", "8"]
    done = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "reference")])
    assert done.exit_code == 0, done.output
    reference = _tree_hash(tmp_path / "reference")
    previous = tmp_path / "previous"
    shutil.copytree(model, previous)
    (previous / "marker.txt").write_text("the user's previous output\n")
    before = _tree_hash(previous)

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "HF_HUB_OFFLINE": "1"}
    env["SLIMFORMER_TEST_PAUSE_S"] = "120"
    runs = []
    for i, (point, _, replace, _) in enumerate(KILLS):
        out = tmp_path / f"out{i}"
        if replace:
            shutil.copytree(previous, out)
        flag = tmp_path / f"paused{i}"
        run_env = {**env, "SLIMFORMER_TEST_PAUSE": point, "SLIMFORMER_TEST_PAUSE_FILE": str(flag)}
        cmd = [sys.executable, "-c", "from slimformer.cli import main; main()", *args, "--out", str(out)]
        cmd += ["--overwrite"] if replace else []
        runs.append((subprocess.Popen(cmd, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT), flag))
    for (proc, flag), (point, sig, *_) in zip(runs, KILLS, strict=True):
        deadline = time.monotonic() + 240
        while not flag.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert flag.exists(), (point, proc.poll(), proc.stdout.read().decode()[-2000:] if proc.poll() else "")
        proc.send_signal(sig)
        proc.wait(60)
        assert proc.returncode != 0, point

    inputs = make_inputs(batch=2, seq=7)
    expected = load_model(str(tmp_path / "reference"))[0](**inputs).logits
    for i, (point, sig, _, want) in enumerate(KILLS):
        out, case = tmp_path / f"out{i}", f"{point} {sig.name}"
        if want == "absent":
            assert not out.exists(), case
        elif want == "previous":
            assert _tree_hash(out) == before, case
        else:
            assert _tree_hash(out).keys() == reference.keys(), case
            torch.testing.assert_close(load_model(str(out))[0](**inputs).logits, expected, rtol=0, atol=0)


def test_finetune_cached_holds_a_lock_while_training(tmp_path, monkeypatch):
    """A second caller of the same job waits for the first, then reuses its folder instead of training again."""
    import fcntl

    import slimformer.models
    import slimformer.train
    from slimformer.pipeline import finetune_cached
    from slimformer.train import FinetuneConfig

    monkeypatch.setenv("SLIMFORMER_CACHE", str(tmp_path))
    task = types.SimpleNamespace(name="t", content_hash="h", label_names=["a", "b"])
    seen = []

    def fake_finetune(model, tokenizer, task, config, folder, **kwargs):
        lock = Path(folder).with_name(Path(folder).name + ".lock")
        fd = os.open(lock, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):  # someone (this call's caller) holds it
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        Path(folder).mkdir(parents=True)
        for name in ("finetune_report.json", "config.json"):
            (Path(folder) / name).write_text("{}")
        seen.append(folder)

    monkeypatch.setattr(slimformer.models, "load_model", lambda *a, **k: (None, None))
    monkeypatch.setattr(slimformer.train, "finetune", fake_finetune)
    folder, reused = finetune_cached("m", task, FinetuneConfig(), progress=False)
    assert not reused and seen == [folder]
    assert finetune_cached("m", task, FinetuneConfig(), progress=False) == (folder, True)
    assert len(seen) == 1
