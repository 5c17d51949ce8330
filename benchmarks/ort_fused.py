"""Fused onnxruntime graphs (attention per layer + transformer optimizer) on dense and OPTIN-pruned MiniLM-L6.

MiniLM-L6 (a new random 2-class head: this is a speed study; ``--finetuned`` uses the cached
rotten_tomatoes fine-tune and adds TEST accuracy) is pruned with OPTIN to 50% and 30% of its MACs
(calibration on rotten_tomatoes train) and every model is exported with
:func:`slimformer.onnx_export.export_onnx` (verified on test texts). Timed, interleaved in one run
per sequence length (48 and 128 tokens) at batch 1 and 32, medians, dense PyTorch fp32 = 1.00:
PyTorch fp32; plain ONNX fp32 / int8; slimformer's fused graphs ``model.opt.onnx`` /
``model.opt.int8.onnx``; and the outside peer on the dense model: onnxruntime's own optimizer
(``optimize_model(model_type="bert", num_heads=12, hidden_size=384)``, which fuses no attention on
this export) + dynamic int8. Target: the batch-1 speedup of a pruned model over dense in the same
runtime is >= 0.95 x its MACs ratio (dense MACs / pruned MACs) down to 30% MACs.
Writes benchmarks/results/ort_fused.{json,md}.

    .venv/bin/python benchmarks/ort_fused.py [--repeats 20] [--threads 2] [--finetuned]
    .venv/bin/python benchmarks/ort_fused.py --smoke --out /tmp/smoke/ort_fused.json
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import harness
import torch

from slimformer.bench import BenchConfig
from slimformer.cost import cost_of
from slimformer.models import load_model
from slimformer.onnx_export import ExportConfig, OnnxModel, compare_latency, export_onnx, quantize_int8
from slimformer.ort_fuse import operator_counts
from slimformer.static import PruneConfig, calibration_batches, prune, score
from slimformer.structure import Structure

TASK = "rotten_tomatoes"
REFERENCE = "dense_pytorch_fp32"
TARGET_MACS_EFFICIENCY = 0.95
#: Runtimes of every model (file kind in the export report -> candidate suffix).
RUNTIMES = {"fp32": "onnx_fp32", "int8": "onnx_int8", "opt_fp32": "opt_fp32", "opt_int8": "opt_int8"}


def peer_files(dense, folder: Path, log) -> dict[str, Path]:
    """onnxruntime's own transformer optimizer (+ dynamic int8) on the plain export: what Optimum users get."""
    from onnxruntime.transformers.optimizer import optimize_model

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        cfg = dense.config
        optimized = optimize_model(
            str(folder / "model.onnx"),
            model_type="bert",
            num_heads=cfg.num_attention_heads,
            hidden_size=cfg.hidden_size,
        )
    finally:
        logging.disable(previous)
    fp32 = folder / "peer.opt.onnx"
    optimized.save_model_to_file(str(fp32))
    log.info("peer optimizer: %s", {k: v for k, v in optimized.get_fused_operator_statistics().items() if v})
    int8 = quantize_int8(fp32, folder / "peer.opt.int8.onnx", fused=True)
    return {"ortpeer_fp32": fp32, "ortpeer_int8": int8}


def build_models(args, log):
    """``({"dense": model, "optin50": ..., ...}, tokenizer, task, prune reports)``."""
    task = harness.load_task_for(TASK, args)
    if args.finetuned:
        folder, task, _ = harness.finetuned(TASK, args)
        dense, tokenizer = load_model(str(folder))
    else:
        dense, tokenizer = load_model(args.model, label_names=list(task.label_names))
    dense.eval()
    batches = calibration_batches(task.split("train"), tokenizer, size=args.calibration, seed=args.seed, max_length=64)
    models, reports = {"dense": dense}, {}
    importance = None
    for budget in args.budgets:
        config = PruneConfig.from_dict({"method": "optin", "budget": f"macs={budget}"})
        importance = importance or score(dense, config, batches, progress=False)
        result = prune(dense, config, batches, importance=importance, progress=False)
        name = f"optin{round(budget * 100)}"
        models[name], reports[name] = result.model.eval(), result.report
        log.info("%s: heads %s", name, [s["heads"] for s in result.report["layers"]])
    return models, tokenizer, task, reports


