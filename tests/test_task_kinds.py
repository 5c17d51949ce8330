"""Token classification and pair / reranker models: the contract suite on a tiny model of every family.

Per family: the adapter's own layer loop gives the model's per-token logits; removing masked heads
and neurons equals masking them; save -> load reproduces the outputs with slimformer and with plain
transformers (``AutoModelForTokenClassification`` + ``trust_remote_code``); the cost model counts the
token head exactly. Then the kind itself: read from the class and the folder, refusals, and the
one-logit (reranker) scoring.
"""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForTokenClassification

from conftest import FAMILIES, make_inputs, make_tiny_model
from slimformer.arch import FAMILIES as ADAPTER_FAMILIES
from slimformer.arch import get_adapter
from slimformer.cost import cost_of
from slimformer.export import is_slim_folder, save_model
from slimformer.models import load_model
from slimformer.structure import Structure
from slimformer.surgery import KeepPlan, apply_plan, masked
from slimformer.tasks import describe, is_single_logit, model_kind, require_kind, task_kind

HEADS = {0: [1, 2], 2: [0]}
NEURONS = {1: list(range(9)), 2: [3, 4]}


def make_tiny_token_model(family: str, *, num_labels: int = 5, layers: int = 3, seed: int = 0):
    """A seeded random token classifier of ``family`` (the registry's tiny config)."""
    config = ADAPTER_FAMILIES[family].tiny_config(layers=layers, num_labels=num_labels)
    torch.manual_seed(seed)
    return AutoModelForTokenClassification.from_config(config).eval()


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def remove(model):
    return apply_plan(model, KeepPlan.removing(model, heads=HEADS, neurons=NEURONS))


def masks(model):
    adapter = get_adapter(model)
    layers = adapter.layers(model)
    head = [torch.ones(adapter.attention(la).num_heads) for la in layers]
    ffn = [torch.ones(adapter.ffn(la).width) for la in layers]
    for li, hs in HEADS.items():
        head[li][hs] = 0.0
    for li, ns in NEURONS.items():
        ffn[li][ns] = 0.0
    return head, ffn


def test_token_models_get_the_adapter_and_their_kind(family):
    model = make_tiny_token_model(family)
    assert get_adapter(model) is ADAPTER_FAMILIES[family]
    assert model_kind(model) == "token" and model_kind(make_tiny_model(family)) == "sequence"
    assert describe(model).startswith("token classification (5 tags")


def test_adapter_layer_loop_gives_per_token_logits(family):
    model, inputs = make_tiny_token_model(family), make_inputs()
    got = get_adapter(model).forward(model, inputs["input_ids"], inputs["attention_mask"])
    expected = logits(model, inputs)
    assert got.shape == (2, 7, 5)
    keep = inputs["attention_mask"].bool()  # padding is never scored (DeBERTa zeroes its embeddings there)
    torch.testing.assert_close(got[keep], expected[keep])


def test_token_removal_equals_masking(family):
    model, inputs = make_tiny_token_model(family), make_inputs()
    dense = logits(model, inputs)
    head, ffn = masks(model)
    with torch.no_grad(), masked(model, head, ffn):
        want = logits(model, inputs)
    assert not torch.allclose(want, dense, atol=1e-4)  # the plan changes the outputs
    remove(model)
    keep = inputs["attention_mask"].bool()
    torch.testing.assert_close(logits(model, inputs)[keep], want[keep], atol=1e-5, rtol=1e-4)


def test_token_cost_model_counts_the_head_on_every_token(family):
    model = make_tiny_token_model(family)
    remove(model)
    cost = cost_of(Structure.from_model(model), 8)
    assert cost.params == sum(p.numel() for p in model.parameters())
    model.config._attn_implementation = "eager"
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(**make_inputs(batch=1, seq=8, pad_last=0))
    assert cost.macs == pytest.approx(counter.get_total_flops() / 2, rel=1e-9)


