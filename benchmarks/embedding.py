"""MiniLM-L6 as a sentence-embedding model, pruned by OPTIN with no labels: agreement, proxies, speed.

The built-in all-MiniLM-L6-v2 is used as it ships (no fine-tuning), with its own pooling read from
its sentence-transformers files. OPTIN scores heads and neurons by ``1 - cos`` of the pooled
embedding plus its trajectory term, on unlabelled calibration texts (a seeded sample of the
built-in tasks' TRAIN texts), and prunes at each MACs budget (least-squares repair on the same
texts). For the dense model and every pruned one it records, on the TEST splits:

* agreement with dense on the held-out corpus (the test texts of every task together): mean cosine
  to the dense embedding and recall@10 of dense's 10 nearest neighbours;
* labelled proxies per task: kNN accuracy (k=10, cosine, train -> test) and same-label retrieval
  precision@10 (test queries test);
* wall clock at batch 1 and 32 x 128 tokens (encoder + pooling), all models timed interleaved.

With ``--recover 0.3`` (or ``0.5,0.3``) the model pruned at that budget is also distilled from dense
(:func:`slimformer.embedding_recover.recover_embedding`, ``1 - cos`` plus hidden states) for
``--recover-epochs`` passes over ``--recover-texts`` further unlabelled train texts at
``--recover-lr``, and measured the same way.

Two onnxruntime rows (``--no-onnx`` skips them), exported with the pooling inside the graph
(:mod:`slimformer.embedding_onnx`) and quantized with onnxruntime's dynamic int8 (per-channel):

* ``<last compressed row>+ort_int8``: the most compressed model, as it would be deployed;
* ``peer: dense+ort_int8``: the dense model through the same int8 path: what a user gets today
  from sentence-transformers' ``export_dynamic_quantized_onnx_model`` (optimum's dynamic int8,
  per-channel QInt8 weights). That function needs optimum-onnx, which requires transformers <
  4.58 and cannot be installed beside transformers 5, so the equivalent graph is built here.

Every row, PyTorch and onnxruntime alike, is timed in the same interleaved rounds (batch 1 and 32
x 128 tokens, both runtimes on ``--bench-threads`` threads).

    .venv/bin/python benchmarks/embedding.py [--budgets 0.5,0.3] [--recover 0.3] [--calibration 256] \
        [--recover-texts 4096] [--recover-epochs 1] [--recover-lr 1e-4] [--max-train 1000] [--threads 1]

Scoring, distillation and embedding run with ``--threads`` (1 on a shared machine: oversubscribed
threads slow down by far more than they gain); timing uses ``--bench-threads`` (torch's default).
"""

from __future__ import annotations

import atexit
import logging
import random
import shutil
import tempfile
import time
from pathlib import Path

import harness
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic

from slimformer.bench import BenchConfig
from slimformer.budget import Budget
from slimformer.embedding import EmbeddingForward, embed, load_embedding_model, text_batches
from slimformer.embedding_eval import agreement, labelled_scores, train_sample
from slimformer.embedding_onnx import OnnxEmbedder, compare_embeddings, export_embedding_onnx
from slimformer.embedding_recover import recover_embedding
from slimformer.onnx_export import ExportConfig
from slimformer.onnx_runtime import compare_latency
from slimformer.onnx_verify import verification_batches
from slimformer.recover import RecoverConfig
from slimformer.static import OptinConfig, prune, score

TASKS = ("rotten_tomatoes", "bbc_news")
K = 10

log = logging.getLogger("benchmarks.embedding")


