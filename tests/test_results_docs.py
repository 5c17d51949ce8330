"""The results pages and the README's headline table are what benchmarks/render_results.py makes now.

So a figure in docs/results/ or the README cannot drift from its file in benchmarks/results/: after a
benchmark run (or an edit of a page), run ``python benchmarks/render_results.py`` and commit.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import render_results  # noqa: E402


def test_committed_pages_equal_what_the_script_generates():
    stale = render_results.stale(render_results.render_all())
    names = [str(p.relative_to(ROOT)) for p in stale]
    assert not stale, f"out of date (run python benchmarks/render_results.py and commit): {names}"


def test_every_results_file_has_a_page():
    used = {stem for page in render_results.PAGES for stem in page.sources}
    files = {p.stem for p in render_results.RESULTS.glob("*.json")}
    assert files - used == set(), f"results files on no page: {sorted(files - used)}"


def test_readme_is_short_and_holds_the_headline():
    text = render_results.README.read_text()
    assert len(text.splitlines()) <= 300
    assert text.count(render_results.START) == 1 and text.count(render_results.END) == 1
    head = text.split(render_results.START)[1].split(render_results.END)[0]
    for page in ("dense_baseline", "prune_budgets", "onnx_export", "skim", "early_exit"):
        assert f"docs/results/{page}.md" in head


def test_a_changed_figure_changes_its_page(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(render_results.RESULTS, results)
    path = results / "dense_baseline.json"
    report = json.loads(path.read_text())
    page = render_results.PAGES[0]
    before = render_results.render_page(page, page.load(results))
    assert "0.8369" in before
    report["rows"][0]["accuracy"] = 0.5123
    path.write_text(json.dumps(report))
    after = render_results.render_page(page, page.load(results))
    assert after != before and "0.5123" in after


def test_the_readme_must_keep_its_markers(tmp_path):
    with pytest.raises(ValueError, match="headline:start"):
        render_results.with_headline("# no markers here\n", ["| a |"])
    text = render_results.with_headline(f"x\n{render_results.START}\nold\n{render_results.END}\ny\n", ["| new |"])
    assert "old" not in text and "| new |" in text and text.endswith("y\n")


def test_a_missing_results_file_is_named(tmp_path):
    page = render_results.Page("p", "P", "p.py", ("not_there",))
    with pytest.raises(FileNotFoundError, match="not_there.json"):
        page.load(tmp_path)
