"""Token-classification data and metrics, scoring per task kind, and reranker metrics."""

import json

import pytest
import torch

from conftest import make_tiny_model
from slimformer.arch import get_adapter
from slimformer.export import save_model
from slimformer.pair_eval import ranking_metrics
from slimformer.static import METHODS, PruneConfig, prune
from slimformer.static.optin import gauss_newton, masking_terms, pack_examples, score_optin
from slimformer.static.output_loss import OutputLoss
from slimformer.surgery import masked
from slimformer.token_data import (
    IGNORE,
    TokenExample,
    align_tags,
    calibration_token_batches,
    load_token_task,
    read_conll,
    token_batches,
)
from slimformer.token_eval import entity_spans, evaluate_tokens, span_f1
from test_task_kinds import make_tiny_token_model

CONLL = "-DOCSTART- O\n\nthe O\nfilm B-work\nplot I-work\nwas O\n\ngood B-per\nactor O\nfun B-loc\nfun I-loc\n"


def test_conll_reader_splits_sentences_and_names_bad_lines(tmp_path):
    f = tmp_path / "a.conll"
    f.write_text(CONLL)
    assert read_conll(f) == [
        (["the", "film", "plot", "was"], ["O", "B-work", "I-work", "O"]),
        (["good", "actor", "fun", "fun"], ["B-per", "O", "B-loc", "I-loc"]),
    ]
    f.write_text("the O\nfilm\n")
    with pytest.raises(ValueError, match=r"a.conll:2: expected 'token tag'"):
        read_conll(f)


def test_jsonl_and_conll_give_the_same_task_and_unknown_tags_are_refused(tmp_path):
    (tmp_path / "a.conll").write_text(CONLL)
    rows = [{"tokens": w, "tags": t} for w, t in read_conll(tmp_path / "a.conll")]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    a, b = load_token_task(str(tmp_path / "a.conll")), load_token_task(str(tmp_path / "a.jsonl"))
    assert a.label_names == b.label_names and a.label_names[0] == "O"
    assert a.splits == b.splits and sum(len(v) for v in a.splits.values()) == 2
    with pytest.raises(ValueError, match=r"tags \['B-loc', 'I-loc'\] are not among"):
        load_token_task(str(tmp_path / "a.conll"), label_names=["O", "B-per", "B-work", "I-work"])


def test_first_subword_carries_the_tag(tiny_tokenizer):
    assert align_tags([None, 0, 0, 1, None], (3, 4)) == [IGNORE, 3, IGNORE, 4, IGNORE]
    ex = [TokenExample(("the", "movie", "funny"), (0, 1, 2)), TokenExample(("plot",), (1,))]
    (batch,) = token_batches(ex, tiny_tokenizer)
    assert batch["labels"].shape == batch["input_ids"].shape
    assert batch["labels"][0].tolist() == [IGNORE, 0, 1, 2, IGNORE]
    assert batch["labels"][1].tolist() == [IGNORE, 1, IGNORE, IGNORE, IGNORE]  # special token, then padding


def test_entity_spans_are_strict():
    assert entity_spans(["B-a", "I-a", "O", "I-b", "B-b", "I-a"]) == {
        ("a", 0, 2),
        ("b", 3, 4),
        ("b", 4, 5),
        ("a", 5, 6),
    }
    gold = [["B-a", "I-a", "O", "B-b"]]
    assert span_f1(gold, gold)["entity_f1"] == 1.0
    half = span_f1(gold, [["B-a", "O", "O", "B-b"]])  # a truncated span is wrong, not half right
    assert half["entity_precision"] == 0.5 and half["entity_recall"] == 0.5
    assert half["per_type_f1"] == {"a": 0.0, "b": 1.0}


def test_evaluate_tokens_reads_each_word_from_its_first_subword(tiny_tokenizer):
    model = make_tiny_token_model("bert", num_labels=3)
    names = ["O", "B-x", "I-x"]
    examples = [TokenExample(("the", "movie", "was", "funny"), (0, 1, 2, 0))]
    first = model.classifier.bias
    with torch.no_grad():  # make the head predict B-x everywhere
        model.classifier.weight.zero_()
        first.copy_(torch.tensor([0.0, 5.0, 0.0]))
    got = evaluate_tokens(model, tiny_tokenizer, examples, names)
    assert got["accuracy"] == 0.25 and got["entity_f1"] == 0.0 and got["words"] == 4