def calibration(tasks: dict, tokenizer, size: int, seed: int) -> list[dict]:
    """A seeded sample of ``size`` unlabelled train texts, the same share from every task."""
    rng = random.Random(f"{seed}-{size}")
    per_task = -(-size // len(tasks))
    texts = []
    for task in tasks.values():
        pool = [e.text for e in task.split("train")]
        texts += rng.sample(pool, min(per_task, len(pool)))
    batches = text_batches(texts[:size], tokenizer, batch_size=32, max_length=128)
    return [{k: v for k, v in b.items() if k != "index"} for b in batches]


def measure(model, tokenizer, tasks: dict, args) -> tuple[dict, torch.Tensor]:
    """Labelled proxies per task and the test embeddings of every task, concatenated (the corpus).

    ``model`` is a PyTorch embedding model or an :class:`~slimformer.embedding_onnx.OnnxEmbedder`.
    """
    from slimformer.embedding_onnx import OnnxEmbedder

    def vectors(texts: list[str]) -> torch.Tensor:
        if isinstance(model, OnnxEmbedder):
            return model.embed(tokenizer, texts, max_length=args.max_length)
        return embed(model, tokenizer, texts, max_length=args.max_length)

    scores, corpus = {}, []
    for name, task in tasks.items():
        train, test = train_sample(task, args.max_train, args.seed), task.split("test")
        t0 = time.perf_counter()
        train_emb = vectors([e.text for e in train])
        test_emb = vectors([e.text for e in test])
        scores[name] = labelled_scores(train_emb, [e.label for e in train], test_emb, [e.label for e in test], K)
        scores[name].update(train_examples=len(train), test_examples=len(test))
        log.info("%s: %s in %.0fs", name, scores[name], time.perf_counter() - t0)
        corpus.append(test_emb)
    return scores, torch.cat(corpus)


def int8_onnx(model, tokenizer, folder: Path, threads: int, *, peer: bool = False) -> tuple[OnnxEmbedder, dict]:
    """Export ``model`` with its pooling in the graph and quantize it with onnxruntime's dynamic int8.

    Ours: :func:`slimformer.onnx_export.quantize_int8` (per-channel QInt8 weights of every MatMul
    and of the embedding tables). ``peer``: the settings sentence-transformers' ONNX export asks of
    optimum (``AutoQuantizationConfig.avx512_vnni(is_static=False)``: per-channel, symmetric QInt8
    weights, QUInt8 activations, fully connected operators only; the embedding tables stay fp32).

    Returns the int8 file's runner and its smallest cosine to PyTorch on the verification texts.
    """
    config = ExportConfig(int8=not peer, per_channel=True, optimize=False)
    report = export_embedding_onnx(model, tokenizer, folder, config, bench=None, progress=False)
    if peer:
        path = folder / "model.peer-int8.onnx"
        quantize_dynamic(
            str(folder / report["files"]["fp32"]), str(path), op_types_to_quantize=["MatMul", "Add"],
            per_channel=True, reduce_range=False, weight_type=QuantType.QInt8,
        )  # fmt: skip
        runner = OnnxEmbedder(path, threads=threads)
        check = compare_embeddings(model, runner, verification_batches(model, tokenizer))["min_cosine"]
        summary = {"min_cosine": {"fp32": report["verification"]["fp32"]["min_cosine"], "int8": check}}
        summary["int8"] = {"per_channel": True, "weights": "QInt8", "operators": ["MatMul", "Add"], "as": "optimum"}
        return runner, summary
    cosines = {kind: report["verification"][kind]["min_cosine"] for kind in ("fp32", "int8")}
    summary = {
        "min_cosine": cosines,
        "int8": {"per_channel": True, "weights": "QInt8", "operators": ["MatMul", "Gather"]},
    }
    return OnnxEmbedder(folder / report["files"]["int8"], threads=threads), summary


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__file__, __doc__, out="embedding.json")
    parser.add_argument("--budgets", default="0.5", help="comma-separated MACs fractions")
    parser.add_argument("--calibration", type=int, default=256, help="unlabelled calibration texts")
    parser.add_argument("--max-train", type=int, default=1000, help="training texts per task for kNN")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per text when embedding")
    parser.add_argument("--recover", default="", help="distil the models pruned at these budgets (comma list)")
    parser.add_argument("--recover-texts", type=int, default=4096, help="unlabelled train texts to distil on")
    parser.add_argument("--recover-epochs", type=int, default=1, help="passes over the distillation texts")
    parser.add_argument("--recover-lr", type=float, default=1e-4, help="peak learning rate of the distillation")
    parser.add_argument("--recover-hidden-weight", type=float, default=1.0, help="weight of the hidden-state term")
    parser.add_argument("--no-onnx", action="store_true", help="skip the onnxruntime int8 and peer rows")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per model and batch size")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for everything but timing")
    parser.add_argument("--bench-threads", type=int, default=None, help="torch threads while timing")
    args = harness.start(parser, argv)
    torch.set_num_threads(args.threads)
    model, tokenizer = load_embedding_model(args.model)
    tasks = {name: harness.load_task_for(name, args) for name in TASKS}
    batches = calibration(tasks, tokenizer, args.calibration, args.seed)
    dense_scores, dense_corpus = measure(model, tokenizer, tasks, args)
    rows = {"dense": {"scores": dense_scores, "agreement": agreement(dense_corpus, dense_corpus, K)}}
    models = {"dense": EmbeddingForward(model)}
    budgets = [float(b) for b in args.budgets.split(",")]
    recover_at = {float(b) for b in args.recover.split(",") if b.strip()}
    config = OptinConfig(budget=Budget.parse(f"macs={budgets[0]}"), seed=args.seed)
    importance = score(model, config, batches)  # scored once, reused for every budget
    for value in budgets:
        config = OptinConfig(budget=Budget.parse(f"macs={value}"), seed=args.seed)
        result = prune(model, config, batches, importance=importance)
        scores, corpus = measure(result.model, tokenizer, tasks, args)
        name = f"optin@macs={value}"
        report = {k: result.report[k] for k in ("relative", "layers", "seconds", "calibration_examples")}
        rows[name] = {"scores": scores, "agreement": agreement(corpus, dense_corpus, K), "prune": report}
        models[name] = EmbeddingForward(result.model)
        log.info("%s: %s", name, rows[name]["agreement"])
        if value in recover_at:
            texts = calibration(tasks, tokenizer, args.recover_texts, args.seed + 1)
            config = RecoverConfig(
                epochs=args.recover_epochs, lr=args.recover_lr, hidden_weight=args.recover_hidden_weight,
                max_steps=8 if args.smoke else None, seed=args.seed,
            )  # fmt: skip
            recovered = recover_embedding(result.model, model, texts, config)
            scores, corpus = measure(recovered.model, tokenizer, tasks, args)
            rows[name + "+recover"] = {
                "scores": scores,
                "agreement": agreement(corpus, dense_corpus, K),
                "prune": report,
                "recover": {
                    k: recovered.report[k] for k in ("recover_config", "steps", "examples_per_epoch", "seconds")
                },
            }
            models[name + "+recover"] = EmbeddingForward(recovered.model)
            log.info("%s+recover: %s", name, rows[name + "+recover"]["agreement"])
    workdir = Path(tempfile.mkdtemp(prefix="embedding-onnx-"))
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    threads = args.bench_threads or torch.get_num_threads()  # onnxruntime gets as many as torch
    if not args.no_onnx:
        last = list(models)[-1]
        for name, net in ((f"{last}+ort_int8", models[last].model), ("peer: dense+ort_int8", model)):
            folder = workdir / f"onnx{len(models)}"
            onnx_model, export = int8_onnx(net, tokenizer, folder, threads, peer=net is model)
            scores, corpus = measure(onnx_model, tokenizer, tasks, args)
            rows[name] = {"scores": scores, "agreement": agreement(corpus, dense_corpus, K), "onnx": export}
            rows[name].update({k: rows[last][k] for k in ("prune", "recover") if k in rows[last] and net is not model})
            models[name] = onnx_model
            log.info("%s: %s", name, rows[name]["agreement"])
    bench = BenchConfig(batch_sizes=(1, 32), seq_len=128, warmup=2, repeats=args.repeats, threads=args.bench_threads)
    timing = compare_latency(models, bench, inputs_model=model, reference="dense", progress=False)
    for name in models:
        rows[name]["median_ms"] = {str(r["batch_size"]): r[name]["median_ms"] for r in timing["results"]}
    report = {
        "command": args.command,
        "model": args.model,
        "pooling": model.config.slimformer_embedding,
        "calibration_texts": sum(len(b["input_ids"]) for b in batches),
        "corpus_texts": len(dense_corpus),
        "max_length": args.max_length,
        "max_train": args.max_train,
        "k": K,
        "rows": rows,
        "onnx_threads": threads,
        "environment": timing["environment"],
    }
    md = markdown(report, args)
    harness.write_results(args.out, report, md)
    print(md)
    return 0


