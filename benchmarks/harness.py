"""What every benchmark script shares: options, environment record, report header, logging, atomic writes.

A script builds its parser with :func:`parser`, which adds the four options every benchmark takes:

- ``--out``: the results JSON path (the markdown report is written beside it, same stem, ``.md``);
- ``--smoke``: a tiny random-weight BERT and a few examples per split, so the script runs in seconds
  (the smoke test runs every script this way; the numbers mean nothing);
- ``--model``: the model to compress (built-in name, local folder or hub id);
- ``--seed``: the seed of everything random the script does not seed itself.

:func:`start` parses, sets up logging and seeds, and in smoke mode points the fine-tuning cache at a
temporary folder and ``--model`` at a tiny model. :func:`finetuned` and :func:`load_task_for` give a
script its fine-tuned model and task (real or smoke). :func:`write_results` stamps the environment
(:func:`environment`) into the results and writes the JSON and markdown atomically.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs"

#: Examples per split in smoke runs: every class of the built-in tasks appears, and a batch of 32 fills.
SMOKE_EXAMPLES = 40

logger = logging.getLogger("benchmarks")


def parser(script: str, description: str, *, out: str, model: str = "minilm-l6") -> argparse.ArgumentParser:
    """An argument parser with ``--out``, ``--smoke``, ``--model``, ``--seed`` and ``--log-level``.

    Args:
        script: the script's ``__file__`` (names it in the report's command line).
        description: the script's docstring (its first line becomes the description).
        out: default results file name under ``benchmarks/results`` (e.g. ``"dense_baseline.json"``).
        model: default ``--model``.
    """
    p = argparse.ArgumentParser(
        prog=Path(script).name,
        description=description.strip().splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--out",
        type=Path,
        default=RESULTS / out,
        help="results JSON path (markdown beside it); a bare name is a file stem under benchmarks/results",
    )
    p.add_argument("--smoke", action="store_true", help="tiny random model, few examples: checks the script runs")
    p.add_argument("--model", default=model, help="built-in model name, local folder or hub id")
    p.add_argument("--seed", type=int, default=0, help="seed of the script's own randomness")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


def start(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``, set up logging and seeds; in smoke mode, use a tiny model and a temporary cache.

    The parsed namespace gains ``command`` (the command line, for the report) and ``smoke_dir``
    (the temporary folder of a smoke run, else ``None``).
    """
    args = p.parse_args(argv)
    if args.out.suffix != ".json":  # the scripts' former ``--out STEM``
        args.out = (RESULTS if args.out.parent == Path(".") else args.out.parent) / f"{args.out.name}.json"
    setup_logging(args.log_level)
    seed_everything(args.seed)
    args.command = f"python benchmarks/{p.prog} " + " ".join(sys.argv[1:] if argv is None else argv)
    args.smoke_dir = None
    if args.smoke:
        args.smoke_dir = Path(tempfile.mkdtemp(prefix="slimformer-smoke-"))
        atexit.register(shutil.rmtree, args.smoke_dir, ignore_errors=True)
        os.environ["SLIMFORMER_CACHE"] = str(args.smoke_dir / "cache")
        args.model = str(smoke_model(args.smoke_dir / "model"))
    return args


def setup_logging(level: str = "INFO") -> None:
    """Timestamped messages on stderr (stdout carries the report)."""
    logging.basicConfig(
        level=getattr(logging, level), format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr, force=True
    )


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's generators."""
    import torch

    random.seed(seed)
    torch.manual_seed(seed)


