"""`slimformer fit` on MiniLM-L6 at several latency targets, beside the outside peer: met on test inputs? how long?

For each batch size and target (a speedup over dense PyTorch fp32 at that batch and the task's typical
length, e.g. ``latency=0.5,batch=1,seq=48``) this runs :func:`slimformer.fit.fit` on the cached
fine-tune (with ``--max-drop``: the fastest candidate within that many validation points of dense),
then times the chosen model, dense and the peer (dense -> onnxruntime's transformer optimizer ->
dynamic int8, :mod:`slimformer.ort_peer`; what Optimum users get) again, interleaved, on real TEST
texts padded to the budget's length, and reports whether the choice met its target there within
10%, its test accuracy beside dense and the peer, fit's speed over the peer, and the search time.
Writes benchmarks/results/fit.{json,md} (or ``--out``).

    .venv/bin/python benchmarks/fit.py [--task rotten_tomatoes] [--seq-len 128] [--targets 0.5,0.35,0.25]
        [--batches 1,32] [--max-drop 1.0] [--val-examples 600] [--repeats 10]
"""

from __future__ import annotations

import gc
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
import torch

TOLERANCE = 0.10  # the bar: within 10% of the target on test inputs


def test_batches(tokenizer, examples, *, batch_size: int, seq_len: int, count: int) -> list[dict]:
    """``count`` batches of real test texts, each padded or truncated to exactly ``seq_len`` tokens."""
    texts = [e.text for e in examples]
    batches = []
    for i in range(count):
        chunk = [texts[(i * batch_size + j) % len(texts)] for j in range(batch_size)]
        enc = tokenizer(chunk, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")
        batches.append(dict(enc))
    return batches


def _call(model, inputs: dict):
    from slimformer.onnx_runtime import OnnxModel

    if isinstance(model, OnnxModel):
        feeds = model.feeds(inputs)
        return lambda: model.run(feeds)
    return lambda: model(**inputs)


@torch.inference_mode()
def time_on_test(models: dict[str, Any], batches: list[dict], *, rounds: int) -> dict[str, float]:
    """Median ms per call of each model over ``rounds`` passes of ``batches``, the models interleaved per batch."""
    calls = {name: [_call(m, b) for b in batches] for name, m in models.items()}
    for fns in calls.values():  # warm up
        fns[0]()
    times: dict[str, list[float]] = {name: [] for name in models}
    gc.collect()
    for r in range(rounds):
        names = list(models) if r % 2 == 0 else list(models)[::-1]
        for i in range(len(batches)):
            for name in names:
                start = time.perf_counter()
                calls[name][i]()
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def run_target(model, tokenizer, task, target: float, batch: int, args, seq_len: int, peer) -> dict[str, Any]:
    """Fit one latency target at one batch size and check the choice on test inputs beside dense and the peer."""
    from slimformer.fit import FitConfig, NoFit, fit

    budget = f"latency={target},batch={batch},seq={seq_len}"
    config = FitConfig(
        budget=budget, calibration=args.calibration, repeats=args.repeats, val_examples=args.val_examples,
        max_length=args.max_length, budgets=tuple(float(b) for b in args.budgets.split(",")),
        max_drop=args.max_drop,
    )  # fmt: skip
    start = time.perf_counter()
    try:
        result = fit(model, config, task, tokenizer, progress=False)
    except NoFit as exc:
        return {"target": target, "batch": batch, "budget": budget, "fit": False, "message": str(exc),
                "report": exc.report, "search_s": round(time.perf_counter() - start, 1)}  # fmt: skip
    search_s = time.perf_counter() - start
    report = result.report
    count = max(3, args.test_batches * 8 // (8 + batch))  # fewer big batches: about the same time per model
    batches = test_batches(tokenizer, task.split("test"), batch_size=batch, seq_len=seq_len, count=count)
    models = {"dense": model, "chosen": result.model, "peer": peer["model"]}
    ms = time_on_test(models, batches, rounds=args.test_rounds)
    limit_test = target * ms["dense"]
    chosen = next(r for r in report["candidates"] if r["key"] == report["choice"]["key"])
    test_acc = report["test"]["chosen"]["accuracy"]
    return {
        "target": target,
        "batch": batch,
        "max_drop": args.max_drop,
        "budget": budget,
        "fit": True,
        "chosen": chosen["key"],
        "candidates": len(report["candidates"]),
        "search_s": round(search_s, 1),
        "val_accuracy": {"chosen": chosen["val_accuracy"], "dense": report["dense"]["val_accuracy"]},
        "test_accuracy": {k: report["test"][k]["accuracy"] for k in ("chosen", "dense")},
        "search_latency_ms": {"chosen": chosen["latency_ms"], "dense": report["dense"]["latency_ms"]},
        "test_inputs_ms": ms,
        "test_batches": count,
        "test_speedup": ms["dense"] / ms["chosen"],
        "peer": {"test_accuracy": peer["test_accuracy"], "test_speedup": ms["dense"] / ms["peer"]},
        "fit_vs_peer": ms["peer"] / ms["chosen"],
        "fit_at_least_as_accurate_as_peer": test_acc >= peer["test_accuracy"],
        "test_limit_ms": limit_test,
        "met_on_test_within_10pct": ms["chosen"] <= (1 + TOLERANCE) * limit_test,
        "report": report,
    }


def build_peer_model(model, tokenizer, task, args, folder) -> dict[str, Any]:
    """The peer (dense -> onnxruntime optimizer -> dynamic int8), verified, with its test accuracy."""
    from slimformer.ort_peer import build_peer

    texts = [e.text for e in task.split("validation")[:32]]
    peer, info = build_peer(model, tokenizer, folder, texts=texts, max_length=args.max_length)
    metrics = peer.evaluate(tokenizer, task.split("test"), num_labels=task.num_labels, max_length=args.max_length)
    return {"model": peer, "info": info, "test_accuracy": metrics["accuracy"]}


def markdown(rows: list[dict], args, env: dict, seq_len: int, peer: dict) -> str:
    drop = f", the fastest within {args.max_drop:g} validation points of dense" if args.max_drop is not None else ""
    lines = [
        harness.header(f"`slimformer fit` at latency targets: MiniLM-L6 on {args.task}", args, env),
        f"Targets are speedups over dense PyTorch fp32 at the row's batch x {seq_len} tokens{drop}. fit times "
        "every candidate on random ids and scores it on validation; afterwards the choice, dense and the peer "
        f"(dense -> onnxruntime optimizer -> dynamic int8, test accuracy {peer['test_accuracy']:.4f}) are timed "
        f"again, interleaved, on batches of real test texts x {args.test_rounds} rounds. Met = test-input latency "
        "<= 1.1 x target x dense.",
        "",
        "| batch | target | chosen | candidates | search s | val acc (dense) | test acc (dense) | search ms (dense) "
        "| test-input ms (dense) | speedup on test | met within 10% | peer speedup | fit vs peer |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if not r["fit"]:
            lines.append(
                f"| {r['batch']} | {r['target']} | no fit: {r['message']} | | {r['search_s']:.0f} | | | | | | no | | |"
            )
            continue
        va, ta, sm, tm = r["val_accuracy"], r["test_accuracy"], r["search_latency_ms"], r["test_inputs_ms"]
        lines.append(
            f"| {r['batch']} | {r['target']} ({1 / r['target']:.1f}x) | `{r['chosen']}` | {r['candidates']} | "
            f"{r['search_s']:.0f} | {va['chosen']:.4f} ({va['dense']:.4f}) | {ta['chosen']:.4f} ({ta['dense']:.4f}) | "
            f"{sm['chosen']:.2f} ({sm['dense']:.2f}) | {tm['chosen']:.2f} ({tm['dense']:.2f}) | "
            f"{r['test_speedup']:.2f}x | {'yes' if r['met_on_test_within_10pct'] else 'no'} | "
            f"{r['peer']['test_speedup']:.2f}x | {r['fit_vs_peer']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from slimformer.data import token_length_stats, typical_seq_len
    from slimformer.models import load_model

    parser = harness.parser(__file__, __doc__, out="fit.json")
    parser.add_argument("--task", default="rotten_tomatoes")
    parser.add_argument("--targets", default="0.5,0.35,0.25", help="latency targets as fractions of dense")
    parser.add_argument("--batches", default="1", help="batch sizes of the latency budget (each with every target)")
    parser.add_argument("--seq-len", type=int, default=None, help="budget length; default: the task's p90 length")
    parser.add_argument("--max-drop", type=float, default=None, help="fit's max_drop (validation points)")
    parser.add_argument("--budgets", default="0.8,0.6,0.5,0.4,0.3", help="MACs fractions fit also tries")
    parser.add_argument("--val-examples", type=int, default=None, help="score on the first N validation examples")
    parser.add_argument("--calibration", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per candidate inside fit")
    parser.add_argument("--test-batches", type=int, default=20, help="test batches at batch 1 (fewer when larger)")
    parser.add_argument("--test-rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch (and onnxruntime) threads; default torch's")
    args = harness.start(parser, argv)
    if args.threads:
        torch.set_num_threads(args.threads)  # fit gives onnxruntime the same count
    if args.smoke:
        args.targets, args.budgets, args.calibration, args.repeats = "0.9", "0.5", 16, 2
        args.test_batches, args.test_rounds, args.batches = 3, 2, "1,4"

    folder, task, recipe = harness.finetuned(args.task, args)
    model, tokenizer = load_model(str(folder))
    args.max_length = recipe.max_length
    p90 = min(typical_seq_len(token_length_stats(task.split("train"), tokenizer)), recipe.max_length)
    seq_len = args.seq_len or p90
    with tempfile.TemporaryDirectory() as tmp:
        peer = build_peer_model(model, tokenizer, task, args, Path(tmp) / "peer")
        rows = []
        for batch in (int(b) for b in args.batches.split(",")):
            for target in (float(t) for t in args.targets.split(",")):
                harness.logger.info("fit at latency target %.2f of dense (batch %d, seq %d)", target, batch, seq_len)
                rows.append(run_target(model, tokenizer, task, target, batch, args, seq_len, peer))
    env = next((r["report"]["environment"] for r in rows if r.get("report")), {}) | harness.environment()
    peer_facts = {"test_accuracy": peer["test_accuracy"], **peer["info"]}
    peer_facts.pop("folder")
    report = {"command": args.command, "task": args.task, "seq_len": seq_len, "p90_seq_len": p90,
              "max_drop": args.max_drop, "finetuned_model": str(folder), "peer": peer_facts, "rows": rows,
              "environment": env}  # fmt: skip
    md = markdown(rows, args, env, seq_len, peer)
    harness.write_results(args.out, report, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
