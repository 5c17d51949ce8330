"""Every benchmark script runs end to end with ``--smoke`` (tiny random model, a few examples).

The scripts are run in this process (their ``main(argv)``), so torch and transformers are imported
once; each must write its results JSON, with the environment, and its markdown report.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
#: Modules in benchmarks/ that are not benchmarks.
NOT_BENCHMARKS = {"harness", "render_results", "render_tables", "render_studies", "render_headline", "render_features"}
#: Scripts that need an optional package: skipped where it is not installed.
NEEDS = {"torch_pruning_baseline": "torch_pruning"}
SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py") if p.stem not in NOT_BENCHMARKS)


def _load(name: str):
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_script_is_listed():
    assert len(SCRIPTS) >= 15, SCRIPTS


@pytest.mark.parametrize("name", SCRIPTS)
def test_smoke_run_writes_results(name, tmp_path, monkeypatch):
    if name in NEEDS:
        pytest.importorskip(NEEDS[name])
    monkeypatch.setenv("SLIMFORMER_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "results" / f"{name}.json"
    code = _load(name).main(["--smoke", "--out", str(out)])
    assert code == 0
    written = sorted(p.name for p in out.parent.glob("*.json"))
    assert written, f"{name} wrote no results JSON under {out.parent}"
    for path in out.parent.glob("*.json"):
        report = json.loads(path.read_text())
        env = report["environment"]
        for key in ("python", "torch", "transformers", "processor", "logical_cores", "torch_threads", "datetime_utc"):
            assert env.get(key) is not None, f"{path.name}: environment lacks {key}"
        assert "git_commit" in env
        md = path.with_suffix(".md")
        assert md.is_file() and "Smoke run" in md.read_text(), f"{md.name} missing or not marked as a smoke run"