def markdown(report: dict, args) -> str:
    """The header and one table row per model: agreement, proxies per task, latency and speedup."""
    rows, dense = report["rows"], report["rows"]["dense"]
    head = ["model", "MACs", "mean cos", f"recall@{K}"]
    for name in TASKS:
        head += [f"{name} kNN", f"{name} P@{K}"]
    head += ["b1 ms", "b32 ms", "speedup b1", "speedup b32"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in rows.items():
        macs = row.get("prune", {}).get("relative", {}).get("macs", 1.0)
        cells = [
            name,
            f"{macs:.3f}",
            f"{row['agreement']['mean_cosine']:.4f}",
            f"{row['agreement']['recall_at_k']:.4f}",
        ]
        for task in TASKS:
            s = row["scores"][task]
            cells += [f"{100 * s['knn_accuracy']:.2f}", f"{100 * s['retrieval_precision']:.2f}"]
        ms, base = row["median_ms"], dense["median_ms"]
        cells += [f"{ms['1']:.1f}", f"{ms['32']:.1f}", f"{base['1'] / ms['1']:.2f}x", f"{base['32'] / ms['32']:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    intro = (
        f"No fine-tuning, no labels. Pooling: {report['pooling']}. Calibration: {report['calibration_texts']} "
        f"train texts. Agreement on the {report['corpus_texts']} test texts of {', '.join(TASKS)}; kNN / "
        f"precision@{K} in points on each test split ({report['max_train']} train texts per task as the kNN "
        f"index; texts truncated to {report['max_length']} tokens); latency: median of interleaved runs, 128 tokens."
    )
    return "\n".join(
        [harness.header("Embedding model: OPTIN without labels", args, report["environment"]), intro, ""] + lines
    )


if __name__ == "__main__":
    raise SystemExit(main())
