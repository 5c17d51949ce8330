"""The command line: JSON a script can parse, clear errors, nothing overwritten."""

import dataclasses
import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from conftest import make_tiny_model
from slimformer.cli import app
from slimformer.cost import cost_of
from slimformer.export import save_model
from slimformer.structure import Structure
from slimformer.surgery import KeepPlan, apply_plan

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def saved_model(tmp_path, tiny_tokenizer):
    model = make_tiny_model("bert", num_labels=2)
    apply_plan(model, KeepPlan.removing(model, heads={0: [1]}, neurons={2: range(5)}))
    return save_model(model, tiny_tokenizer, tmp_path / "model"), model


@pytest.fixture
def csv_task(tmp_path):
    rows = ["text,label"]
    for i in range(60):
        rows.append(f"{'good fun' if i % 2 else 'bad dull'} movie {i},{'pos' if i % 2 else 'neg'}")
    path = tmp_path / "task.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_import_is_light():
    code = "import sys, slimformer; print(any(m in sys.modules for m in ('torch', 'transformers')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_info_json(saved_model):
    folder, model = saved_model
    result = run("info", folder, "--seq-len", 16, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    expected = cost_of(Structure.from_model(model), 16)
    assert {"params", "encoder_params", "macs", "seq_len", "bytes_fp32", "layers"} <= set(data)
    assert data["params"] == expected.params == sum(p.numel() for p in model.parameters())
    assert data["macs"] == expected.macs and data["seq_len"] == 16
    assert [(x["heads"], x["ffn"]) for x in data["layers"]] == [(3, 37), (4, 37), (4, 32)]


def test_evaluate_json(saved_model, csv_task):
    folder, _ = saved_model
    result = run("evaluate", folder, "--task", csv_task, "--split", "test", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"accuracy", "f1_macro", "mcc", "n"} and data["n"] == 6


def test_bench_json_vs(saved_model, tmp_path, tiny_tokenizer):
    folder, _ = saved_model
    dense = save_model(make_tiny_model("bert", num_labels=2), tiny_tokenizer, tmp_path / "dense")
    result = run("bench", folder, "--batch-sizes", "1,2", "--seq-len", 8, "--repeats", 2, "--vs", dense, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [r["batch_size"] for r in data["results"]] == [1, 2]
    assert [r["batch_size"] for r in data["comparison"]] == [1, 2]
    assert all(r["speedup"] > 0 for r in data["comparison"])
    assert data["environment"]["torch"]


def test_bench_bad_batch_sizes(saved_model):
    result = run("bench", saved_model[0], "--batch-sizes", "1,x")
    assert result.exit_code == 2 and "1,x" in result.stderr


def test_unknown_model_is_an_error(tmp_path):
    result = run("info", tmp_path / "missing")
    assert result.exit_code == 2 and "missing" in result.stderr


def test_unsupported_architecture(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path / "gpt")
    result = run("info", tmp_path / "gpt")
    assert result.exit_code == 2 and "gpt2" in result.stderr and "distilbert" in result.stderr


def test_finetune_refuses_non_empty_out(saved_model, csv_task, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = run("finetune", saved_model[0], "--task", csv_task, "--out", out, "--epochs", 1)
    assert result.exit_code == 2 and "--overwrite" in result.stderr
    assert (out / "notes.txt").read_text() == "mine"


def test_finetune_then_evaluate(saved_model, csv_task, tmp_path):
    out = tmp_path / "ft"
    result = run(
        "finetune",
        saved_model[0],
        "--task",
        csv_task,
        "--out",
        out,
        "--epochs",
        1,
        "--batch-size",
        8,
        "--lr",
        "1e-3",
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert (out / "config.json").exists()
    result = run("evaluate", out, "--task", csv_task, "--json")
    assert result.exit_code == 0, result.output


def test_list_json():
    data = json.loads(run("list", "--json").stdout)
    assert "minilm-l6" in data["models"] and {"rotten_tomatoes", "bbc_news"} <= set(data["tasks"])


def test_list_and_info_show_the_registered_methods(saved_model):
    from slimformer.methods import methods

    expected = [{"name": m.name, "kind": m.kind, "help": m.help} for m in methods().values()]
    assert json.loads(run("list", "--json").stdout)["methods"] == expected
    assert json.loads(run("info", saved_model[0], "--seq-len", 16, "--json").stdout)["methods"] == expected
    text = run("list").stdout
    assert all(f"{m['name']:10s} {m['kind']:9s} {m['help']}" in text for m in expected)


def test_public_api_names_resolve():
    import slimformer

    for name in slimformer.__all__:
        assert getattr(slimformer, name) is not None
    with pytest.raises(AttributeError, match="nope"):
        slimformer.nope  # noqa: B018


def test_prune_saves_a_smaller_model_that_loads(saved_model, csv_task, tmp_path):
    folder, model = saved_model
    out = tmp_path / "pruned"
    result = run(
        "prune",
        folder,
        "--task",
        csv_task,
        "--method",
        "optin",
        "--budget",
        "macs=0.5,seq=16",
        "--calibration",
        32,
        "--set",
        "head_examples=8",
        "--evaluate",
        "test",
        "--out",
        out,
        "--json",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["method"] == "optin" and report["relative"]["macs"] <= 0.5
    assert report["metrics"]["n"] == 6 and report["calibration_examples"] == 32
    assert json.loads((out / "slimformer.json").read_text())["budget"] == "macs=0.5,seq=16"
    info = json.loads(run("info", out, "--seq-len", 16, "--json").stdout)
    assert info["params"] == report["params"] < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "nope"], "unknown pruning method 'nope'"),
        (["--budget", "macs=2"], "macs=2"),
        (["--budget", "params=10"], "infeasible"),
        (["--set", "head_examples"], "FIELD=VALUE"),
        (["--set", "bogus=1"], "bogus"),
    ],
)
def test_prune_bad_input(saved_model, csv_task, tmp_path, args, message):
    result = run("prune", saved_model[0], "--task", csv_task, "--calibration", 16, "--out", tmp_path / "o", *args)
    assert result.exit_code == 2 and message in result.stderr, result.stderr


def test_main_job_end_to_end_on_a_tiny_model(saved_model, csv_task, tmp_path, monkeypatch):
    from slimformer.pipeline import DemoConfig, run_demo
    from slimformer.train import FinetuneConfig

    monkeypatch.setenv("SLIMFORMER_CACHE", str(tmp_path / "cache"))
    config = DemoConfig(
        model=str(saved_model[0]),
        task=str(csv_task),
        repeats=2,
        batch_sizes=(1, 2),
        finetune=FinetuneConfig(epochs=1, batch_size=8, max_length=16),
        calibration=16,
        methods=("magnitude", "magnitude+int8"),
        budgets=(0.7, 0.4),
        onnx="magnitude@0.4",
        fit="latency=1.0",  # dense meets it, so within max_drop there is always a choice
        fit_budgets=(0.5,),
        fit_calibration=16,
        fit_val_examples=None,
    )
    report = run_demo(config, tmp_path / "run", progress=False)
    assert not report["finetune_reused"]
    names = [r["name"] for r in report["rows"]]
    assert names == [
        f"{saved_model[0]} (dense)",
        "magnitude macs=0.7",
        "magnitude+int8 macs=0.7",
        "magnitude macs=0.4",
        "magnitude+int8 macs=0.4",
        "dense+int8 macs=1.0",
        "magnitude macs=0.4 onnx-int8",
        f"fit: {report['headline']['choice']}",
        "peer: dense ORT optimizer + int8",
    ]
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["magnitude macs=0.4"]["macs"] < rows["magnitude macs=0.7"]["macs"] < report["rows"][0]["macs"]
    assert rows["magnitude+int8 macs=0.4"]["bytes"] < rows["magnitude macs=0.4"]["bytes"]
    assert all(r["latency_b1_ms"] > 0 and r["latency_b2_ms"] > 0 for r in report["rows"])
    assert report["rows"][0]["speedup_b1"] == 1.0
    assert report["onnx"]["verification"]["fp32"]["passed"]
    for name in ("report.json", "report.md", "frontier_latency.png", "frontier_memory.png", "onnx/model.int8.onnx"):
        assert (tmp_path / "run" / name).stat().st_size > 0, name
    head = report["headline"]  # fit's choice beside dense and the peer, from the same timing rounds
    assert [r["name"] for r in head["rows"]] == [names[0], names[-2], names[-1]]
    assert head["budget"] == f"latency=1.0,seq={report['seq_len']},batch=1" and head["max_drop"] == 1.0
    fit_row, peer_row = rows[names[-2]], rows[names[-1]]
    assert head["fit_vs_peer"]["b2"] == pytest.approx(peer_row["latency_b2_ms"] / fit_row["latency_b2_ms"])
    assert head["fit_vs_dense"]["b1"] == pytest.approx(fit_row["speedup_b1"])
    assert head["drop_points"]["fit"] == pytest.approx(100 * (report["rows"][0]["accuracy"] - fit_row["accuracy"]))
    assert head["peer"]["verification"]["fp32"]["max_abs_diff"] <= 1e-4
    fit_json = json.loads((tmp_path / "run" / "fit" / "fit.json").read_text())
    assert fit_json["choice"]["key"] == head["choice"] and fit_json["config"]["max_drop"] == 1.0
    md = (tmp_path / "run" / "report.md").read_text()
    assert md.index("## Headline") < md.index("## Every model") and "fit vs peer:" in md
    assert " points below dense" in md or " points above dense" in md  # a drop in words, not a signed number
    assert (tmp_path / "run" / "peer" / "peer.opt.int8.onnx").stat().st_size > 0
    config = dataclasses.replace(config, fit=None)
    again = run_demo(config, tmp_path / "run2", progress=False)
    assert again["finetune_reused"]
    with pytest.raises(FileExistsError):
        run_demo(config, tmp_path / "run", progress=False)
    dense_only = run_demo(
        dataclasses.replace(config, methods=(), budgets=(), onnx=None), tmp_path / "run3", progress=False
    )
    assert [r["name"] for r in dense_only["rows"]] == names[:1] and not dense_only["plots"]
    assert dense_only["headline"] is None


def test_demo_config_errors():
    from slimformer.pipeline import DemoConfig

    with pytest.raises(ValueError, match="onnx='optin@0.5'"):
        DemoConfig(methods=("optin",), budgets=(0.6, 0.4), onnx="optin@0.5")
    with pytest.raises(ValueError, match="budgets is empty"):
        DemoConfig(methods=("optin",), budgets=(), onnx=None)


def test_pareto_writes_frontiers(saved_model, csv_task, tmp_path):
    out = tmp_path / "front"
    args = ["--task", csv_task, "--out", out, "--methods", "magnitude", "--budgets", "0.7,0.4", "--seq-len", 8]
    args += ["--batch-sizes", "1,2"]
    result = run("pareto", saved_model[0], *args, "--repeats", 1, "--calibration", 8, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [p["method"] for p in data["points"]] == ["dense", "magnitude", "magnitude"]
    assert all(p["latency_b2_ms"] > 0 and p["latency_ms"] == p["latency_b1_ms"] for p in data["points"])
    for name in ("frontier_latency.png", "frontier_memory.png", "pareto.json", "pareto.md"):
        assert (out / name).is_file(), name
    again = run("pareto", saved_model[0], *args, "--repeats", 1)
    assert again.exit_code != 0 and "not empty" in again.output  # nothing overwritten without --overwrite
    bad = run("pareto", saved_model[0], "--task", csv_task, "--out", tmp_path / "x", "--methods", "optim")
    assert bad.exit_code != 0 and "unknown method 'optim'" in bad.output


def test_compress_recipe_then_evaluate(saved_model, csv_task, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("steps:\n  - {step: prune, method: magnitude, budget: params=0.9}\n  - {step: int8}\n")
    out = tmp_path / "small"
    result = run("compress", saved_model[0], "--recipe", recipe, "--task", csv_task, "--out", out,
                 "--calibration", 8, "--evaluate", "test", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [s["step"] for s in report["steps"]] == ["prune", "int8"] and "accuracy" in report["metrics"]
    evaluated = run("evaluate", out, "--task", csv_task, "--split", "test", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.output)["accuracy"] == report["metrics"]["accuracy"]  # the saved int8 model


def test_compress_bad_recipe_fails_before_work(saved_model, csv_task, tmp_path):
    recipe = tmp_path / "recipe.json"
    recipe.write_text('{"steps": [{"step": "int8"}, {"step": "prune", "budget": "macs=0.5"}]}')
    result = run("compress", saved_model[0], "--recipe", recipe, "--task", "no_such_task", "--out", tmp_path / "o")
    assert result.exit_code != 0
    assert "step 1 (int8) must be the last step" in result.output  # before the unknown task is even looked up
    assert not (tmp_path / "o").exists()


def test_compress_help_lists_every_registered_step():
    from slimformer.compose import available_steps

    result = runner.invoke(app, ["compress", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for name, method in available_steps().items():
        assert f"{name} ({method.kind}): {method.help[:40]}" in result.output


def test_every_registered_method_is_a_compress_step(tmp_path):
    """Each step name the registry holds passes the CLI's recipe check (the unknown task fails after it)."""
    from slimformer.methods import available
    from test_compose import minimal_step

    for name in available():
        recipe = tmp_path / f"{name}.json"
        recipe.write_text(json.dumps({"steps": [minimal_step(name)]}))
        result = run("compress", "no-such-model", "--recipe", recipe, "--task", "no_such_task", "--out", tmp_path / "o")
        assert result.exit_code == 2 and "'no_such_task' is not a built-in task" in result.stderr, (name, result.stderr)
    recipe.write_text('{"steps": [{"step": "distill"}]}')
    result = run("compress", "no-such-model", "--recipe", recipe, "--task", "no_such_task", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "unknown step 'distill'; available: prune, " in result.stderr
    assert all(name in result.stderr for name in available())


def test_demo_bad_budgets_named(tmp_path):
    result = run("demo", "--budgets", "0.6,abc", "--out", tmp_path / "run")
    assert result.exit_code == 2 and "--budgets '0.6,abc'" in result.stderr
    assert not (tmp_path / "run").exists()


def test_demo_bad_fit_budget_named_before_work(tmp_path):
    result = run("demo", "--fit", "speed=9", "--out", tmp_path / "run")
    assert result.exit_code == 2 and "fit='speed=9'" in result.stderr and "latency=0.5" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.fixture
def headless_folder(tmp_path, tiny_tokenizer):
    """A base encoder saved without a classification head (what a pretrained checkpoint is)."""
    full = make_tiny_model("bert", num_labels=2)
    full.bert.save_pretrained(tmp_path / "base")
    tiny_tokenizer.save_pretrained(tmp_path / "base")
    return tmp_path / "base"


@pytest.mark.parametrize("command", ["evaluate", "prune", "axformer", "skim train", "slim train"])
def test_commands_that_need_a_fine_tuned_model_refuse_a_random_head(headless_folder, csv_task, tmp_path, command):
    extra = {"prune": ["--budget", "macs=0.5", "--out", tmp_path / "o"], "evaluate": []}.get(
        command, ["--out", tmp_path / "o"]
    )
    result = run(*command.split(), headless_folder, "--task", csv_task, *extra)
    assert result.exit_code != 0
    assert "no fine-tuned classification head" in result.output and "classifier.weight" in result.output
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_a_headless_model_still_loads_for_fine_tuning(headless_folder):
    from slimformer.models import load_model

    model, _ = load_model(str(headless_folder), num_labels=2)  # finetune's path: a new head is expected there
    assert model.config.num_labels == 2
    with pytest.raises(ValueError, match="no fine-tuned classification head"):
        load_model(str(headless_folder), require_head=True)


# --- the commands package: shared helpers, no cycle, one output-folder rule ---------------------------------


def test_common_imports_no_command_module_and_no_torch():
    code = (
        "import sys, slimformer.commands.common as c; "
        "print(sorted(m for m in sys.modules if m.startswith('slimformer.commands.') and m != c.__name__), "
        "'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] False"


def test_building_the_app_loads_no_torch():
    """Help texts that come from torch-importing config modules or the registry are read on --help only."""
    code = "import sys, slimformer.commands.application; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("path", "config", "names"),
    [
        (
            ["axformer"],
            "slimformer.axformer.config:AxConfig",
            [
                "budget",
                "loss_tolerance",
                "tolerance_from",
                "max_worse_fraction",
                "max_accuracy_drop",
                "hard_attention",
                "compensate",
                "repair",
                "holdout",
                "neuron_groups",
                "max_passes",
            ],
        ),  # fmt: skip
        (["prune"], "slimformer.static.prune:PruneConfig", ["budget", "repair"]),
        (["exit", "train"], "slimformer.exits.config:ExitConfig", ["epochs", "max_steps", "head"]),
        (["exit", "train"], "slimformer.exits.config:SlenderConfig", ["method"]),
        (["slim", "train"], "slimformer.slim.config:SlimConfig", ["max_steps"]),
    ],
)
def test_options_that_are_config_fields_show_the_field_help(path, config, names):
    import importlib

    import typer.main

    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    command.complete_help()
    module, cls = config.split(":")
    fields = getattr(importlib.import_module(module), cls).field_help()
    options = {p.name: p.help for p in command.params}
    assert {n: options[n] for n in names} == {n: fields[n] for n in names}
    assert all(options.values()), options  # every option has a help text, its own or its field's
    if path == ["prune"]:
        from slimformer.compose import pruners

        assert options["method"] == f"one-shot pruning method: {', '.join(pruners())}"  # from the registry


def test_python_dash_m_and_the_old_entry_point_are_the_same_app():
    import slimformer.commands
    from slimformer import cli

    assert cli.app is slimformer.commands.app and cli.main is slimformer.commands.main
    out = subprocess.run([sys.executable, "-m", "slimformer", "list", "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "minilm-l6" in json.loads(out.stdout)["models"]


def test_ensure_output_dir(tmp_path):
    from slimformer.commands.common import ensure_output_dir

    full = tmp_path / "full"
    full.mkdir()
    (full / "x.txt").write_text("mine")
    for ok in (None, tmp_path / "new", tmp_path):  # no folder asked, a new one, and (below) an empty one
        ensure_output_dir(ok if ok != tmp_path else (tmp_path / "empty"), overwrite=False)
    (tmp_path / "empty").mkdir()
    ensure_output_dir(tmp_path / "empty", overwrite=False)
    with pytest.raises(FileExistsError, match="full.*not empty; choose another or pass --overwrite"):
        ensure_output_dir(full, overwrite=False)
    with pytest.raises(FileExistsError, match="pass --overwrite or --resume"):
        ensure_output_dir(full, overwrite=False, resume=False)
    ensure_output_dir(full, overwrite=True)
    ensure_output_dir(full, overwrite=False, resume=True)
    with pytest.raises(NotADirectoryError, match="x.txt"):
        ensure_output_dir(full / "x.txt", overwrite=True)
    assert (full / "x.txt").read_text() == "mine"  # a check only: nothing is removed


def test_ensure_distinct_names_the_options(tmp_path):
    from slimformer.commands.common import ensure_distinct

    ensure_distinct(out=tmp_path / "a", int8_out=tmp_path / "b", bf16_out=None)
    with pytest.raises(ValueError, match="--out, --int8-out and --bf16-out must be different folders"):
        ensure_distinct(out=tmp_path / "a", int8_out=None, bf16_out=tmp_path / "x" / ".." / "a")


def test_parse_options_and_fractions():
    from slimformer.commands.common import fractions, parse_options

    assert parse_options(["n=256", "repair=false", "name=optin", "ks=[1, 2]"]) == {
        "n": 256,
        "repair": False,
        "name": "optin",
        "ks": [1, 2],
    }
    assert parse_options(None) == {}
    with pytest.raises(ValueError, match="--set 'oops': expected FIELD=VALUE"):
        parse_options(["oops"])
    assert fractions("0.6, 0.4,", "--budgets") == (0.6, 0.4)
    with pytest.raises(ValueError, match="--budgets '0.6,x'"):
        fractions("0.6,x", "--budgets")


@pytest.mark.parametrize(
    "command",
    [
        ["prune", "no-such-model"],
        ["compress", "no-such-model", "--recipe", "RECIPE"],
        ["axformer", "no-such-model"],
        ["finetune", "no-such-model"],
        ["exit", "train", "no-such-model"],
        ["skim", "train", "no-such-model"],
        ["slim", "train", "no-such-model"],
        ["slim", "extract", "no-such-run", "--budget", "memory=0.5"],
    ],
)
def test_a_non_empty_out_is_refused_before_any_work(tmp_path, command):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    recipe = tmp_path / "recipe.json"
    recipe.write_text('{"steps": [{"step": "int8"}]}')
    args = [str(recipe) if a == "RECIPE" else a for a in command]
    result = (
        run(*args, "--task", "no_such_task", "--out", out) if "extract" not in command else run(*args, "--out", out)
    )
    assert result.exit_code == 2, result.output
    assert f"output folder {str(out)!r} is not empty" in result.stderr  # not the unknown model, run or task
    assert (out / "notes.txt").read_text() == "mine"


def test_export_refuses_a_non_empty_folder_before_loading(tmp_path):
    out = tmp_path / "onnx"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = run("export", "no-such-model", "--onnx", out)
    assert result.exit_code == 2 and "is not empty" in result.stderr


def test_axformer_copies_are_the_searched_model_converted(saved_model, csv_task, tmp_path):
    """--int8-out / --bf16-out run as one-step compose recipes: each equals the saved model converted by hand."""
    import torch

    from conftest import make_inputs
    from slimformer.export import load_slim
    from slimformer.models import load_model
    from slimformer.quantize import is_bf16, quantize_dynamic_int8, to_bf16

    out, int8, bf16 = tmp_path / "ax", tmp_path / "int8", tmp_path / "bf16"
    args = ["axformer", saved_model[0], "--task", csv_task, "--out", out, "--budget", "macs=0.7,seq=16"]
    result = run(*args, "--int8-out", int8, "--bf16-out", bf16, "--evaluate", "test", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["int8"]["folder"] == str(int8) and report["int8"]["metrics"]["split"] == "test"
    assert json.loads((int8 / "slimformer.json").read_text())["int8"]["folder"] == str(int8)
    searched = load_slim(out).eval()
    inputs = make_inputs(batch=3, seq=9)
    with torch.no_grad():
        for folder, convert in ((int8, quantize_dynamic_int8), (bf16, to_bf16)):
            saved, _ = load_model(str(folder))
            expected = convert(searched)(**inputs).logits.float()
            torch.testing.assert_close(saved.eval()(**inputs).logits.float(), expected, rtol=0, atol=0)
        assert is_bf16(load_model(str(bf16))[0]) and not is_bf16(searched)
