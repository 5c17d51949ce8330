"""Effect of least-squares repair (:func:`slimformer.static.repair.repair`) on a pruned MiniLM-L6.

Prunes the fine-tuned MiniLM-L6 (rotten_tomatoes) with a simple magnitude rule, per layer: the 1/3
of heads with the smallest ``||W_v[head]|| * ||W_o[:, head]||`` and the 50% of FFN neurons with the
smallest ``||W_in[j]|| * ||W_out[:, j]||``; then repairs it with 512 training examples for a few
ridge values and reports VALIDATION accuracy (never test) with and without repair, the per-layer
fit errors and the repair time (next to the time of one dense forward pass over the same
calibration data, since this machine is shared and absolute times drift).

    .venv/bin/python benchmarks/repair_effect.py [--threads 1] [--calibration 512] [--ridges 1e-3,1e-2,1e-1]
"""

from __future__ import annotations

import copy
import os
import random
import time

import harness
import torch

from slimformer.arch import get_adapter
from slimformer.data import make_loader
from slimformer.evaluate import evaluate
from slimformer.models import load_model
from slimformer.static.repair import repair
from slimformer.surgery import KeepPlan, apply_plan

TASK = "rotten_tomatoes"


@torch.no_grad()
def magnitude_plan(model, head_fraction: float, ffn_fraction: float) -> KeepPlan:
    """Per layer, remove the lowest-magnitude ``head_fraction`` of heads and ``ffn_fraction`` of neurons."""
    adapter = get_adapter(model)
    heads, neurons = {}, {}
    for i, layer in enumerate(adapter.layers(model)):
        att, ffn = adapter.attention(layer), adapter.ffn(layer)
        h, s = att.num_heads, att.head_size
        v = att.v.weight.view(h, s, -1).flatten(1).norm(dim=1)  # (H,)
        o = att.o.weight.view(-1, h, s).transpose(0, 1).flatten(1).norm(dim=1)  # (H,)
        heads[i] = torch.argsort(v * o)[: round(h * head_fraction)].tolist()
        score = ffn.fc_in.weight.norm(dim=1) * ffn.fc_out.weight.norm(dim=0)  # (F,)
        neurons[i] = torch.argsort(score)[: round(ffn.width * ffn_fraction)].tolist()
    return KeepPlan.removing(model, heads=heads, neurons=neurons)


def accuracy(model, tokenizer, examples, max_length: int) -> float:
    return evaluate(model, tokenizer, examples, max_length=max_length, progress=False)["accuracy"]


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__file__, __doc__, out="repair_effect.json")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--calibration", type=int, default=512, help="training examples to repair on")
    parser.add_argument("--ridges", default="1e-3,1e-2,1e-1")
    args = harness.start(parser, argv)
    torch.set_num_threads(args.threads)

    folder, task, recipe = harness.finetuned(TASK, args)
    max_length = recipe.max_length
    dense, tokenizer = load_model(str(folder))
    validation = task.split("validation")
    train = task.split("train")
    calib_examples = random.Random(args.seed).sample(train, min(args.calibration, len(train)))
    batches = list(make_loader(calib_examples, tokenizer, batch_size=32, max_length=max_length))

    t0 = time.perf_counter()
    with torch.no_grad():
        for b in batches:
            dense(**{k: v for k, v in b.items() if k != "labels"})
    dense_forward_s = time.perf_counter() - t0

    plan = magnitude_plan(dense, 1 / 3, 0.5)
    pruned = apply_plan(copy.deepcopy(dense), plan)
    rows = [
        {"model": "dense", "ridge": None, "val_accuracy": accuracy(dense, tokenizer, validation, max_length)},
        {
            "model": "pruned, no repair",
            "ridge": None,
            "val_accuracy": accuracy(pruned, tokenizer, validation, max_length),
        },
    ]
    runs = {}
    for ridge in (float(r) for r in args.ridges.split(",")):
        repaired = copy.deepcopy(pruned)
        stats = repair(repaired, dense, batches, ridge=ridge, progress=False)
        acc = accuracy(repaired, tokenizer, validation, max_length)
        rows.append({"model": "pruned + repair", "ridge": ridge, "val_accuracy": acc, "repair_s": stats["seconds"]})
        runs[str(ridge)] = stats

    report = {
        "command": args.command,
        "model": str(folder),
        "plan": "magnitude, per layer: a third of the heads and half of the FFN neurons removed",
        "calibration": {
            "examples": len(calib_examples),
            "tokens": next(iter(runs.values()))["tokens"],
            "seed": args.seed,
        },
        "validation_examples": len(validation),
        "dense_forward_over_calibration_s": dense_forward_s,
        "load_average": os.getloadavg(),
        "rows": rows,
        "repair_stats": runs,
        "environment": harness.environment(),
    }

    lines = [
        harness.header(
            "Least-squares repair of a magnitude-pruned MiniLM-L6 (rotten_tomatoes)", args, report["environment"]
        ),
        f"Pruned per layer by weight magnitude: 4/12 heads and 768/1536 FFN neurons. Repair on {len(calib_examples)} "
        f"training examples ({report['calibration']['tokens']} tokens, max length {max_length}); accuracy on the "
        f"{len(validation)} VALIDATION examples. {args.threads} torch thread(s) on a shared machine "
        f"(load average {report['load_average'][0]:.1f}); one dense forward over the calibration batches took "
        f"{dense_forward_s:.1f} s.",
        "",
        "| model | ridge | val accuracy | repair time (s) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        ridge = "" if r["ridge"] is None else f"{r['ridge']:g}"
        secs = f"{r['repair_s']:.1f}" if "repair_s" in r else ""
        lines.append(f"| {r['model']} | {ridge} | {r['val_accuracy']:.4f} | {secs} |")
    default = runs.get("0.01") or next(iter(runs.values()))
    lines += [
        "",
        f"Per-layer relative fit error `||target - residual sum|| / ||target||`, before -> after (ridge "
        f"{default['ridge']:g}); output = relative error of the repaired layer's output vs the dense layer's:",
        "",
        "| layer | attention | FFN | output |",
        "|---|---|---|---|",
    ]
    for e in default["layers"]:
        a, f = e["attention"], e["ffn"]
        lines.append(
            f"| {e['layer']} | {a['before']:.3f} -> {a['after']:.3f} | {f['before']:.3f} -> {f['after']:.3f} "
            f"| {e['output_error']:.3f} |"
        )
    md = "\n".join(lines) + "\n"
    harness.write_results(args.out, report, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
