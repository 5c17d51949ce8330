"""predict / metrics_from_logits / evaluate on crafted logits and a tiny random BERT."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_model
from slimformer.data import Example
from slimformer.evaluate import evaluate, metrics_from_logits, predict, shard_for_process


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer):
    return tiny_tokenizer


def one_hot_logits(preds: list[int], num_labels: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(preds), num_labels).float() * 3.0 - 1.0


def test_binary_metrics_match_hand_computed():
    y_true = [0, 0, 1, 1, 1, 0]
    y_pred = [0, 1, 1, 1, 0, 0]  # TP=2 FP=1 FN=1 TN=2
    m = metrics_from_logits(one_hot_logits(y_pred, 2), torch.tensor(y_true), 2)
    assert set(m) == {"accuracy", "f1_macro", "mcc", "n"}
    assert m["n"] == 6 and isinstance(m["n"], int)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["f1_macro"] == pytest.approx(2 / 3)  # both classes: 2*2 / (2*2 + 1 + 1)
    assert m["mcc"] == pytest.approx((2 * 2 - 1 * 1) / (3 * 3))  # (TP*TN - FP*FN) / sqrt(3^4)
    assert all(type(v) is float for k, v in m.items() if k != "n")


def test_three_class_metrics_match_hand_computed_and_have_no_mcc():
    y_true = [0, 1, 2, 2, 1, 0]
    y_pred = [0, 2, 2, 2, 1, 1]
    m = metrics_from_logits(one_hot_logits(y_pred, 3), y_true, 3)  # labels as a list
    assert "mcc" not in m
    assert m["accuracy"] == pytest.approx(4 / 6)
    f1 = [2 / 3, 1 / 2, 4 / 5]  # class 0: P=1 R=1/2; class 1: P=1/2 R=1/2; class 2: P=2/3 R=1
    assert m["f1_macro"] == pytest.approx(sum(f1) / 3)
    assert m["n"] == 6


def test_metrics_reject_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        metrics_from_logits(torch.zeros(4, 3), [0, 1, 0, 1], 2)
    with pytest.raises(ValueError, match="labels"):
        metrics_from_logits(torch.zeros(4, 2), [0, 1, 0], 2)


def examples_for_tests() -> list[Example]:
    return [
        Example("the good movie", 1),
        Example("a bad plot and a dull scene that was too long", 0),
        Example("great", 1),
        Example("the actor was not funny", 0),
        Example("love it", 1),
    ]


def test_predict_returns_logits_in_example_order(tokenizer):
    model = make_tiny_model("bert", num_labels=2)
    model.train()
    examples = examples_for_tests()
    logits = predict(model, tokenizer, examples, batch_size=2, progress=False)
    assert logits.shape == (5, 2) and logits.dtype == torch.float32
    assert model.training  # previous mode restored
    model.eval()
    one_by_one = torch.cat([predict(model, tokenizer, [e], progress=False) for e in examples])
    torch.testing.assert_close(logits, one_by_one, rtol=1e-4, atol=1e-5)  # padding differs per batch
    assert predict(model, tokenizer, [], progress=False).shape == (0, 2)


def test_predict_sentence_pairs(tokenizer):
    model = make_tiny_model("bert", num_labels=3)
    pairs = [Example("the plot", 0, text_pair="was dull"), Example("a great actor", 2, text_pair="love it")]
    logits = predict(model, tokenizer, pairs, progress=False)
    assert logits.shape == (2, 3)
    assert evaluate(model, tokenizer, pairs, progress=False)["n"] == 2


def test_evaluate_is_predict_plus_metrics(tokenizer):
    model = make_tiny_model("bert", num_labels=2)
    examples = examples_for_tests()
    m = evaluate(model, tokenizer, examples, progress=False)
    logits = predict(model, tokenizer, examples, progress=False)
    assert m == metrics_from_logits(logits, [e.label for e in examples], 2)
    assert m["n"] == 5


def test_evaluate_errors(tokenizer):
    model = make_tiny_model("bert", num_labels=2)
    with pytest.raises(ValueError, match="empty"):
        evaluate(model, tokenizer, [], progress=False)
    with pytest.raises(ValueError, match="label 2"):
        evaluate(model, tokenizer, [Example("good", 1), Example("bad", 2)], progress=False)
    with pytest.raises(ValueError, match="label 1"):
        evaluate(model, tokenizer, [Example("good", 1)], num_labels=1, progress=False)


@pytest.mark.parametrize("num_processes", [1, 2, 3, 4, 7])
def test_shards_concatenate_to_the_examples_in_order(num_processes):
    for n in range(1, 12):
        items = list(range(n))
        shards = [shard_for_process(items, num_processes, r) for r in range(num_processes)]
        assert len({len(s) for s in shards}) == 1  # equal lengths, as gather needs
        assert sum(shards, [])[:n] == items
