"""The real built-in all-MiniLM-L6-v2 on a handful of examples (marked ``real``)."""

import json
import subprocess
import sys

import pytest
import torch

from slimformer.cost import cost_of
from slimformer.data import load_task
from slimformer.evaluate import evaluate
from slimformer.export import save_model
from slimformer.models import load_model
from slimformer.structure import Structure
from slimformer.surgery import KeepPlan, apply_plan

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def minilm():
    torch.manual_seed(0)
    return load_model("minilm-l6", label_names=["rotten", "fresh"])


def test_builtin_model_shape(minilm):
    model, _ = minilm
    st = Structure.from_model(model)
    assert (st.dims.hidden, st.dims.num_heads, st.dims.ffn, st.num_layers) == (384, 12, 1536, 6)
    assert cost_of(st).params == sum(p.numel() for p in model.parameters())
    assert 22_000_000 < cost_of(st).params < 23_000_000


def test_prune_save_and_load_without_slimformer(minilm, tmp_path):
    model, tokenizer = minilm
    texts = [e.text for e in load_task("rotten_tomatoes").split("test")[:4]]
    inputs = tokenizer(texts, padding=True, return_tensors="pt")
    plan = KeepPlan.removing(model, heads={0: range(6), 3: range(12)}, neurons={1: range(0, 1536, 2)}, layers=[5])
    pruned = apply_plan(load_model("minilm-l6", label_names=["rotten", "fresh"])[0], plan)
    pruned.classifier.load_state_dict(model.classifier.state_dict())
    with torch.no_grad():
        expected = pruned(**inputs).logits
    folder = save_model(pruned, tokenizer, tmp_path / "pruned")
    code = (
        "import sys, json, torch;"
        "sys.modules['slimformer'] = None;"
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer;"
        "m = AutoModelForSequenceClassification.from_pretrained(sys.argv[1], trust_remote_code=True).eval();"
        "t = AutoTokenizer.from_pretrained(sys.argv[1]);"
        "x = t(json.loads(sys.argv[2]), padding=True, return_tensors='pt');"
        "print(json.dumps(m(**x).logits.tolist()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(folder), json.dumps(texts)],
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = torch.tensor(json.loads(out.stdout.strip().splitlines()[-1]))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert cost_of(Structure.from_model(pruned)).params < 0.9 * cost_of(Structure.from_model(model)).params


def test_evaluate_a_handful(minilm):
    model, tokenizer = minilm
    metrics = evaluate(model, tokenizer, load_task("rotten_tomatoes").split("test")[:16], progress=False)
    assert metrics["n"] == 16 and 0.0 <= metrics["accuracy"] <= 1.0
