"""The main job: fine-tune (cached) the built-in model on the built-in task, then measure it.

Later compression methods add rows to the same report: every row is measured the same way by
:func:`measure` (test-split metrics, cost model, wall-clock latency).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

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
    from slimformer.models import load_model
    from slimformer.train import finetune

    key_src = json.dumps(
        {"model": model_name, "task": task.name, "data": task.content_hash, "config": config.to_dict()},
        sort_keys=True,
    )
    key = hashlib.sha256(key_src.encode()).hexdigest()[:12]
    slug = "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{model_name}-{task.name}")[-60:]
    folder = cache_dir() / "finetuned" / f"{slug}-{key}"
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
class DemoConfig:
    """The main job's settings (the README's first command uses the defaults)."""

    model: str = field(default="minilm-l6", metadata={"help": "built-in name, local folder or hub id"})
    task: str = field(default="rotten_tomatoes", metadata={"help": "built-in task or a CSV/TSV/JSONL file"})
    finetune: FinetuneConfig | None = field(
        default=None, metadata={"help": "fine-tuning settings; default: the task's built-in recipe (RECIPES)"}
    )
    batch_sizes: tuple[int, ...] = field(default=(1, 32), metadata={"help": "batch sizes to time"})
    repeats: int = field(default=10, metadata={"help": "timed repeats per batch size"})
    seq_len: int | None = field(
        default=None, metadata={"help": "length for MACs and latency; default: the task's p90 length"}
    )
    method: str = field(default="optin", metadata={"help": "one-shot pruning method of the compression step"})
    budgets: tuple[str, ...] = field(
        default=("macs=0.8", "macs=0.6", "macs=0.5", "macs=0.4"),
        metadata={"help": "budgets of the compression step (empty: no compression)"},
    )
    calibration: int = field(default=1024, metadata={"help": "calibration examples from the train split"})

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if self.seq_len is not None and self.seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {self.seq_len}")


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
    """Fine-tune (cached), evaluate on test, measure, and write ``report.json`` + ``report.md``."""
    from slimformer.data import load_task
    from slimformer.export import prepare_output_dir
    from slimformer.report import markdown_table, write_json

    out = prepare_output_dir(out_dir, overwrite=overwrite)
    t0 = time.perf_counter()
    task = load_task(config.task)
    recipe = config.finetune or recipe_for(task.name)
    base = baseline(config.model, task, recipe, seq_len=config.seq_len, progress=progress)
    row, model, seq_len = base.pop("row"), base.pop("model"), base["seq_len"]
    folder, reused = base["finetuned_model"], base["finetune_reused"]
    rows, models = [row], [model]
    pruning = []
    if config.budgets:
        pruned_rows, pruned_models, pruning = compress_step(
            config, task, folder, seq_len, recipe.max_length, progress=progress
        )
        rows += pruned_rows
        models += pruned_models
    logger.info("timing %d models interleaved at %d tokens", len(models), seq_len)
    environment = add_latency(
        rows, models, seq_len=seq_len, batch_sizes=config.batch_sizes, repeats=config.repeats, progress=progress
    )
    base["environment"] = environment
    report = {
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": config.model,
        **base,
        "rows": rows,
        "pruning": pruning,
        "wall_time_s": round(time.perf_counter() - t0, 1),
    }
    write_json(out / "report.json", report)
    plot = None
    if len(rows) > 1:
        from slimformer.report import plot_accuracy_vs_macs

        plot = plot_accuracy_vs_macs(rows, out / "accuracy_vs_macs.png", title=f"{config.model} on {task.name}")
        report["plot"] = str(plot)
    md = [
        f"# slimformer run: {config.model} on {task.name}",
        "",
        f"Test split: {task.sizes()['test']} examples (content hash {task.content_hash}). "
        f"MACs and latency at {seq_len} tokens (p90 of the training texts); latency is the median "
        f"wall clock of {config.repeats} runs, all models timed in alternating calls, on "
        f"{environment.get('processor')}, "
        f"{environment.get('torch_threads')} threads, torch {environment.get('torch')}.",
        "",
        markdown_table(report["rows"]),
        "",
        f"Fine-tuned model: `{folder}` ({'reused from cache' if reused else 'trained in this run'}).",
        "",
    ]
    if plot is not None:
        md += [f"![accuracy vs MACs]({plot.name})", ""]
    (out / "report.md").write_text("\n".join(md))
    return report


def compress_step(config: DemoConfig, task, folder: Path, seq_len: int, max_length: int, *, progress: bool = True):
    """Prune the fine-tuned model at each budget (scores computed once); evaluate every result.

    Returns the rows (without latency), the pruned models and the pruning reports.
    """
    from slimformer.budget import Budget
    from slimformer.models import load_model
    from slimformer.static import PruneConfig, calibration_batches, prune, score

    model, tokenizer = load_model(str(folder))
    batches = calibration_batches(task.split("train"), tokenizer, size=config.calibration, max_length=max_length)
    budgets = []
    for text in config.budgets:
        budget = Budget.parse(text)
        if "seq" not in text:  # measure MACs at the length the table reports
            budget = dataclasses.replace(budget, seq_len=seq_len)
        budgets.append(budget)
    importance = score(
        model, PruneConfig.from_dict({"method": config.method, "budget": budgets[0]}), batches, progress=progress
    )
    rows, models, reports = [], [], []
    for budget in budgets:
        cfg = PruneConfig.from_dict({"method": config.method, "budget": budget})
        result = prune(model, cfg, batches, importance=importance, progress=progress)
        rows.append(
            measure(
                result.model, tokenizer, task, name=f"{config.method} {budget}", seq_len=seq_len,
                max_length=max_length, progress=progress,
            )
        )  # fmt: skip
        models.append(result.model)
        reports.append({k: v for k, v in result.report.items() if k != "repair"})
    return rows, models, reports