def export_all(models, tokenizer, texts, root: Path, args, log) -> tuple[dict, dict]:
    """Export every model (all four files, verified); returns ``(candidates, per-model export facts)``."""
    threads = args.threads or torch.get_num_threads()
    candidates, facts = {}, {}
    config = ExportConfig(int8=True, int8_min_agreement=0.0 if not args.finetuned else 0.8)
    for name, model in models.items():
        t0 = time.perf_counter()
        rep = export_onnx(model, tokenizer, root / name, config, texts=texts, bench=None, progress=False)
        log.info("exported %s in %.1fs: %s", name, time.perf_counter() - t0, rep["fusion"])
        candidates[f"{name}_pytorch_fp32"] = model
        for kind, suffix in RUNTIMES.items():
            candidates[f"{name}_{suffix}"] = OnnxModel(root / name / rep["files"][kind], threads=threads)
        facts[name] = {
            "verification": {k: {m: v[m] for m in ("max_abs_diff", "argmax_agreement", "texts")}
                             for k, v in rep["verification"].items() if isinstance(v, dict)},
            "fusion": rep["fusion"],
            "bytes": rep["bytes"],
            "layers": rep["model"]["layers"],
        }  # fmt: skip
        if name == "dense":
            for key, path in peer_files(model, root / name, log).items():
                candidates[f"dense_{key}"] = OnnxModel(path, threads=threads)
                facts[name][key] = operator_counts(path, ("Attention", "SkipLayerNormalization", "BiasGelu"))
    return candidates, facts


def macs_efficiency(rows: list[dict], models, seq_len: int) -> dict:
    """Batch-1 speedup of each pruned model over dense in the same runtime, divided by its MACs ratio."""
    dense_macs = cost_of(Structure.from_model(models["dense"]), seq_len=seq_len).macs
    row = next(r for r in rows if r["batch_size"] == 1)
    out = {}
    for name, model in models.items():
        if name == "dense":
            continue
        ratio = dense_macs / cost_of(Structure.from_model(model), seq_len=seq_len).macs
        per = {}
        for suffix in ("pytorch_fp32", *RUNTIMES.values()):
            speedup = row["dense_" + suffix]["median_ms"] / row[f"{name}_{suffix}"]["median_ms"]
            per[suffix] = {"speedup": speedup, "efficiency": speedup / ratio}
        out[name] = {"macs_ratio": ratio, "runtimes": per}
    return out


def accuracy(candidates, tokenizer, task, args) -> dict:
    """TEST accuracy of every candidate (only with ``--finetuned``: a random head has none to speak of)."""
    from slimformer.evaluate import metrics_from_logits, predict

    test = task.split("test")
    labels = [e.label for e in test]
    out = {}
    for name, c in candidates.items():
        if isinstance(c, OnnxModel):
            logits = c.predict(tokenizer, test, max_length=64)
        else:
            logits = predict(c, tokenizer, test, max_length=64, progress=False)
        out[name] = metrics_from_logits(logits, labels, task.num_labels)["accuracy"]
    return out


def run(args, log) -> dict:
    models, tokenizer, task, prune_reports = build_models(args, log)
    texts = [e.text for e in task.split("test")[: args.verify]]
    with tempfile.TemporaryDirectory(prefix="ort-fused-") as tmp:
        candidates, facts = export_all(models, tokenizer, texts, Path(tmp), args, log)
        latency, efficiency = {}, {}
        for seq_len in args.seq_lens:
            bench = BenchConfig(
                batch_sizes=tuple(args.batch_sizes), seq_len=seq_len, repeats=args.repeats, warmup=args.warmup,
                threads=args.threads, min_time_s=0.0,
            )  # fmt: skip
            log.info("timing %d candidates at %d tokens", len(candidates), seq_len)
            res = compare_latency(candidates, bench, inputs_model=models["dense"], reference=REFERENCE, progress=False)
            latency[str(seq_len)] = res
            efficiency[str(seq_len)] = macs_efficiency(res["results"], models, seq_len)
        acc = accuracy(candidates, tokenizer, task, args) if args.finetuned else None
    return {
        "task": TASK,
        "finetuned": args.finetuned,
        "prune": {k: {"relative": v["relative"], "layers": v["layers"]} for k, v in prune_reports.items()},
        "models": facts,
        "latency": latency,
        "macs_efficiency": efficiency,
        "target_macs_efficiency": TARGET_MACS_EFFICIENCY,
        "accuracy": acc,
        "environment": next(iter(latency.values()))["environment"],
    }


