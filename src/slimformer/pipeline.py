"""The main job: fine-tune (cached) the built-in model on the built-in task, compress it several
ways, export one result to ONNX, let ``fit`` pick the fastest model within a point of dense (the
headline, beside dense and the onnxruntime-optimizer + int8 peer), and report accuracy, size and
wall-clock latency of every model (all evaluated on the test split, all timed in the same
interleaved rounds) with frontier plots.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from slimformer.config import ConfigBase, fraction, integer, nested, non_negative, option, text, tuple_of
from slimformer.train import FinetuneConfig

logger = logging.getLogger(__name__)


#: Fine-tuning recipe of each built-in task. BBC articles are long (median ~420 tokens) and few
#: (1,699 to train on): their first 128 tokens (headline and lead) carry the topic, and the few
#: steps get smaller batches, a higher rate and one more epoch.
RECIPES: dict[str, FinetuneConfig] = {
    "rotten_tomatoes": FinetuneConfig(),
    "bbc_news": FinetuneConfig(epochs=3, lr=8e-5, batch_size=16, max_length=128),
}


def recipe_for(task_name: str) -> FinetuneConfig:
    """The built-in recipe of a task, or the defaults for any other task."""
    return RECIPES.get(task_name, FinetuneConfig())


def cache_dir() -> Path:
    """Where fine-tuned models are cached: ``$SLIMFORMER_CACHE`` or ``~/.cache/slimformer``."""
    return Path(os.environ.get("SLIMFORMER_CACHE", Path.home() / ".cache" / "slimformer"))


def finetune_cached(model_name: str, task, config: FinetuneConfig, *, progress: bool = True) -> tuple[Path, bool]:
    """Fine-tune ``model_name`` on ``task`` once; later calls with the same inputs reuse the result.

    The cache key covers the model name, the task's content hash and the fine-tuning config, so a
    change to any of them trains anew. An interrupted run resumes from its last epoch checkpoint.

    Returns:
        ``(folder, reused)``.
    """
    from slimformer.fsutil import file_lock
    from slimformer.models import load_model
    from slimformer.train import finetune

    key_src = json.dumps(
        {"model": model_name, "task": task.name, "data": task.content_hash, "config": config.to_dict()},
        sort_keys=True,
    )
    key = hashlib.sha256(key_src.encode()).hexdigest()[:12]
    slug = "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{model_name}-{task.name}")[-60:]
    folder = cache_dir() / "finetuned" / f"{slug}-{key}"
    with file_lock(folder.with_name(folder.name + ".lock")):  # a second caller waits, then reuses
        if (folder / "finetune_report.json").exists() and (folder / "config.json").exists():
            logger.info("reusing cached fine-tuned model %s", folder)
            return folder, True
        model, tokenizer = load_model(model_name, label_names=task.label_names)
        finetune(model, tokenizer, task, config, folder, resume=True, progress=progress)
        # epoch checkpoints (with optimizer state, ~3x the model) only serve to resume an interrupted run
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    return folder, False


def measure(model, tokenizer, task, *, name: str, seq_len: int, max_length: int = 128, progress: bool = True) -> dict:
    """One report row without latency: test metrics and params/MACs/bytes from the cost model.

    Latency is added afterwards by :func:`add_latency`, for all rows at once, interleaved.
    """
    from slimformer.cost import cost_of
    from slimformer.evaluate import evaluate
    from slimformer.structure import Structure

    metrics = evaluate(model, tokenizer, task.split("test"), max_length=max_length, progress=progress)
    cost = cost_of(Structure.from_model(model), seq_len)
    return {
        "name": name,
        "params": cost.params,
        "encoder_params": cost.encoder_params,
        "bytes_fp32": cost.bytes_fp32,
        "macs": cost.macs,
        "seq_len": seq_len,
        **{k: metrics[k] for k in ("accuracy", "f1_macro", "mcc", "n") if k in metrics},
        "layers": [{"heads": x["heads"], "ffn": x["ffn"]} for x in cost.layers],
    }


def add_latency(
    rows: list[dict],
    models: list,
    *,
    seq_len: int,
    batch_sizes: tuple[int, ...] = (1, 32),
    repeats: int = 10,
    progress: bool = True,
) -> dict:
    """Time ``models`` interleaved (see :func:`slimformer.bench.bench_models`) and fill each row's latency.

    Returns the environment the timings were taken in.
    """
    from slimformer.bench import BenchConfig, bench_models

    if len(rows) != len(models):
        raise ValueError(f"{len(rows)} rows but {len(models)} models: need one model per row")
    config = BenchConfig(batch_sizes=batch_sizes, seq_len=seq_len, repeats=repeats)
    results = bench_models({str(i): m for i, m in enumerate(models)}, config, progress=progress)
    for i, row in enumerate(rows):
        for r in results[str(i)]["results"]:
            b = r["batch_size"]
            row[f"latency_b{b}_ms"] = r["median_ms"]
            row[f"latency_b{b}_iqr_ms"] = r["iqr_ms"]
            row[f"throughput_b{b}"] = r["throughput_seq_per_s"]
    return results["0"]["environment"]


@dataclass(frozen=True, kw_only=True)
class DemoConfig(ConfigBase):
    """The main job's settings (the README's first command uses the defaults)."""

    model: str = option("minilm-l6", "built-in name, local folder or hub id", text())
    task: str = option("rotten_tomatoes", "built-in task or a CSV/TSV/JSONL file", text())
    finetune: FinetuneConfig | None = option(
        None,
        "fine-tuning settings; default: the task's built-in recipe (RECIPES)",
        nested(FinetuneConfig, optional=True),
    )
    batch_sizes: tuple[int, ...] = option((1, 32), "batch sizes to time", tuple_of(integer(1), min_len=1))
    repeats: int = option(10, "timed repeats per batch size (all models interleaved)", integer(1))
    seq_len: int | None = option(
        None, "length for MACs and latency; default: the task's p90 length", integer(2, optional=True)
    )
    methods: tuple[str, ...] = option(
        ("optin", "fisher", "optin+int8"),
        "compression methods of the sweep (METHOD+int8 / METHOD+bf16: that version); empty: none",
        tuple_of(text()),
    )
    budgets: tuple[float, ...] = option(
        (0.6, 0.4), "MACs budgets of the sweep, fractions of the dense model's MACs", tuple_of(fraction(open_low=True))
    )
    onnx: str | None = option(
        "optin@0.4",
        "METHOD@BUDGET of the sweep to export as ONNX (onnxruntime int8); None: no export",
        text(optional=True),
    )
    calibration: int = option(1024, "calibration examples from the train split", integer(1))
    fit: str | None = option(
        "latency=0.5",
        (
            "budget of the headline's `fit` (batch 1 and the run's length unless given); with fit_max_drop the "
            "choice is the fastest model within that many points of dense that meets it; None: no fit, no peer"
        ),
        text(optional=True),
    )
    fit_max_drop: float | None = option(
        1.0, "fit: the fastest candidate within this many validation points of dense", non_negative(optional=True)
    )
    fit_budgets: tuple[float, ...] = option(
        (0.8, 0.6, 0.5, 0.4, 0.3), "fit: MACs fractions it prunes candidates to", tuple_of(fraction(open_low=True))
    )
    fit_calibration: int = option(
        256, "fit: calibration examples from train (pruning scores, static int8 ranges)", integer(1)
    )
    fit_val_examples: int | None = option(
        600, "fit: score candidates on the first N validation examples (None: all)", integer(1, optional=True)
    )

    def _check(self) -> None:
        if self.fit is not None:
            from slimformer.budget import Budget

            try:
                Budget.parse(self.fit)
            except ValueError as exc:
                self._fail("fit", f"not a budget ({exc}); e.g. latency=0.5 or latency=5ms or macs=0.5")
        if self.methods and not self.budgets:
            self._fail("budgets", "budgets is empty: give at least one MACs fraction, or no methods")
        if self.onnx is not None:
            method, _, budget = self.onnx.partition("@")
            try:
                ok = method in self.methods and float(budget) in self.budgets
            except ValueError:
                ok = False
            if not ok:
                self._fail(
                    "onnx",
                    f"must be METHOD@BUDGET of the sweep, i.e. a method of {list(self.methods)} "
                    f"at a budget of {list(self.budgets)} (or None)",
                )


def baseline(
    model_name: str,
    task,
    config: FinetuneConfig,
    *,
    seq_len: int | None = None,
    progress: bool = True,
) -> dict:
    """Fine-tune (cached) and evaluate the dense model: the row every compressed model is compared with.

    ``seq_len`` defaults to the task's typical length (p90 of the training texts), capped at the
    fine-tuning max length. Returns the row (without latency), the loaded model and the run's details.
    """
    from slimformer.data import token_length_stats, typical_seq_len
    from slimformer.models import load_model

    folder, reused = finetune_cached(model_name, task, config, progress=progress)
    model, tokenizer = load_model(str(folder))
    stats = token_length_stats(task.split("train"), tokenizer)
    seq_len = seq_len or min(typical_seq_len(stats), config.max_length)
    row = measure(
        model, tokenizer, task, name=f"{model_name} (dense)", seq_len=seq_len, max_length=config.max_length,
        progress=progress,
    )  # fmt: skip
    return {
        "row": row,
        "model": model,
        "tokenizer": tokenizer,
        "finetuned_model": str(folder),
        "finetune_reused": reused,
        "finetune": json.loads((folder / "finetune_report.json").read_text()),
        "task": {
            "name": task.name,
            "sizes": task.sizes(),
            "content_hash": task.content_hash,
            "labels": task.label_names,
            "token_lengths": stats,
        },
        "seq_len": seq_len,
    }


def run_demo(config: DemoConfig, out_dir: str | Path, *, overwrite: bool = False, progress: bool = True) -> dict:
    """The main job: fine-tune (cached), a short frontier sweep, one ONNX export, ``fit``, plots and a table.

    Every model (dense, each compressed variant, the ONNX one, fit's choice and the peer) is
    evaluated on the test split and timed in the same interleaved rounds. ``report["headline"]``
    holds dense, fit's choice and the peer with fit's speedups over both (see
    :mod:`slimformer.demo_fit`). Writes ``report.json``, ``report.md``, the frontier plots, the
    ONNX folder, ``fit/`` (the chosen model, fit.json) and ``peer/`` into ``out_dir``.
    """
    from slimformer.fsutil import staged_output_dir

    # written into a hidden sibling and moved into place complete: an interrupted run leaves nothing
    with staged_output_dir(out_dir, overwrite=overwrite) as stage:
        return _demo_into(stage, Path(out_dir), config, progress)


def _relocated(value, stage: Path, final: Path):
    """``value`` with every path string under ``stage`` pointing under ``final`` (where it will be)."""
    if isinstance(value, dict):
        return {k: _relocated(v, stage, final) for k, v in value.items()}
    if isinstance(value, list):
        return [_relocated(v, stage, final) for v in value]
    if isinstance(value, str) and value.startswith(str(stage)):
        return str(final) + value[len(str(stage)) :]
    return value


def _demo_into(out: Path, final: Path, config: DemoConfig, progress: bool) -> dict:
    """:func:`run_demo`'s work, written into ``out`` (the staged folder that becomes ``final``)."""
    from slimformer.data import load_task
    from slimformer.pareto import ParetoConfig, compress_points, mark_fronts, plot_frontier, time_points
    from slimformer.report import write_json

    t0 = time.perf_counter()
    task = load_task(config.task)
    recipe = config.finetune or recipe_for(task.name)
    base = baseline(config.model, task, recipe, seq_len=config.seq_len, progress=progress)
    dense_row, model, seq_len = base.pop("row"), base.pop("model"), base["seq_len"]
    tokenizer = base.pop("tokenizer")
    folder, reused = base["finetuned_model"], base["finetune_reused"]
    sweep_config = ParetoConfig(
        methods=config.methods or ("optin",),
        budgets=config.budgets or (1.0,),
        seq_len=seq_len,
        batch_sizes=config.batch_sizes,
        repeats=config.repeats,
        calibration=config.calibration,
        max_length=recipe.max_length,
    )
    dense_name = f"{config.model} (dense)"
    if config.methods:
        points, models = compress_points(model, tokenizer, task, sweep_config, name=dense_name, progress=progress)
    else:
        points, models = [_dense_point(dense_name, dense_row, model)], {dense_name: model}
    onnx_report = None
    if config.onnx is not None:
        onnx_report = _onnx_point(config.onnx, points, models, tokenizer, task, out / "onnx", recipe.max_length)
    facts = None
    if config.fit is not None:
        from slimformer.demo_fit import add_fit_points

        facts = add_fit_points(
            config, model, tokenizer, task, seq_len=seq_len, max_length=recipe.max_length, points=points,
            models=models, out=out, progress=progress,
        )  # fmt: skip
    environment = time_points(points, models, sweep_config, progress=progress)
    mark_fronts(points)
    rows = [_row(p, points[0], seq_len, dense_row) for p in points]
    head = None
    if facts is not None:
        from slimformer.demo_fit import headline

        head = headline(facts, rows)
    plots = {}
    if len(points) > 1:
        title = f"{config.model} on {task.name} (test split)"
        b = config.batch_sizes[0]
        plots["latency"] = str(
            plot_frontier(points, "latency_ms", out / "frontier_latency.png", title=title,
                          xlabel=f"latency at batch {b} x {seq_len} tokens (ms)")
        )  # fmt: skip
        plots["memory"] = str(
            plot_frontier(points, "bytes", out / "frontier_memory.png", title=title, xlabel="weights (MB, as stored)")
        )
    report = {
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": config.model,
        **base,
        "environment": environment,
        "headline": head,
        "rows": rows,
        "onnx": onnx_report,
        "plots": plots,
        "wall_time_s": round(time.perf_counter() - t0, 1),
    }
    report = _relocated(report, out, final)
    write_json(out / "report.json", report)
    (out / "report.md").write_text(_demo_markdown(report, config, task, seq_len, folder, reused))
    return report


def _dense_point(name: str, row: dict, model) -> dict:
    from slimformer.pareto import weight_bytes

    return {"key": name, "method": "dense", "budget": 1.0, "accuracy": row["accuracy"], "params": row["params"],
            "macs": row["macs"], "bytes": weight_bytes(model), "seconds": 0.0}  # fmt: skip


def _onnx_point(spec: str, points, models, tokenizer, task, folder: Path, max_length: int) -> dict:
    """Export the sweep's ``spec`` model as ONNX + onnxruntime int8 (verified); add it as a point to time."""
    from slimformer.onnx_export import ExportConfig, OnnxModel, export_onnx

    source = next(p for p in points if p["key"] == spec)
    texts = [e.text for e in task.split("validation")[:32]]
    report = export_onnx(
        models[spec], tokenizer, folder, ExportConfig(int8=True, max_length=max_length), texts=texts, bench=None,
        progress=False,
    )  # fmt: skip
    onnx = OnnxModel(folder / report["files"]["int8"])
    onnx.config = models[spec].config  # what bench_models reads to build its inputs
    metrics = onnx.evaluate(tokenizer, task.split("test"), num_labels=task.num_labels, max_length=max_length)
    key = f"{spec} onnx-int8"
    points.append(
        {**{k: source[k] for k in ("budget", "params", "macs", "seconds")}, "key": key,
         "method": f"{source['method']} onnx-int8", "accuracy": metrics["accuracy"],
         "bytes": report["bytes"]["int8"]}
    )  # fmt: skip
    models[key] = onnx
    return {"folder": str(folder), "source": spec, "verification": report["verification"], "bytes": report["bytes"]}


def _row(point: dict, dense: dict, seq_len: int, dense_row: dict) -> dict:
    """A table row (report.COLUMNS keys) from a sweep point, with speedups over dense."""
    name = point.get("name") or (point["key"] if point is dense else point["key"].replace("@", " macs="))
    row = {
        "name": name,
        "params": point["params"],
        "macs": point["macs"],
        "seq_len": seq_len,
        "accuracy": point["accuracy"],
        "bytes": point["bytes"],
        "front_latency": point.get("front_latency"),
        "front_memory": point.get("front_memory"),
        "frontier": ("*" if point.get("front_latency") else "") + ("†" if point.get("front_memory") else ""),
        "seconds": point["seconds"],
    }
    for key in point:
        if key.startswith("latency_b") and key.endswith("_ms"):
            row[key] = point[key]
            b = key[len("latency_b") : -len("_ms")]
            row[f"speedup_b{b}"] = dense[key] / point[key]
            row[f"throughput_b{b}"] = int(b) / (point[key] / 1e3)
    if point is dense:
        row["f1_macro"] = dense_row.get("f1_macro")
    return row


def _demo_markdown(report: dict, config: DemoConfig, task, seq_len: int, folder, reused: bool) -> str:
    from slimformer.report import DEMO_COLUMNS, markdown_table

    env = report["environment"]
    md = [
        f"# slimformer run: {config.model} on {task.name}",
        "",
        f"Test split: {task.sizes()['test']} examples (content hash {task.content_hash}). MACs and latency at "
        f"{seq_len} tokens (p90 of the training texts); latency is the median wall clock of {config.repeats} "
        f"runs, all models timed in alternating calls, on {env.get('processor')}, {env.get('torch_threads')} "
        f"threads, torch {env.get('torch')}. 'x' = speedup over dense; weights = bytes as stored "
        "(int8 models: the quantized state dict or ONNX file). Frontier: * accuracy-latency, † accuracy-memory.",
        "",
    ]
    if report.get("headline"):
        from slimformer.demo_fit import headline_markdown

        md += headline_markdown(report["headline"]) + ["## Every model", ""]
    md += [
        markdown_table(report["rows"], DEMO_COLUMNS),
        "",
        f"Fine-tuned model: `{folder}` ({'reused from cache' if reused else 'trained in this run'}).",
    ]
    if report.get("onnx"):
        v = report["onnx"]["verification"]
        md.append(
            f"ONNX export of {report['onnx']['source']}: `{report['onnx']['folder']}`; fp32 max |logit diff| vs "
            f"PyTorch {v['fp32']['max_abs_diff']:.2g}, int8 argmax agreement {v['int8']['argmax_agreement']:.1%}."
        )
    md.append("")
    for name, path in report["plots"].items():
        md += [f"![accuracy vs {name}]({Path(path).name})", ""]
    return "\n".join(md)
