"""The candidates :func:`slimformer.fit.fit` tries: build them, score them on validation, time them.

A :class:`Search` builds the structures (dense, then one-shot pruning at each MACs fraction and at
the budget itself, or for latency budgets at the latency table's prediction of target x each
scale), turns each into its runtime variants, scores every variant on the validation split, and
times all of them in the same interleaved rounds (:func:`slimformer.onnx_runtime.compare_latency`).
"""

from __future__ import annotations

import logging
import random
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from slimformer.budget import Budget, InfeasibleBudget, format_value
from slimformer.structure import Structure

logger = logging.getLogger(__name__)

#: texts sampled from validation to verify each ONNX export against PyTorch
VERIFY_TEXTS = 32
#: train batches (of 32) that fix the activation ranges of static int8
STATIC_CALIBRATION_BATCHES = 8


@dataclass
class Candidate:
    """One model to measure: which structure (method at a pruning budget) in which runtime variant."""

    key: str
    method: str  # "dense" or the pruning method
    budget: str  # the pruning budget ("" for dense)
    variant: str  # a key of slimformer.fit.VARIANTS
    model: Any  # nn.Module or OnnxModel
    structure: Structure  # of the fp32 model the variant was made from
    onnx_dir: Path | None = None  # the export folder of an onnxruntime variant
    val_accuracy: float = 0.0