def smoke_model(folder: Path) -> Path:
    """Save a tiny random BERT (hidden 32, 2 layers, 4 heads) with the built-in model's tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from slimformer.models import resolve_model_path

    if (folder / "config.json").exists():
        return folder
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm-l6"))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    # a base model without a classifier: load_model adds one sized to the task, as for MiniLM
    BertForMaskedLM(config).bert.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def load_task_for(name: str, args: argparse.Namespace):
    """The built-in task ``name``; in smoke mode only its first :data:`SMOKE_EXAMPLES` per split."""
    from slimformer.data import load_task

    task = load_task(name)
    if not args.smoke:
        return task
    splits = {k: v[:SMOKE_EXAMPLES] for k, v in task.splits.items()}
    return replace(task, splits=splits, content_hash=task.content_hash + "-smoke")


def task_file(name: str, args: argparse.Namespace) -> str:
    """A task name for APIs that load the task themselves: ``name``, or in smoke mode a small CSV of it."""
    if not args.smoke:
        return name
    import csv

    from slimformer.data import load_task

    task = load_task(name)
    path = args.smoke_dir / f"{name}.csv"
    examples = [e for split in task.splits.values() for e in split[:SMOKE_EXAMPLES]]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows((e.text, task.label_names[e.label]) for e in examples)
    return str(path)


def recipe(name: str, args: argparse.Namespace, **changes: Any):
    """The built-in fine-tuning recipe of task ``name`` (with ``changes``); two steps in smoke mode."""
    from slimformer.pipeline import recipe_for

    config = recipe_for(name)
    if args.smoke:
        changes = {**changes, "max_steps": 2, "epochs": 1, "batch_size": 8}
    return replace(config, **changes) if changes else config


def finetuned(name: str, args: argparse.Namespace, **changes: Any) -> tuple[Path, Any, Any]:
    """Fine-tune ``args.model`` on task ``name`` (cached); returns ``(folder, task, recipe)``."""
    from slimformer.pipeline import finetune_cached

    task = load_task_for(name, args)
    config = recipe(name, args, **changes)
    folder, _ = finetune_cached(args.model, task, config, progress=False)
    return folder, task, config


def git_commit() -> str | None:
    """The checkout's commit (``+dirty`` when there are uncommitted changes), or ``None`` outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha + ("+dirty" if dirty else "")


def environment() -> dict[str, Any]:
    """Where the numbers were taken: versions, CPU, cores, threads, git commit and date."""
    from slimformer.bench import environment as bench_environment

    env = bench_environment()
    env["git_commit"] = git_commit()
    env["machine"] = platform.machine()
    return env


def header(title: str, args: argparse.Namespace, env: dict[str, Any]) -> str:
    """The report's first lines: title, command, and the environment it ran in."""
    lines = [f"# {title}", ""]
    if getattr(args, "smoke", False):
        lines += ["**Smoke run** (tiny random model, few examples): the numbers mean nothing.", ""]
    lines += [
        f"Command: `{args.command}`",
        "",
        f"Environment: {env['processor']}, {env['logical_cores']} cores, {env['torch_threads']} torch threads, "
        f"Python {env['python']}, torch {env['torch']}, transformers {env['transformers']}, "
        f"commit {env.get('git_commit')}, {env['datetime_utc']}.",
        "",
    ]
    return "\n".join(lines)


def atomic_write(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path, data: Any) -> Path:
    """Atomically write ``data`` as indented JSON (non-JSON values as strings)."""
    return atomic_write(path, json.dumps(data, indent=2, default=str) + "\n")


def write_results(path: Path, report: dict[str, Any], markdown: str | None = None) -> Path:
    """Write ``report`` (with ``environment`` and ``command`` filled in) and its markdown beside it.

    A report that already records an ``environment`` (the one its timings ran in) keeps it.
    Returns the JSON path.
    """
    path = Path(path)
    report.setdefault("environment", environment())
    report["environment"].setdefault("git_commit", git_commit())
    write_json(path, report)
    if markdown is not None:
        atomic_write(path.with_suffix(".md"), markdown.rstrip("\n") + "\n")
    logger.info("wrote %s", path)
    return path


def sibling(path: Path, suffix: str) -> Path:
    """``results/x.json`` -> ``results/x_<suffix>.json`` (the per-task files of multi-task scripts)."""
    path = Path(path)
    return path.with_name(f"{path.stem}_{suffix}{path.suffix}")