LABELS = {
    "pytorch_fp32": "PyTorch fp32",
    "onnx_fp32": "ONNX fp32 (plain)",
    "onnx_int8": "ONNX int8 (plain)",
    "opt_fp32": "fused ORT fp32",
    "opt_int8": "fused ORT int8",
    "ortpeer_fp32": "ORT optimizer fp32 (peer)",
    "ortpeer_int8": "ORT optimizer + int8 (peer)",
}


def markdown(result: dict, args) -> str:
    lines = [
        harness.header("Fused onnxruntime graphs on dense and OPTIN-pruned MiniLM-L6", args, result["environment"])
    ]
    head = "fine-tuned on rotten_tomatoes" if result["finetuned"] else "random 2-class head (speed only)"
    lines += [f"MiniLM-L6, {head}. Median ms of interleaved rounds; speedup over dense PyTorch fp32.", ""]
    for name, facts in result["models"].items():
        fusion = facts["fusion"] or {}
        diffs = ", ".join(f"{k} {v['max_abs_diff']:.1e}" for k, v in facts["verification"].items())
        lines.append(
            f"- {name}: heads {[x['heads'] for x in facts['layers']]}, {fusion.get('attention_nodes')} fused "
            f"Attention nodes ({fusion.get('heads_per_attention_node')} heads); max |logit diff| vs PyTorch: {diffs}"
        )
        if "ortpeer_fp32" in facts:
            lines.append(f"- dense, onnxruntime's own optimizer: {facts['ortpeer_fp32']}")
    lines.append("")
    for seq, lat in result["latency"].items():
        batches = [r["batch_size"] for r in lat["results"]]
        lines += [
            f"## {seq} tokens",
            "",
            "| model | runtime | " + " | ".join(f"b{b} ms | b{b} x" for b in batches) + " |",
        ]
        lines.append("|---|---|" + "---|---|" * len(batches))
        names = [n for n in lat["results"][0] if isinstance(lat["results"][0][n], dict) and n != "speedup"]
        for n in names:
            model, _, runtime = n.partition("_")
            cells = []
            for r in lat["results"]:
                cells += [f"{r[n]['median_ms']:.2f}", f"{r['speedup'].get(n, 1.0):.2f}"]
            lines.append(f"| {model} | {LABELS.get(runtime, runtime)} | " + " | ".join(cells) + " |")
        lines += ["", "Batch-1 speedup over dense in the same runtime / MACs ratio (target "
                  f">= {result['target_macs_efficiency']:g}):", ""]  # fmt: skip
        for name, eff in result["macs_efficiency"][seq].items():
            parts = ", ".join(
                f"{LABELS[k]} {v['speedup']:.2f}x = {v['efficiency']:.2f}" for k, v in eff["runtimes"].items()
            )
            lines.append(f"- {name} (MACs ratio {eff['macs_ratio']:.2f}x): {parts}")
        lines.append("")
    if result["accuracy"]:
        lines += ["## TEST accuracy", ""] + [f"- {k}: {v:.4f}" for k, v in result["accuracy"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__file__, __doc__, out="ort_fused.json")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.3], help="OPTIN MACs budgets")
    parser.add_argument("--calibration", type=int, default=256, help="calibration examples for OPTIN")
    parser.add_argument("--verify", type=int, default=64, help="test texts export_onnx verifies on")
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[48, 128])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=20, help="timed interleaved rounds per batch size")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch and onnxruntime threads (default: torch's)")
    parser.add_argument("--finetuned", action="store_true", help="the cached rotten_tomatoes fine-tune; adds accuracy")
    args = harness.start(parser, argv)
    log = logging.getLogger("ort_fused")
    if args.smoke:
        args.calibration, args.verify, args.repeats, args.warmup, args.batch_sizes = 16, 8, 1, 1, [1, 2]
        args.seq_lens = [16]

    t0 = time.perf_counter()
    result = run(args, log)
    report = {"command": args.command, "seconds": time.perf_counter() - t0, **result}
    md = markdown(report, args)
    harness.write_results(args.out, report, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