class Search:
    """Builds, scores and times the candidates of one :func:`~slimformer.fit.fit` call."""

    def __init__(self, model, tokenizer, task, config, *, progress: bool = True):
        from tqdm.auto import tqdm

        from slimformer.fit import VARIANTS

        self.model, self.tokenizer, self.task, self.config = model, tokenizer, task, config
        budget: Budget = config.budget
        self.batch_size = budget.batch_size if budget.kind == "latency" else 1
        self.seq_len = budget.seq_len
        self.skipped: list[dict[str, str]] = []
        self.variants = [v for v in config.variants if self._usable(v, VARIANTS[v])]
        val = task.split("validation")
        self.validation = val[: config.val_examples] if config.val_examples else val
        if not self.validation:
            raise ValueError(f"task {task.name!r} has an empty validation split; fit scores candidates on it")
        self.candidates: dict[str, Candidate] = {}
        self.work = Path(tempfile.mkdtemp(prefix="slimformer-fit-"))
        self.limit = 0.0
        self.environment: dict[str, Any] = {}
        self.calibration: list | None = None  # tokenized train batches: pruning scores and static int8 ranges
        planned = 1 + len(config.budgets) + (len(config.latency_scales) if budget.kind == "latency" else 1)
        # units: 2 for scoring, 1 per structure, 1 per candidate scored, 1 per 2 candidates timed
        self.bar = tqdm(
            total=2 + planned * (1 + 1.5 * len(self.variants)), desc="fit", disable=not progress, unit="step",
            bar_format="{l_bar}{bar}| [{elapsed}<{remaining}] {postfix}",
        )  # fmt: skip

    def _usable(self, name: str, spec: tuple[str, str]) -> bool:
        from slimformer.quantize import bf16_supported

        runtime, precision = spec
        if runtime == "onnxruntime" and self.config.budget.kind != "latency":
            self.skipped.append({"what": name, "why": "onnxruntime variants are tried for latency budgets only"})
            return False
        if precision == "bf16" and not bf16_supported():
            self.skipped.append({"what": name, "why": "this CPU has no native bf16 (AVX512-BF16 / AMX): slower here"})
            return False
        return True

    # ---- the search -------------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        """Build, score and time every candidate; return one row per candidate (dense fp32 first)."""
        for method, budget, model in self._structures():
            self._add_variants(method, budget, model)
        self.bar.set_postfix_str(f"timing {len(self.candidates)} candidates")
        rows = self._time_and_check()
        self.bar.update(self.bar.total - self.bar.n)
        return rows

    def _step(self, what: str, units: float = 1.0) -> None:
        self.bar.set_postfix_str(what)
        self.bar.update(units)

    def _structures(self):
        """Yield ``(method, budget text, fp32 model)``: dense first, then each distinct pruned structure."""
        from slimformer.static import PruneConfig, calibration_batches, prune, score

        cfg = self.config
        yield "dense", "", self.model
        batches = calibration_batches(
            self.task.split("train"), self.tokenizer, size=cfg.calibration, seed=cfg.seed, max_length=cfg.max_length
        )
        self.calibration = batches
        budgets, table = self._pruning_budgets()
        if not budgets:
            return
        first = PruneConfig.from_dict({"method": cfg.method, "budget": budgets[0]})
        importance = score(self.model, first, batches, progress=False)
        self._step(f"scored {cfg.method}", 2)
        seen = {_shapes(Structure.from_model(self.model))}
        for budget in budgets:
            text = str(replace(budget, seq_len=128, batch_size=1))  # the timing's batch and seq are the budget's
            try:
                prune_cfg = PruneConfig.from_dict({"method": cfg.method, "budget": budget, "seed": cfg.seed})
                result = prune(
                    self.model, prune_cfg, batches, importance=importance, latency_table=table, progress=False
                )
            except InfeasibleBudget as exc:
                self.skipped.append({"what": f"{cfg.method}@{text}", "why": str(exc)})
                self._step(f"{text}: infeasible", 1 + 1.5 * len(self.variants))
                continue
            shapes = _shapes(Structure.from_model(result.model))
            if shapes in seen:
                self.skipped.append({"what": f"{cfg.method}@{text}", "why": "same structure as an earlier candidate"})
                self._step(f"{text}: duplicate", 1 + 1.5 * len(self.variants))
                continue
            seen.add(shapes)
            self._step(f"pruned to {text}")
            yield cfg.method, text, result.model

    def _pruning_budgets(self) -> tuple[list[Budget], Any]:
        """The pruning budgets to try and, for latency budgets, the latency table that predicts them."""
        cfg, b = self.config, self.config.budget
        macs = [Budget(kind="macs", value=f, relative=True, seq_len=self.seq_len) for f in cfg.budgets if f < 1]
        if b.kind != "latency":
            return [b, *macs], None
        from slimformer.latency import measure_latency_table

        self.bar.set_postfix_str("latency table")
        table = measure_latency_table(self.model, batch_size=b.batch_size, seq_len=b.seq_len, progress=False)
        dense_ms = table.predict(Structure.from_model(self.model))
        targets = []
        for scale in cfg.latency_scales:
            value = b.value * scale
            if (value >= 1) if b.relative else (value >= dense_ms):
                why = f"the latency table predicts dense at {dense_ms:.3g} ms, within target x {scale:g}"
                self.skipped.append({"what": f"{cfg.method}@latency x {scale:g}", "why": why})
                continue
            targets.append(replace(b, value=value))
        return [*targets, *macs], table

    def _add_variants(self, method: str, budget: str, model) -> None:
        from slimformer.quantize import quantize_dynamic_int8, to_bf16

        structure = Structure.from_model(model)
        label = f"{method}@{budget}" if budget else method
        onnx = self._export(label, model) if any(v.startswith("ort-") for v in self.variants) else None
        names = self.variants if method != "dense" else list(dict.fromkeys(["torch-fp32", *self.variants]))
        for variant in names:  # dense fp32 always comes first: the reference of relative budgets and speedups
            key = f"{label}/{variant}"
            if variant == "torch-fp32":
                built = model
            elif variant == "torch-int8":
                built = quantize_dynamic_int8(model)
            elif variant == "torch-bf16":
                built = to_bf16(model)
            elif onnx is None:
                self._step(f"{key}: not exported", 1.5)
                continue
            else:
                built = self._onnx_model(onnx, variant)
                if built is None:
                    self._step(f"{key}: no file", 1.5)
                    continue
            ort = variant.startswith("ort-")
            cand = Candidate(key, method, budget, variant, built, structure, onnx if ort else None)
            cand.val_accuracy = self._accuracy(cand, self.validation)
            self.candidates[key] = cand
            self._step(f"{key}: val {cand.val_accuracy:.3f}")

    def _export(self, label: str, model) -> Path | None:
        from slimformer.onnx_export import ExportConfig, OnnxVerificationError, export_onnx

        folder = self.work / label.replace("/", "_").replace("=", "").replace(",", "_")
        texts = [
            e.text
            for e in random.Random(self.config.seed).sample(self.validation, min(VERIFY_TEXTS, len(self.validation)))
        ]
        # the fused graphs (ort_fuse) are left out: exact, but not faster than the portable file here
        config = ExportConfig(int8="ort-int8" in self.variants, optimize=False, max_length=self.config.max_length)
        try:
            export_onnx(model, self.tokenizer, folder, config, texts=texts, bench=None, progress=False)
        except (OnnxVerificationError, ValueError) as exc:
            self.skipped.append({"what": f"{label}/onnxruntime", "why": str(exc)})
            return None
        if "ort-int8s" in self.variants:
            self._static_int8(folder)
        return folder

    def _static_int8(self, folder: Path) -> None:
        """Static int8 of ``folder``'s fp32 file, ranges from train batches (dense: tokenized here)."""
        from slimformer.onnx_runtime import ONNX_FILE, OnnxModel
        from slimformer.ort_static import STATIC_INT8_FILE, calibration_feeds, quantize_static_int8

        if self.calibration is None:  # the dense model is exported before any pruning needs the batches
            from slimformer.static import calibration_batches

            cfg = self.config
            self.calibration = calibration_batches(
                self.task.split("train"), self.tokenizer, size=cfg.calibration, seed=cfg.seed,
                max_length=cfg.max_length,
            )  # fmt: skip
        names = OnnxModel(folder / ONNX_FILE, threads=1).input_names
        feeds = calibration_feeds(self.calibration, names, limit=STATIC_CALIBRATION_BATCHES)
        quantize_static_int8(folder / ONNX_FILE, folder / STATIC_INT8_FILE, feeds)

    def _onnx_model(self, folder: Path, variant: str):
        from slimformer.onnx_runtime import INT8_FILE, ONNX_FILE, OnnxModel
        from slimformer.ort_static import STATIC_INT8_FILE

        name = {"ort-int8": INT8_FILE, "ort-int8s": STATIC_INT8_FILE}.get(variant, ONNX_FILE)
        if not (folder / name).is_file():
            return None
        return OnnxModel(folder / name, threads=torch.get_num_threads())

    # ---- measuring ----------------------------------------------------------------------------
    def _time_and_check(self) -> list[dict[str, Any]]:
        from slimformer.bench import BenchConfig
        from slimformer.onnx_runtime import compare_latency

        cfg = self.config
        bench = BenchConfig(
            batch_sizes=(self.batch_size,), seq_len=self.seq_len, repeats=cfg.repeats, warmup=cfg.warmup
        )
        models = {k: c.model for k, c in self.candidates.items()}
        dense_key = next(iter(models))
        timed = compare_latency(models, bench, inputs_model=self.model, reference=dense_key, progress=False)
        self.environment = timed["environment"]
        row = timed["results"][0]
        rows = [self._row(c, row[k]) for k, c in self.candidates.items()]
        kind = cfg.budget.kind
        self.limit = cfg.budget.limit_of(rows[0]["measure"])
        for r in rows:
            r["ratio"] = r["measure"] / self.limit
            r["met"] = r["measure"] <= self.limit
            r["measure_text"] = format_value(kind, r["measure"])
            r["limit_text"] = format_value(kind, self.limit)
            r["speedup"] = rows[0]["latency_ms"] / r["latency_ms"]
        return rows

    def _row(self, cand: Candidate, stats: dict) -> dict[str, Any]:
        from slimformer.cost import cost_of
        from slimformer.fit import VARIANTS
        from slimformer.pareto import weight_bytes

        cost = cost_of(cand.structure, self.seq_len)
        runtime, precision = VARIANTS[cand.variant]
        size = cand.model.path.stat().st_size if runtime == "onnxruntime" else weight_bytes(cand.model)
        measure = {"latency": stats["median_ms"], "memory": size, "macs": cost.macs, "params": cost.params}
        return {
            "key": cand.key,
            "method": cand.method,
            "budget": cand.budget,
            "variant": cand.variant,
            "runtime": runtime,
            "precision": precision,
            "val_accuracy": cand.val_accuracy,
            "latency_ms": stats["median_ms"],
            "latency_iqr_ms": stats["iqr_ms"],
            "bytes": size,
            "macs": cost.macs,
            "params": cost.params,
            "layers": [{"heads": s.heads, "ffn": s.ffn} for s in cand.structure.layers],
            "measure": float(measure[self.config.budget.kind]),
        }

    def _metrics(self, cand: Candidate, examples) -> dict[str, Any]:
        from slimformer.evaluate import evaluate

        length = self.config.max_length
        if cand.variant.startswith("ort-"):
            return cand.model.evaluate(self.tokenizer, examples, max_length=length)
        return evaluate(cand.model, self.tokenizer, examples, max_length=length, progress=False)

    def _accuracy(self, cand: Candidate, examples) -> float:
        return float(self._metrics(cand, examples)["accuracy"])

    def test_metrics(self, cand: Candidate) -> dict[str, Any]:
        """The chosen candidate and the dense model, each evaluated once on the test split."""
        test = self.task.split("test")
        self.bar.set_postfix_str("test split")
        dense = self._metrics(next(iter(self.candidates.values())), test)
        chosen = self._metrics(cand, test)
        return {"chosen": chosen, "dense": dense, "drop_points": 100 * (dense["accuracy"] - chosen["accuracy"])}

    def cleanup(self, keep: Candidate | None) -> None:
        """Delete every exported folder except the one ``keep`` runs from."""
        for folder in self.work.iterdir():
            if keep is None or keep.onnx_dir is None or folder != keep.onnx_dir:
                shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        """Close the progress bar; remove the work folder when it holds nothing the result needs."""
        self.bar.close()
        if not any(self.work.iterdir()):
            shutil.rmtree(self.work, ignore_errors=True)


def _shapes(structure: Structure) -> tuple[tuple[int, int], ...]:
    return tuple((s.heads, s.ffn) for s in structure.layers)