def token_calibration(tiny_tokenizer, n=6):
    g = torch.Generator().manual_seed(0)
    words = "the a movie film good bad great plot actor scene".split()
    ex = [
        TokenExample(
            tuple(words[i] for i in torch.randint(0, 10, (3 + k % 4,), generator=g).tolist()), (0,) * (3 + k % 4)
        )
        for k in range(n)
    ]
    return calibration_token_batches(ex, tiny_tokenizer, size=n, batch_size=4)


def test_token_damage_is_the_mean_kl_over_real_tokens(tiny_tokenizer):
    model = make_tiny_token_model("roberta")
    batches = pack_examples(token_calibration(tiny_tokenizer), batch_size=8, pad_id=1)
    terms = masking_terms(model, batches, [("head", 1, 2)], progress=False)
    adapter, (batch,) = get_adapter(model), batches
    with torch.no_grad():
        dense = adapter.forward(model, batch["input_ids"], batch["attention_mask"])
    head = [torch.ones(4) for _ in range(3)]
    head[1][2] = 0.0
    with torch.no_grad(), masked(model, head, None):
        out = adapter.forward(model, batch["input_ids"], batch["attention_mask"])
    keep = batch["attention_mask"].bool()
    kl = torch.nn.functional.kl_div(out.log_softmax(-1), dense.log_softmax(-1), log_target=True, reduction="none")
    want = torch.stack([kl[b][keep[b]].sum(-1).mean() for b in range(len(keep))])
    torch.testing.assert_close(terms.kl[0].float(), want.float(), atol=1e-6, rtol=1e-4)
    assert float(want.min()) > 0


def test_one_logit_damage_is_squared_error_not_a_constant_softmax():
    model = make_tiny_model("bert", num_labels=1)
    loss = OutputLoss.of(model)
    assert (loss.kind, loss.single) == ("mse", True)
    dense, out = torch.tensor([[1.0], [2.0]]), torch.tensor([[1.5], [2.0]])
    torch.testing.assert_close(loss.damage(dense, out, None), torch.tensor([0.125, 0.0], dtype=torch.float64))
    assert OutputLoss.of(make_tiny_token_model("bert")).kind == "token"


@pytest.mark.parametrize("num_labels", [1, 4])
def test_gauss_newton_matches_small_masks_on_token_models(tiny_tokenizer, monkeypatch, num_labels):
    """D(1 - eps e_i) ~ eps^2 * score_i: the estimate targets the same per-token loss as exact masking."""
    monkeypatch.setattr("slimformer.static.output_loss.OUTPUT_PROBES", 400)
    model = make_tiny_token_model("bert", num_labels=num_labels)
    batches = pack_examples(token_calibration(tiny_tokenizer, 4), batch_size=4)
    heads, _ = gauss_newton(model, batches, norms=torch.ones(3), trajectory_weight=0.0, progress=False)
    adapter, (batch,) = get_adapter(model), batches
    loss, eps = OutputLoss.of(model), 1e-2
    with torch.no_grad():
        dense = adapter.forward(model, batch["input_ids"], batch["attention_mask"])
    exact = []
    for h in range(4):
        mask = [torch.ones(4) for _ in range(3)]
        mask[1][h] = 1 - eps
        with torch.no_grad(), masked(model, mask, None):
            out = adapter.forward(model, batch["input_ids"], batch["attention_mask"])
        exact.append(float(loss.damage(dense, out, batch["attention_mask"]).mean()) / eps**2)
    torch.testing.assert_close(heads[1].double(), torch.tensor(exact, dtype=torch.float64), rtol=0.25, atol=1e-7)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_pruner_runs_on_a_token_classifier(method, tiny_tokenizer):
    model = make_tiny_token_model("distilbert")
    config = PruneConfig.from_dict({"method": method, "budget": "macs=0.6", "repair": False})
    result = prune(model, config, token_calibration(tiny_tokenizer), progress=False)
    assert result.report["relative"]["macs"] <= 0.6 + 1e-9
    assert (
        result.model(**{k: v for k, v in token_calibration(tiny_tokenizer)[0].items() if k != "labels"}).logits.dim()
        == 3
    )


def test_optin_scores_a_reranker():
    model = make_tiny_model("electra", num_labels=1)
    ids = torch.randint(5, 99, (4, 6))
    importance = score_optin(model, [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}], progress=False)
    assert all(float(h.sum()) > 0 for h in importance.heads)  # a softmax KL would be 0 everywhere


