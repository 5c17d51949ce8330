"""Running exported ONNX files with onnxruntime, and timing them beside PyTorch.

:class:`OnnxModel` wraps an onnxruntime session as a classifier (logits out, evaluation on a
dataset); :func:`compare_latency` times PyTorch models and ONNX files in interleaved rounds.
Exporting and verifying is :mod:`slimformer.onnx_export`.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimformer.bench import BenchConfig, environment, make_bench_inputs, summarize_times

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
OPT_FILE = "model.opt.onnx"  # fused onnxruntime graph, see slimformer.ort_fuse
OPT_INT8_FILE = "model.opt.int8.onnx"
STATIC_INT8_FILE = "model.int8s.onnx"  # static int8, see slimformer.ort_static


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _version(dist: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# --- running ONNX files ------------------------------------------------------------------------


class OnnxModel:
    """An ONNX classifier run by onnxruntime on the CPU: inputs in, ``(B, C)`` logits out.

    Args:
        path: the ``.onnx`` file.
        threads: onnxruntime intra-op threads (None: onnxruntime's default, one per core).
        spinning: let idle pool threads spin-wait; off by default, so timing it beside PyTorch
            does not steal the cores PyTorch runs on.
    """

    def __init__(self, path: str | Path, *, threads: int | None = None, spinning: bool = False):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX file {str(self.path)!r} does not exist")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.inter_op_num_threads = 1
        if threads is not None:
            if not _is_int(threads) or threads < 1:
                raise ValueError(f"threads={threads!r}: must be an int >= 1 or None")
            options.intra_op_num_threads = threads
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only
        self.threads = threads
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def feeds(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Numpy arrays for the graph inputs (ids int64, pixels float32); missing ``token_type_ids`` become zeros."""
        arrays = {
            k: _array(v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
            for k, v in inputs.items()
            if k in self.input_names
        }
        if "token_type_ids" in self.input_names and "token_type_ids" not in arrays and "input_ids" in arrays:
            arrays["token_type_ids"] = np.zeros_like(arrays["input_ids"])
        missing = [n for n in self.input_names if n not in arrays]
        if missing:
            raise ValueError(f"inputs lack {missing}; {self.path.name} takes {self.input_names}")
        return arrays

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """Logits ``(B, C)`` from prepared feeds (see :meth:`feeds`): the call timing measures."""
        return self.session.run(["logits"], feeds)[0]

    def __call__(self, **inputs: Any) -> torch.Tensor:
        """Logits ``(B, C)`` as a float32 tensor, from tensors or arrays (extra keys are ignored)."""
        return torch.from_numpy(self.run(self.feeds(inputs)))

    def predict(
        self, tokenizer, examples: Sequence, *, batch_size: int = 64, max_length: int = 128, progress: bool = False
    ) -> torch.Tensor:
        """Logits ``(N, C)`` on :class:`slimformer.data.Example` s, batched as :func:`slimformer.evaluate.predict`."""
        from tqdm.auto import tqdm

        from slimformer.data import make_loader

        loader = make_loader(list(examples), tokenizer, batch_size=batch_size, max_length=max_length)
        chunks = [self(**batch) for batch in tqdm(loader, desc="onnx", disable=not progress, leave=False)]
        if not chunks:
            raise ValueError("no examples to predict")
        return torch.cat(chunks)

    def evaluate(self, tokenizer, examples: Sequence, *, num_labels: int | None = None, **kwargs) -> dict:
        """Accuracy, macro F1 (and MCC for binary tasks) on examples; see :func:`metrics_from_logits`."""
        from slimformer.evaluate import metrics_from_logits

        logits = self.predict(tokenizer, examples, **kwargs)
        return metrics_from_logits(logits, [e.label for e in examples], num_labels or logits.shape[1])


def load_onnx(
    folder: str | Path, *, int8: bool = False, threads: int | None = None, optimized: bool = False, static: bool = False
):
    """Load an exported folder: ``(OnnxModel, tokenizer)``.

    Args:
        folder: a folder written by :func:`slimformer.onnx_export.export_onnx`.
        int8: the int8 file rather than the fp32 one.
        threads: onnxruntime intra-op threads (None: one per core).
        optimized: the fused onnxruntime graph (``model.opt[.int8].onnx``) rather than the portable
            one. Off by default: on 1 thread it was not faster than the portable file (see
            docs/ort_fused.md), so time both on the target machine before choosing it.
        static: the static int8 file (``model.int8s.onnx``, written by ``fit``; see :mod:`slimformer.ort_static`).

    Raises:
        FileNotFoundError: the folder or the requested file is missing.
    """
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"ONNX folder {str(folder)!r} does not exist")
    fused = OPT_INT8_FILE if int8 else OPT_FILE
    name = STATIC_INT8_FILE if static else fused if optimized else INT8_FILE if int8 else ONNX_FILE
    if not (folder / name).is_file():
        hint = " (export with int8 to write it)" if int8 else ""
        hint += " (export with optimize to write it)" if optimized else ""
        raise FileNotFoundError(f"{str(folder / name)!r} does not exist{hint}")
    return OnnxModel(folder / name, threads=threads), AutoTokenizer.from_pretrained(str(folder))


# --- latency -----------------------------------------------------------------------------------


Candidate = nn.Module | OnnxModel


def _caller(candidate: Candidate, inputs: dict[str, torch.Tensor]) -> Callable[[], Any]:
    if isinstance(candidate, OnnxModel):
        feeds = candidate.feeds(inputs)
        return lambda: candidate.run(feeds)
    candidate.eval()
    return lambda: candidate(**inputs)


def compare_latency(
    candidates: Mapping[str, Candidate],
    config: BenchConfig,
    *,
    inputs_model: nn.Module,
    reference: str,
    progress: bool = True,
) -> dict[str, Any]:
    """Wall-clock latency of PyTorch models and ONNX files, interleaved, on the same random inputs.

    Every round times each candidate once, in an order rotated each round, so drift in the
    machine's speed lands on all of them alike; medians are reported. ``config.threads`` sets
    torch's threads; give the :class:`OnnxModel` s the same count for a fair comparison.

    Args:
        candidates: name -> torch model or OnnxModel.
        inputs_model: a torch model whose config shapes the inputs (vocab, positions, segments).
        reference: the candidate the speedups are relative to (``reference ms / candidate ms``).

    Returns:
        ``{"config", "reference", "results": [{"batch_size", "seq_len", "<name>": stats...,
        "speedup": {name: x}}], "environment"}``.
    """
    from tqdm.auto import tqdm

    if reference not in candidates:
        raise ValueError(f"reference {reference!r} is not among the candidates {list(candidates)}")
    names = list(candidates)
    old_threads = torch.get_num_threads()
    modes = {n: c.training for n, c in candidates.items() if isinstance(c, nn.Module)}
    rows = []
    bar = tqdm(total=len(config.batch_sizes) * config.repeats, desc="latency", disable=not progress, leave=False)
    try:
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        env = environment()
        with torch.inference_mode():
            for batch_size in config.batch_sizes:
                inputs = make_bench_inputs(inputs_model, batch_size, config.seq_len, config.seed)
                calls = {n: _caller(candidates[n], inputs) for n in names}
                for call in calls.values():
                    for _ in range(config.warmup):
                        call()
                gc.collect()  # a collection during timing would land on one unlucky call
                times: dict[str, list[float]] = {n: [] for n in names}
                rounds = 0
                while rounds < config.repeats or sum(times[reference]) / 1e3 < config.min_time_s:
                    shift = rounds % len(names)
                    for n in names[shift:] + names[:shift]:
                        start = time.perf_counter()
                        calls[n]()
                        times[n].append((time.perf_counter() - start) * 1e3)
                    rounds += 1
                    if rounds <= config.repeats:
                        bar.update()
                row: dict[str, Any] = {"batch_size": batch_size, "seq_len": config.seq_len}
                row.update({n: summarize_times(times[n]) for n in names})
                ref_ms = row[reference]["median_ms"]
                row["speedup"] = {n: ref_ms / row[n]["median_ms"] for n in names if n != reference}
                rows.append(row)
                logger.info(
                    "latency batch %d x %d: %s",
                    batch_size,
                    config.seq_len,
                    ", ".join(f"{n} {row[n]['median_ms']:.2f} ms" for n in names),
                )
    finally:
        bar.close()
        torch.set_num_threads(old_threads)
        for n, training in modes.items():
            candidates[n].train(training)
    env["onnxruntime"] = _version("onnxruntime")
    env["onnx"] = _version("onnx")
    return {"config": config.to_dict(), "reference": reference, "results": rows, "environment": env}


def _array(x: np.ndarray) -> np.ndarray:
    """Token ids and masks as int64, pixel values as float32 (what the exported graph declares)."""
    return x.astype(np.float32 if np.issubdtype(x.dtype, np.floating) else np.int64, copy=False)
