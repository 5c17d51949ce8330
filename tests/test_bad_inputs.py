"""Every bad input of issue 19, run as a user would meet it, with the error (or outcome) it gets.

``python tests/test_bad_inputs.py > docs/bad_inputs.md`` regenerates the table in the docs from
the same list the test runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # conftest, when run as a script
from conftest import WORDS, make_tiny_model  # noqa: E402


@dataclass(frozen=True)
class BadInput:
    """One bad input: ``run(tmp)`` either raises ``error`` or returns an outcome; ``match`` is a regex on it."""

    item: str
    what: str
    run: Callable[[Path], str | None]
    error: type[BaseException] | None
    match: str


# ---------------------------------------------------------------- helpers


def _tokenizer(tmp: Path):
    from transformers import BertTokenizerFast

    (tmp / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return BertTokenizerFast(vocab=str(tmp / "vocab.txt"), do_lower_case=True)


def _model_dir(tmp: Path, name: str = "model", *, labels: tuple[str, ...] = ("neg", "pos")) -> Path:
    from slimformer.export import save_model

    model = make_tiny_model("bert", num_labels=len(labels))
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {n: i for i, n in enumerate(labels)}
    return save_model(model, _tokenizer(tmp), tmp / name)


def _save_into(tmp: Path, out, *, cwd: Path | None = None, home: Path | None = None, overwrite: bool = True):
    from slimformer.export import save_model
    from slimformer.models import load_model

    model_dir = _model_dir(tmp)
    model, tok = load_model(str(model_dir))
    with _chdir(cwd or tmp), _env("HOME", str(home) if home else os.environ.get("HOME", "")):
        save_model(model, tok, out, overwrite=overwrite, inputs=[model_dir])


@contextlib.contextmanager
def _chdir(path: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


@contextlib.contextmanager
def _env(key: str, value: str) -> Iterator[None]:
    old = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[key]
        else:
            os.environ[key] = old


def _csv(tmp: Path, lines: list[str], name: str = "task.csv") -> str:
    path = tmp / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _rows(n: int = 10, pos: str = "pos", neg: str = "neg") -> list[str]:
    return [f"good fun movie {i},{pos}" if i % 2 else f"bad dull film {i},{neg}" for i in range(2 * n)]


def _load_task(path: str, **kw):
    from slimformer.data import load_task

    return load_task(path, **kw)


# ---------------------------------------------------------------- the cases


def _cwd_overwrite(tmp: Path):
    _save_into(tmp, ".", cwd=tmp)


def _parent_overwrite(tmp: Path):
    (tmp / "sub").mkdir()
    _save_into(tmp, "..", cwd=tmp / "sub")


def _home_overwrite(tmp: Path):
    (tmp / "home").mkdir()
    (tmp / "home" / "notes.txt").write_text("mine")
    _save_into(tmp, tmp / "home", home=tmp / "home")


def _input_overwrite(tmp: Path):
    from slimformer.export import save_model
    from slimformer.models import load_model

    model, tok = load_model(str(_model_dir(tmp)))
    save_model(model, tok, tmp / "model", overwrite=True)  # no inputs=: the loaded-from folder is known


def _crash_mid_save(tmp: Path) -> str:
    from slimformer.export import save_model

    out = _model_dir(tmp, "out")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    class Broken:
        def save_pretrained(self, folder):
            raise OSError("disk full")

    with contextlib.suppress(OSError):
        save_model(make_tiny_model("bert", num_labels=2), Broken(), out, overwrite=True)
    intact = {p.name: p.read_bytes() for p in out.iterdir()} == before
    return f"the save fails (OSError); the previous folder is {'intact' if intact else 'DAMAGED'}"


def _broken_config(text: str) -> Callable[[Path], None]:
    def run(tmp: Path) -> None:
        from slimformer.models import load_model

        folder = _model_dir(tmp)
        (folder / "config.json").write_text(text)
        load_model(str(folder))

    return run


def _no_tokenizer(tmp: Path) -> None:
    from slimformer.models import load_model

    folder = _model_dir(tmp)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    load_model(str(folder))


def _reversed_labels(tmp: Path) -> str:
    from slimformer.data import align_labels
    from slimformer.models import load_model, model_label_names

    model, _ = load_model(str(_model_dir(tmp, labels=("pos", "neg"))))  # sorted order would be neg, pos
    task = align_labels(_load_task(_csv(tmp, ["text,label", *_rows()])), model_label_names(model.config))
    right = all(("good" in e.text) == (task.label_names[e.label] == "pos") for e in task.split("all"))
    return f"labels follow the model's id2label {task.label_names}: {'every' if right else 'NOT every'} row right"


def _unknown_label(tmp: Path) -> None:
    from slimformer.data import align_labels

    align_labels(_load_task(_csv(tmp, ["text,label", *_rows(pos="great")])), ["neg", "pos"])


def _own_test_file(tmp: Path) -> str:
    train = _csv(tmp, ["text,label", *_rows(10)], "train.csv")
    test = _csv(tmp, ["text,label", *_rows(3)], "test.csv")
    task = _load_task(train, test_file=test)
    return f"test split = the test file as given ({len(task.split('test'))} rows); split 'all' = every row"


def _labels_01_and_1(tmp: Path) -> str:
    task = _load_task(_csv(tmp, ["text,label", *_rows(10, pos="1", neg="01")]))
    return f"two labels kept apart: {task.label_names}"


def _out_is_file(tmp: Path) -> None:
    from slimformer.fsutil import check_output_dir

    (tmp / "out").write_text("x")
    check_output_dir(tmp / "out")


def _out_under_file(tmp: Path) -> None:
    from slimformer.fsutil import check_output_dir

    (tmp / "out").write_text("x")
    check_output_dir(tmp / "out" / "model")


def _missing_model(name: str) -> Callable[[Path], None]:
    def run(tmp: Path) -> None:
        import huggingface_hub.constants

        from slimformer.models import load_model

        old, huggingface_hub.constants.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE, True
        try:
            with _chdir(tmp):
                load_model(name)
        finally:
            huggingface_hub.constants.HF_HUB_OFFLINE = old

    return run


def _noisy_latency_table(tmp: Path) -> str:
    from slimformer.latency import LatencyTable, _cache_if_steady
    from slimformer.structure import Structure

    dims = Structure.from_model(make_tiny_model("bert")).dims
    table = LatencyTable(
        dims=dims,
        batch_size=1,
        seq_len=8,
        heads=(0, dims.num_heads),
        ffn=(0, dims.ffn),
        layer_ms=((1, 2), (3, 4)),
        fixed_ms=1,
        info={"spread": 0.9},
    )
    saved = _cache_if_steady(table, tmp / "t.json")
    return f"table used for this run but {'cached' if saved else 'not cached'} (repeat spread 90% > 35%)"


def _corrupt_latency_cache(tmp: Path) -> str:
    from slimformer.latency import _cached_table

    (tmp / "t.json").write_text('{"format": 1, "dims"')
    return "ignored with a warning and measured again" if _cached_table(tmp / "t.json") is None else "USED"


def _corrupt_random_states(tmp: Path) -> None:
    from slimformer.checkpoints import check_rng_states as _check_rng_states

    (tmp / "epoch-1").mkdir()
    (tmp / "epoch-1" / "random_states_0.pkl").write_bytes(b"\x80\x04garbage")
    _check_rng_states(tmp / "epoch-1")


def _stale_auto_map(tmp: Path) -> str:
    from slimformer.export import save_model
    from slimformer.models import load_model

    folder = _model_dir(tmp)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_custom.Custom"}
    (folder / "config.json").write_text(json.dumps(config))
    model, tok = load_model(str(folder))
    out = save_model(model, tok, tmp / "out")
    return f"dropped: auto_map in the output = {json.loads((out / 'config.json').read_text()).get('auto_map')}"


REFUSE = "refusing to replace"
CASES = [
    BadInput("1", "`--out . --overwrite`, the cwd holding the input model", _cwd_overwrite, ValueError, REFUSE),
    BadInput("1", "`--out .. --overwrite` (an ancestor of the cwd)", _parent_overwrite, ValueError, REFUSE),
    BadInput("1", "`--out ~ --overwrite` (the home folder)", _home_overwrite, ValueError, REFUSE),
    BadInput("1", "`--out MODEL --overwrite` (the input model's folder)", _input_overwrite, ValueError, "input"),
    BadInput("2", "a crash in the middle of a save under `--overwrite`", _crash_mid_save, None, "is intact"),
    BadInput(
        "2", "model folder whose config.json is 0 bytes", _broken_config(""), ValueError, r"config\.json is empty"
    ),
    BadInput("2", "model folder with invalid config.json", _broken_config("{"), ValueError, "not valid JSON"),
    BadInput("3", "model folder without tokenizer files", _no_tokenizer, FileNotFoundError, "no tokenizer files"),
    BadInput("4", "file labels sorting the other way than the model's id2label", _reversed_labels, None, "every row"),
    BadInput("4", "a task label the model does not know", _unknown_label, ValueError, "'great' that the model"),
    BadInput("5", "own test file (`test_file=`)", _own_test_file, None, r"as given \(6 rows\)"),
    BadInput(
        "6",
        "CSV row with an unquoted comma (`nice, fun film,pos`)",
        lambda t: _load_task(_csv(t, ["text,label", *_rows(), "nice, fun film,pos"])),
        ValueError,
        r"line 22: 3 fields but the header has 2",
    ),
    BadInput(
        "6",
        "CSV with a duplicate header",
        lambda t: _load_task(_csv(t, ["text,label,text", "a,pos,b"])),
        ValueError,
        "duplicate column",
    ),
    BadInput(
        "6",
        "CSV row with fewer fields than the header",
        lambda t: _load_task(_csv(t, ["text,label", *_rows(), "no label here"])),
        ValueError,
        r"line 22: 1 fields",
    ),
    BadInput("6", "labels `01` and `1` in one file", _labels_01_and_1, None, r"\['1', '01'\]|\['01', '1'\]"),
    BadInput("7", "`--out` is an existing file", _out_is_file, NotADirectoryError, "is a file"),
    BadInput("7", "`--out` below a file", _out_under_file, NotADirectoryError, "is a file"),
    BadInput("7", "model `./nosuchdir`", _missing_model("./nosuchdir"), FileNotFoundError, "nor an existing folder"),
    BadInput("7", "model `nosuchdir` (offline hub)", _missing_model("nosuchdir"), FileNotFoundError, "hub could not"),
    BadInput("8", "latency table whose repeat timings disagree", _noisy_latency_table, None, "not cached"),
    BadInput("8", "half-written latency cache file", _corrupt_latency_cache, None, "ignored"),
    BadInput("8", "corrupt `random_states_0.pkl` on resume", _corrupt_random_states, ValueError, "is corrupt"),
    BadInput("9", "input model with an `auto_map` whose code file is missing", _stale_auto_map, None, "= None"),
]


def outcome(case: BadInput, tmp: Path) -> tuple[str, str]:
    """Run one case; return (error type or "ok", message or outcome) with the temp folder hidden."""
    try:
        result = case.run(tmp)
        kind, text = "ok", str(result)
    except Exception as e:  # noqa: BLE001 -- the table records whatever comes out
        kind, text = type(e).__name__, str(e)
    return kind, re.sub(re.escape(str(tmp.resolve())) + r"|" + re.escape(str(tmp)), "…", text)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.item}-{i}" for i, c in enumerate(CASES)])
def test_bad_input(case, tmp_path):
    kind, text = outcome(case, tmp_path)
    assert kind == (case.error.__name__ if case.error else "ok"), text
    assert re.search(case.match, text), text
    assert "\n" not in text.strip()  # one line, no traceback


def markdown() -> str:
    """The table of docs/bad_inputs.md, from running every case."""
    lines = [
        "# Bad inputs and what slimformer does with them",
        "",
        "Generated by `python tests/test_bad_inputs.py > docs/bad_inputs.md` from the cases that",
        "`tests/test_bad_inputs.py` runs (issue 19; the item column is the issue's numbered list). "
        "Paths inside the test's temporary folder show as `…`.",
        "",
        "| item | bad input | error | message / outcome |",
        "|---|---|---|---|",
    ]
    for case in CASES:
        with tempfile.TemporaryDirectory() as d:
            kind, text = outcome(case, Path(d))
        lines.append(f"| {case.item} | {case.what} | {kind} | {text.replace('|', '/')} |")
    return "\n".join(lines + ["", *_kill_section()]) + "\n"


def _kill_section() -> list[str]:
    from test_safety import KILLS

    lines = [
        "## Interrupted saves",
        "",
        "`tests/test_safety.py::test_killed_prune_leaves_no_partial_output` runs `slimformer prune` in",
        "subprocesses, stops each at one point of its save (`SLIMFORMER_TEST_PAUSE`) and kills it there.",
        "Every save writes a hidden sibling `.<out>.partial-*` folder and renames it into place only when",
        "complete (on Linux one atomic `renameat2(RENAME_EXCHANGE)` swaps it with a previous folder).",
        "",
        "| kill point | signal | previous folder under --overwrite | --out afterwards |",
        "|---|---|---|---|",
    ]
    for point, sig, replace, want in KILLS:
        state = {"absent": "absent", "previous": "the previous folder, byte for byte"}.get(
            want, "the new model, complete, loading with identical logits"
        )
        lines.append(f"| {point} | {sig.name} | {'yes' if replace else 'no'} | {state} |")
    lines.append(
        "| swap:between (two-rename fallback) | exception | yes | absent; the previous folder whole in "
        "`.<out>.replaced-*/old` |"
    )
    return lines


if __name__ == "__main__":
    import logging

    logging.disable(logging.WARNING)
    sys.stdout.write(markdown())