# Loads every folder with plain transformers in one fresh interpreter where slimformer cannot be imported.
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
    jobs, inputs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    out = {}
    for folder, auto in jobs:
        model = getattr(transformers, auto).from_pretrained(folder, trust_remote_code=True).eval()
        with torch.no_grad():
            out[folder] = model(**{k: torch.tensor(v) for k, v in inputs.items()}).logits.tolist()
    print(json.dumps(out))
    """
)


def plain_logits(jobs: list[tuple[str, str]], inputs: dict) -> dict[str, torch.Tensor]:
    payload = json.dumps({k: v.tolist() for k, v in inputs.items()})
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [sys.executable, "-c", PLAIN_LOAD, json.dumps(jobs), payload], capture_output=True, text=True, env=env
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return {k: torch.tensor(v) for k, v in json.loads(run.stdout.strip().splitlines()[-1]).items()}


def test_pruned_token_and_reranker_models_round_trip_everywhere(tiny_tokenizer, tmp_path):
    """slimformer and plain transformers both load uneven token classifiers and one-logit pair models."""
    inputs = make_inputs()
    expected, jobs = {}, []
    for family in FAMILIES:
        for kind, model in (("token", make_tiny_token_model(family)), ("pair", make_tiny_model(family, num_labels=1))):
            remove(model)
            folder = save_model(model, tiny_tokenizer, tmp_path / f"{family}-{kind}")
            assert is_slim_folder(folder)
            loaded, _ = load_model(str(folder))
            assert model_kind(loaded) == ("token" if kind == "token" else "sequence")
            assert Structure.from_model(loaded) == Structure.from_model(model)
            expected[str(folder)] = logits(model, inputs)
            torch.testing.assert_close(logits(loaded, inputs), expected[str(folder)])
            auto = "AutoModelForTokenClassification" if kind == "token" else "AutoModelForSequenceClassification"
            jobs.append((str(folder), auto))
    for folder, got in plain_logits(jobs, inputs).items():
        torch.testing.assert_close(got, expected[folder], atol=1e-5, rtol=1e-4)


def test_kind_is_read_from_the_folder_not_guessed(tiny_tokenizer, tmp_path):
    dense = make_tiny_token_model("bert")
    folder = save_model(dense, tiny_tokenizer, tmp_path / "dense")
    assert not is_slim_folder(folder)
    loaded, _ = load_model(str(folder))
    assert model_kind(loaded) == "token" and loaded.config.num_labels == 5
    seq, _ = load_model(str(folder), kind="sequence", num_labels=5)
    assert model_kind(seq) == "sequence"
    with pytest.raises(ValueError, match="kind='tokens'"):
        load_model(str(folder), kind="tokens")


def test_pair_kind_comes_from_the_data_and_one_logit_is_a_score():
    from slimformer.data import Example

    model = make_tiny_model("bert", num_labels=1)
    assert task_kind(model, [Example("q", 0, "doc")]) == "pair"
    assert task_kind(model, [Example("q", 0)]) == "sequence"
    assert is_single_logit(model) and "reranker" in describe(model)
    assert task_kind(make_tiny_token_model("bert"), [Example("q", 0, "doc")]) == "token"


@pytest.mark.parametrize("method", ["skim", "exits", "axformer", "slim", "recover"])
def test_methods_that_need_sequence_outputs_refuse_token_models(method):
    with pytest.raises(ValueError, match=f"{method} is not available for token classifiers: "):
        require_kind(make_tiny_token_model("bert"), method)
    require_kind(make_tiny_model("bert"), method)  # sequence classifiers run everything


def test_pair_reranker_removal_equals_masking(family):
    """A one-logit model on (text, text_pair) inputs: segment ids where the family reads them."""
    model, inputs = make_tiny_model(family, num_labels=1), make_inputs()
    if "token_type_ids" in get_adapter(model).input_names(model.config):
        inputs["token_type_ids"] = (torch.arange(7) >= 4).long().expand(2, 7).clone()  # second text from position 4
    head, ffn = masks(model)
    with torch.no_grad(), masked(model, head, ffn):
        want = logits(model, inputs)
    assert want.shape == (2, 1) and not torch.allclose(want, logits(model, inputs), atol=0, rtol=1e-3)
    remove(model)
    torch.testing.assert_close(logits(model, inputs), want, atol=1e-5, rtol=1e-4)