def test_ranking_metrics_over_query_groups():
    scores, rel, groups = [0.9, 0.8, 0.1, 0.3, 0.7, 0.5], [0, 1, 0, 1, 0, 0], ["q1", "q1", "q1", "q2", "q2", "q3"]
    got = ranking_metrics(scores, rel, groups)
    assert got["groups"] == 2  # q3 has no relevant candidate
    assert got["mrr@10"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert 0 < got["ndcg@10"] < 1
    assert ranking_metrics([0.9, 0.1], [1, 0], ["q", "q"])["ndcg@10"] == 1.0
    with pytest.raises(ValueError, match="no query group has a relevant candidate"):
        ranking_metrics([0.1], [0], ["q"])


# ---- the CLI on token and reranker models


def cli(*args):
    from typer.testing import CliRunner

    from slimformer.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def conll_task(tmp_path, n=30):
    g = torch.Generator().manual_seed(1)
    words, tags = "the a movie film good bad great plot actor scene".split(), ["O", "B-x", "I-x"]
    lines = []
    for _ in range(n):
        k = int(torch.randint(3, 7, (1,), generator=g))
        lines += [
            f"{words[int(i)]} {tags[int(j)]}"
            for i, j in zip(
                torch.randint(0, 10, (k,), generator=g), torch.randint(0, 3, (k,), generator=g), strict=False
            )
        ]
        lines.append("")
    (tmp_path / "t.conll").write_text("\n".join(lines) + "\n")
    return tmp_path / "t.conll"


def test_cli_info_prune_evaluate_on_a_token_classifier(tmp_path, tiny_tokenizer):
    model = make_tiny_token_model("bert", num_labels=3)
    model.config.id2label, model.config.label2id = {0: "O", 1: "B-x", 2: "I-x"}, {"O": 0, "B-x": 1, "I-x": 2}
    folder = save_model(model, tiny_tokenizer, tmp_path / "tok")
    task = conll_task(tmp_path)
    info = cli("info", folder, "--json")
    assert info.exit_code == 0, info.output
    assert json.loads(info.output)["kind"] == "token"
    assert "wnut16" in json.loads(cli("list", "--json").output)["token_tasks"]
    out = cli(
        "prune", folder, "--out", tmp_path / "p", "--task", task, "--budget", "macs=0.6", "--evaluate", "test", "--json"
    )
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["kind"] == "token" and report["relative"]["macs"] <= 0.6 and "entity_f1" in report["metrics"]
    ev = cli("evaluate", tmp_path / "p", "--task", task, "--json")
    assert ev.exit_code == 0, ev.output
    assert json.loads(ev.output)["entity_f1"] == pytest.approx(report["metrics"]["entity_f1"])
    bad = cli("evaluate", tmp_path / "p", "--task", "rotten_tomatoes")
    assert bad.exit_code != 0 and "neither a built-in token task (wnut16) nor a CoNLL / JSONL file" in bad.output


def test_cli_evaluates_a_reranker_by_mrr_and_refuses_non_grade_labels(tmp_path, tiny_tokenizer):
    folder = save_model(make_tiny_model("bert", num_labels=1), tiny_tokenizer, tmp_path / "rr")
    rows = ["query,doc,label"] + [
        f"q{i % 5} movie,doc {w},{int(j % 3 == 0)}"
        for i, (j, w) in enumerate(zip(range(40), "good bad great plot".split() * 10, strict=False))
    ]
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    args = (
        "evaluate",
        folder,
        "--task",
        tmp_path / "pairs.csv",
        "--text-column",
        "query",
        "--text-pair-column",
        "doc",
        "--split",
        "all",
        "--json",
    )
    out = cli(*args)
    assert out.exit_code == 0, out.output
    got = json.loads(out.output)
    assert set(got) >= {"mrr@10", "ndcg@10", "groups"} and got["groups"] == 5
    (tmp_path / "pairs.csv").write_text("\n".join(r.replace(",1", ",yes").replace(",0", ",no") for r in rows) + "\n")
    bad = cli(*args)
    assert bad.exit_code != 0 and "relevance grades" in bad.output


@pytest.mark.parametrize("command", [("skim", "train"), ("exit", "train"), ("axformer",)])
def test_sequence_only_commands_refuse_token_classifiers_saying_why(command, tmp_path, tiny_tokenizer):
    folder = save_model(make_tiny_token_model("bert", num_labels=3), tiny_tokenizer, tmp_path / "tok")
    out = cli(*command, folder, "--out", tmp_path / "o")
    assert out.exit_code != 0 and "is a token classifier: this command needs sequence-level outputs" in out.output
