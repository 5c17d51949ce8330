"""The built-in methods of :mod:`slimformer.methods`: their step configs and runners.

Each runner wraps one library verb in the contract ``(model, config, data) -> Result``; the verbs
themselves (``prune``, ``axformer``, ``slim``, ``skim``, ``early_exit``, ``recover``, ...) stay
where they are. Methods that are two verbs in a row (train, then calibrate or extract) get a
:class:`~slimformer.config.FlatConfig` holding both verbs' configs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from slimformer.config import FlatConfig, part
from slimformer.exits.config import CalibrateConfig, ExitConfig
from slimformer.methods import Method, MethodData, Result, register
from slimformer.skim.calibrate import ShiftConfig
from slimformer.skim.config import SkimConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SkimStepConfig(FlatConfig):
    """Token skimming as one method: train the skim predictors, then (optionally) calibrate the
    threshold shift on the validation split to a kept-token, MACs or latency target."""

    skim: SkimConfig = part(SkimConfig, "training")
    shift: ShiftConfig | None = part(ShiftConfig, "calibration target (keep, macs, ...)", optional=True)


@dataclass(frozen=True, kw_only=True)
class ExitStepConfig(FlatConfig):
    """Early exit as one method: an exit after every layer trained jointly with the backbone
    (distilled from the data's teacher), then an exit rule calibrated on the validation split."""

    exit: ExitConfig = part(ExitConfig, "training")
    calibrate: CalibrateConfig = part(CalibrateConfig, "rule and its target")


def run_prune(model, config, data: MethodData) -> Result:
    """One-shot pruning (:func:`slimformer.static.prune`) scored on the calibration sample."""
    from slimformer.static import prune

    result = prune(model, config, data.calibration_batches(), progress=data.progress)
    return Result(model=result.model, report=result.report)


def run_axformer(model, config, data: MethodData) -> Result:
    """AxFormer's search on the validation split; refits (compensate, repair) fit on train inputs."""
    from slimformer.axformer import axformer

    fit = data.calibration_batches() if config.compensate or config.repair else None
    result = axformer(model, config, data.validation_batches(), fit_data=fit, progress=data.progress)
    return Result(model=result.model, report=result.report)


def run_recover(model, config, data: MethodData) -> Result:
    """A short distilled fine-tune on the train split (teacher: ``data.teacher``, else the input).

    An embedding model is distilled on its pooled embeddings instead (no labels;
    :func:`slimformer.embedding_recover.recover_embedding`)."""
    from slimformer import recover as module  # looked up on call, so tests can spy on it
    from slimformer.embedding import embedding_pooling

    teacher = data.teacher if data.teacher is not None else model
    if embedding_pooling(model) is not None:
        from slimformer.embedding_recover import recover_embedding

        result = recover_embedding(model, teacher, data.training_batches(), config, progress=data.progress)
        return Result(model=result.model, report=result.report)
    result = module.recover(model, teacher, data.training_batches(), config, progress=data.progress)
    return Result(model=result.model, report=result.report)


def run_int8(model, config, data: MethodData) -> Result:
    """Dynamic int8 quantization of a copy (:func:`slimformer.quantize.quantize_dynamic_int8`)."""
    from slimformer.quantize import quantize_dynamic_int8

    return Result(model=quantize_dynamic_int8(model, config), report={"config": config.to_dict()})


def run_bf16(model, config, data: MethodData) -> Result:
    """A bfloat16 copy (:func:`slimformer.quantize.to_bf16`)."""
    from slimformer.quantize import bf16_supported, to_bf16

    report = {"config": config.to_dict(), "native_bf16": bf16_supported()}
    return Result(model=to_bf16(model, config), report=report)


def run_skim(model, config: SkimStepConfig, data: MethodData) -> Result:
    """Train token skimming on the task, then calibrate its shift when ``config.shift`` is set."""
    from slimformer.skim import skim
    from slimformer.skim.calibrate import calibrate

    trained = skim(model, config.skim, data.task, tokenizer=data.tokenizer, progress=data.progress)
    report: dict[str, Any] = {"train": trained.report, "shift": None}
    out = trained.model
    if config.shift is not None:
        calibrated = calibrate(out, config.shift, data.validation_batches(), progress=data.progress)
        out, report["shift"] = calibrated.model, calibrated.report
    return Result(model=out, report=report)


def run_exits(model, config: ExitStepConfig, data: MethodData) -> Result:
    """Train exits after every layer, then choose the exit rule on the validation split."""
    from slimformer.arch import get_adapter
    from slimformer.batching import batches
    from slimformer.exits import calibrate_rule, early_exit

    teacher = data.teacher if data.teacher is not None else model
    if config.exit.hidden_weight > 0 and len(get_adapter(teacher).layers(teacher)) != len(
        get_adapter(model).layers(model)
    ):
        logger.info("exits: the teacher has another depth; distilling hidden states from the input itself")
        teacher = model
    trained = early_exit(model, config.exit, data.training_batches(), teacher=teacher, progress=data.progress)
    timing = None
    if config.calibrate.target == "latency":
        timing = batches(
            data.task, data.tokenizer, split="validation", limit=16, batch_size=1, max_length=data.max_length
        )
        timing = [{k: v for k, v in b.items() if k != "labels"} for b in timing]
    calibrated = calibrate_rule(
        trained.model,
        data.validation_batches(),
        config.calibrate,
        seq_len=data.max_length,
        latency_inputs=timing,
        progress=data.progress,
    )
    return Result(model=trained.model, report={"train": trained.report, "calibrate": calibrated.report})


def _prune_parser(name: str):
    def parse(fields: dict[str, Any]):
        from slimformer.static import PruneConfig

        if "budget" not in fields:
            raise ValueError("field 'budget' is required, e.g. budget: macs=0.5")
        method = fields.pop("method", name)
        if method != name:
            raise ValueError(
                f"method={method!r} does not match the step {name!r} (write step: prune, method: {method})"
            )
        return PruneConfig.from_dict({"method": name, **fields})

    return parse


def _summary(cls: type) -> str:
    return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


def register_pruner(cls: type) -> None:
    """Make the one-shot pruning method of config class ``cls`` a method (its name: ``cls.method``)."""
    help_text = f"one-shot pruning to a budget, no retraining: {_summary(cls)}"
    register(Method(cls.method, cls, run_prune, copies=True, parse=_prune_parser(cls.method), help=help_text))


def register_builtin() -> None:
    """Register every built-in method (called once, when :mod:`slimformer.methods` is imported)."""
    from slimformer.axformer.config import AxConfig
    from slimformer.quantize import Bf16Config, Int8Config
    from slimformer.recover import RecoverConfig
    from slimformer.slim.run import SlimStepConfig, run_slim
    from slimformer.static.prune import METHODS as PRUNERS

    for cls, _ in PRUNERS.values():
        register_pruner(cls)
    register(
        Method(
            "axformer",
            AxConfig,
            run_axformer,
            copies=True,
            help="accuracy-driven removal searched on the validation split (+ hard top-k attention where it helps)",
        )
    )
    register(
        Method("slim", SlimStepConfig, run_slim, help="differentiable slimming: train gates once, extract a budget")
    )
    register(
        Method(
            "recover",
            RecoverConfig,
            run_recover,
            copies=True,
            help="short fine-tune on the train split, distilled from the recipe's input model (shapes unchanged)",
        )
    )
    register(Method("skim", SkimStepConfig, run_skim, kind="dynamic", help="token skimming (dynamic); must be last"))
    register(
        Method("exits", ExitStepConfig, run_exits, kind="dynamic", help="early exit after every layer; must be last")
    )
    register(
        Method(
            "int8",
            Int8Config,
            run_int8,
            kind="precision",
            copies=True,
            help=(
                "PyTorch dynamic int8 of every Linear (and the word embeddings); must be the last step. The "
                "fallback path (torch.ao quantization is deprecated upstream): to deploy, prefer onnxruntime "
                "int8 (slimformer export DIR --onnx OUT --int8, or slimformer fit, which times both)"
            ),
        )
    )
    register(
        Method(
            "bf16",
            Bf16Config,
            run_bf16,
            kind="precision",
            copies=True,
            help="cast every weight to bfloat16 (half the size; faster only on CPUs with native bf16); must be last",
        )
    )
