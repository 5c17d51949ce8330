"""A real accuracy for ViT: a tiny ViT fine-tuned on the built-in digits images, pruned one-shot.

scikit-learn's ``load_digits`` ships 1,797 real 8 x 8 handwritten digits; the built-in task
``digits`` splits them 80/10/10, stratified and seeded. A tiny ViT (16 x 16 grayscale input, the
digits upsampled by its image processor, 4 x 4 patches = 16 patches + [CLS], hidden 64, 4 layers
of 4 heads, FFN 128) is fine-tuned on train with the repo's trainer, then pruned with OPTIN (and
Fisher, magnitude for reference) to 0.6 and 0.4 of its MACs with no retraining, each model saved
and loaded back (``trust_remote_code`` folder) and scored on the test split.

    .venv/bin/python benchmarks/vit_digits.py [--epochs 30] [--calib 1024] [--smoke]

Writes benchmarks/results/vit_digits.{json,md}.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import harness
import torch
from transformers import AutoModelForImageClassification, ViTConfig

from slimformer.cost import cost_of
from slimformer.data import load_task
from slimformer.evaluate import evaluate
from slimformer.export import save_model
from slimformer.images import ImageProcessor
from slimformer.models import load_model
from slimformer.static import PruneConfig, calibration_batches, prune
from slimformer.structure import Structure
from slimformer.train import FinetuneConfig, finetune

FRACTIONS = (0.6, 0.4)
METHODS = ("optin", "fisher", "magnitude")


def digits_vit(label_names: list[str], seed: int):
    """The tiny random ViT the run fine-tunes, and its image processor (mean 0.5, std 0.5)."""
    config = ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=1,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={n: i for i, n in enumerate(label_names)},
    )
    torch.manual_seed(seed)
    return AutoModelForImageClassification.from_config(config), ImageProcessor.for_model(config)


def test_accuracy(model, processor, task) -> dict:
    return evaluate(model, processor, task.split("test"), progress=False)


def main(argv: list[str] | None = None) -> int:
    p = harness.parser(__file__, __doc__, out="vit_digits.json")
    p.add_argument("--epochs", type=int, default=30, help="fine-tuning epochs of the tiny ViT")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of the fine-tune")
    p.add_argument("--calib", type=int, default=1024, help="calibration images (from train)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    args = harness.start(p, argv)
    torch.set_num_threads(args.threads)
    task = harness.load_task_for("digits", args) if args.smoke else load_task("digits")
    if args.smoke:
        args.epochs, args.calib = 1, 32
    work = Path(args.smoke_dir or tempfile.mkdtemp(prefix="vit-digits-"))
    model, processor = digits_vit(task.label_names, args.seed)
    t0 = time.perf_counter()
    config = FinetuneConfig(epochs=args.epochs, lr=args.lr, batch_size=32, seed=args.seed)
    finetune(model, processor, task, config, work / "dense", progress=False)
    finetune_s = time.perf_counter() - t0
    dense, processor = load_model(str(work / "dense"), require_head=True)
    dense_cost = cost_of(Structure.from_model(dense))
    rows = {"dense": {"macs": 1.0, "params": dense_cost.params, "test": test_accuracy(dense, processor, task)}}
    harness.logger.info("dense: %s", rows["dense"]["test"])
    calib = calibration_batches(task.split("train"), processor, size=args.calib, seed=args.seed)
    for method in METHODS:
        for fraction in FRACTIONS:
            cfg = PruneConfig.from_dict({"method": method, "budget": f"macs={fraction}", "seed": args.seed})
            result = prune(dense, cfg, calib, progress=False)
            folder = save_model(result.model, processor, work / f"{method}-{fraction}")
            small, _ = load_model(str(folder), require_head=True)  # what a user gets back
            rows[f"{method}@macs={fraction}"] = {
                "macs": result.report["relative"]["macs"],
                "params": result.report["params"],
                "layers": result.report["layers"],
                "seconds": result.report["seconds"]["total"],
                "test": test_accuracy(small, processor, task),
            }
            harness.logger.info("%s @ %s: %s", method, fraction, rows[f"{method}@macs={fraction}"]["test"])
    report = {
        "task": {"name": "digits", "sizes": task.sizes(), "content_hash": task.content_hash},
        "model": {
            "config": {
                k: getattr(dense.config, k)
                for k in (
                    "image_size",
                    "patch_size",
                    "num_channels",
                    "hidden_size",
                    "num_hidden_layers",
                    "num_attention_heads",
                    "intermediate_size",
                )
            },
            "tokens": dense_cost.seq_len,
            "macs": dense_cost.macs,
        },  # fmt: skip
        "finetune": {"epochs": args.epochs, "lr": args.lr, "seconds": round(finetune_s, 1)},
        "calibration": args.calib,
        "rows": rows,
        "environment": harness.environment(),
    }
    harness.write_results(args.out, report, markdown(report, args))
    return 0


def markdown(report: dict, args) -> str:
    lines = [harness.header("ViT on the digits images", args, report["environment"]), ""]
    lines += ["| model | MACs | params | test accuracy % | seconds |", "|---|---|---|---|---|"]
    for name, row in report["rows"].items():
        lines.append(
            f"| {name} | {row['macs']:.2f} | {row['params']:,} | {100 * row['test']['accuracy']:.2f} | "
            f"{row.get('seconds', '-')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
