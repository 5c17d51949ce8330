"""The main job: fine-tune (cached) the built-in model on the built-in task, then measure it.

Later compression methods add rows to the same report: every row is measured the same way by
:func:`measure` (test-split metrics, cost model, wall-clock latency).
"""

from __future__ import annotations

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


def measure(
    model,
    tokenizer,
    task,
    *,
    name: str,
    seq_len: int,
    batch_sizes: tuple[int, ...] = (1, 32),
    repeats: int = 10,
    max_length: int = 128,
    progress: bool = True,
) -> dict:
    """One report row: test metrics, params/MACs/bytes from the cost model, wall-clock latency."""
    from slimformer.bench import BenchConfig, bench_model
    from slimformer.cost import cost_of
    from slimformer.evaluate import evaluate
    from slimformer.structure import Structure

    metrics = evaluate(model, tokenizer, task.split("test"), max_length=max_length, progress=progress)
    cost = cost_of(Structure.from_model(model), seq_len)
    bench = bench_model(
        model, BenchConfig(batch_sizes=batch_sizes, seq_len=seq_len, repeats=repeats), progress=progress
    )
    row = {
        "name": name,
        "params": cost.params,
        "encoder_params": cost.encoder_params,
        "bytes_fp32": cost.bytes_fp32,
        "macs": cost.macs,
        "seq_len": seq_len,
        **{k: metrics[k] for k in ("accuracy", "f1_macro", "mcc", "n") if k in metrics},
        "layers": [{"heads": x["heads"], "ffn": x["ffn"]} for x in cost.layers],
    }
    for r in bench["results"]:
        b = r["batch_size"]
        row[f"latency_b{b}_ms"] = r["median_ms"]
        row[f"latency_b{b}_iqr_ms"] = r["iqr_ms"]
        row[f"throughput_b{b}"] = r["throughput_seq_per_s"]
    row["environment"] = bench["environment"]
    return row


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """The main job's settings (the README's first command uses the defaults)."""

    model: str = field(default="minilm-l6", metadata={"help": "built-in name, local folder or hub id"})
    task: str = field(default="rotten_tomatoes", metadata={"help": "built-in task or a CSV/TSV/JSONL file"})
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    batch_sizes: tuple[int, ...] = field(default=(1, 32), metadata={"help": "batch sizes to time"})
    repeats: int = field(default=10, metadata={"help": "timed repeats per batch size"})
    seq_len: int | None = field(
        default=None, metadata={"help": "length for MACs and latency; default: the task's p90 length"}
    )

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
    batch_sizes: tuple[int, ...] = (1, 32),
    repeats: int = 10,
    progress: bool = True,
) -> dict:
    """Fine-tune (cached) and measure the dense model: the row every compressed model is compared with.

    ``seq_len`` defaults to the task's typical length (p90 of the training texts), capped at the
    fine-tuning max length. Returns the row, the run's details and the environment.
    """
    from slimformer.data import token_length_stats, typical_seq_len
    from slimformer.models import load_model

    folder, reused = finetune_cached(model_name, task, config, progress=progress)
    model, tokenizer = load_model(str(folder))
    stats = token_length_stats(task.split("train"), tokenizer)
    seq_len = seq_len or min(typical_seq_len(stats), config.max_length)
    row = measure(
        model,
        tokenizer,
        task,
        name=f"{model_name} (dense)",
        seq_len=seq_len,
        batch_sizes=batch_sizes,
        repeats=repeats,
        max_length=config.max_length,
        progress=progress,
    )
    environment = row.pop("environment")
    return {
        "row": row,
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
        "environment": environment,
    }


def run_demo(config: DemoConfig, out_dir: str | Path, *, overwrite: bool = False, progress: bool = True) -> dict:
    """Fine-tune (cached), evaluate on test, measure, and write ``report.json`` + ``report.md``."""
    from slimformer.data import load_task
    from slimformer.export import prepare_output_dir
    from slimformer.report import markdown_table, write_json

    out = prepare_output_dir(out_dir, overwrite=overwrite)
    t0 = time.perf_counter()
    task = load_task(config.task)
    base = baseline(
        config.model,
        task,
        config.finetune,
        seq_len=config.seq_len,
        batch_sizes=config.batch_sizes,
        repeats=config.repeats,
        progress=progress,
    )
    row, environment, seq_len = base.pop("row"), base["environment"], base["seq_len"]
    folder, reused = base["finetuned_model"], base["finetune_reused"]
    report = {
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": config.model,
        **base,
        "rows": [row],
        "wall_time_s": round(time.perf_counter() - t0, 1),
    }
    write_json(out / "report.json", report)
    md = [
        f"# slimformer run: {config.model} on {task.name}",
        "",
        f"Test split: {task.sizes()['test']} examples (content hash {task.content_hash}). "
        f"MACs and latency at {seq_len} tokens (p90 of the training texts); latency is the median "
        f"wall clock of {config.repeats} runs on {environment.get('processor')}, "
        f"{environment.get('torch_threads')} threads, torch {environment.get('torch')}.",
        "",
        markdown_table(report["rows"]),
        "",
        f"Fine-tuned model: `{folder}` ({'reused from cache' if reused else 'trained in this run'}).",
        "",
    ]
    (out / "report.md").write_text("\n".join(md))
    return report
