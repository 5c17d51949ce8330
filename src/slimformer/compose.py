"""Recipes: chain compression methods (prune, AxFormer, int8, ...) into one run with one report.

A recipe is a list of steps, each a dict with a ``step`` key naming a registered step kind and that
kind's config fields, e.g.::

    steps:
      - {step: prune, method: optin, budget: macs=0.5}
      - {step: axformer, budget: macs=0.4}
      - {step: recover, epochs: 1}
      - {step: int8}        # or {step: bf16}

It comes from a YAML or JSON file (:func:`load_recipe`) or a Python list (:func:`parse_recipe`).
Every step is parsed and the whole chain checked before any work starts (:func:`parse_recipe`), so
an unknown step, a bad field or an order that cannot work fails at once with a message naming the
step (``step 2 (axformer)``) and the field.

Relative budgets in a recipe are fractions of the recipe's *input* model, not of the previous
step's output: ``prune macs=0.5`` then ``axformer macs=0.4`` ends at 40% of the input's MACs.
A step whose budget is looser than an earlier step's would have nothing to do and is refused.

Adding a step kind: :func:`register_step` with a parser (dict -> config, raising ``ValueError``),
a runner (``(model, config, context) -> model``), which data it needs, and whether it must come last.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimformer.budget import Budget

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepKind:
    """How to parse and run one kind of step."""

    name: str
    parse: Callable[[dict[str, Any]], Any]  # fields (without "step") -> config; ValueError on bad input
    run: Callable[[Any, Any, RecipeContext], Any]  # (model, config, context) -> model
    data: str | None = None  # which split it needs: "train" (calibration), "validation" or None
    terminal: bool = False  # must be the last step (e.g. int8: nothing can be pruned afterwards)
    help: str = ""


STEPS: dict[str, StepKind] = {}


def register_step(kind: StepKind) -> None:
    """Make ``kind`` usable in recipes (replaces a kind of the same name)."""
    STEPS[kind.name] = kind


@dataclass(frozen=True)
class Step:
    """One parsed recipe step: its kind's name and its config."""

    kind: str
    config: Any

    @property
    def budget(self) -> Budget | None:
        return getattr(self.config, "budget", None)

    def to_dict(self) -> dict[str, Any]:
        cfg = self.config.to_dict() if hasattr(self.config, "to_dict") else dataclasses.asdict(self.config)
        return {"step": self.kind, **{k: str(v) if isinstance(v, Budget) else v for k, v in cfg.items()}}


@dataclass
class RecipeContext:
    """What a running step may use: the tokenizer, the task's splits, settings shared by steps."""

    tokenizer: Any
    task: Any  # slimformer.data.TaskData
    max_length: int = 128
    calibration: int = 1024
    seed: int = 0
    progress: bool = True
    cache: dict[str, Any] = field(default_factory=dict)

    def calibration_batches(self):
        if "calibration" not in self.cache:
            from slimformer.static import calibration_batches

            self.cache["calibration"] = calibration_batches(
                self.task.split("train"),
                self.tokenizer,
                size=self.calibration,
                seed=self.seed,
                max_length=self.max_length,
            )
        return self.cache["calibration"]

    def training_batches(self):
        """The whole train split, labelled and length-grouped (for steps that train)."""
        if "training" not in self.cache:
            from slimformer.exits import training_batches

            self.cache["training"] = training_batches(
                self.task.split("train"), self.tokenizer, max_length=self.max_length, seed=self.seed
            )
        return self.cache["training"]


class RecipeError(ValueError):
    """A recipe that cannot run; the message names the step and the field."""


def parse_recipe(steps: list[dict[str, Any]] | dict[str, Any]) -> list[Step]:
    """Parse and check a whole recipe before any work (see the module docstring).

    Args:
        steps: a list of step dicts, or ``{"steps": [...]}`` as in a recipe file.

    Raises:
        RecipeError: empty recipe, unknown step kind, bad field, or an impossible order.
    """
    _register_builtin()
    if isinstance(steps, dict):
        unknown = sorted(set(steps) - {"steps"})
        if unknown:
            raise RecipeError(f"recipe: unknown top-level key(s) {', '.join(unknown)}; expected only 'steps'")
        steps = steps.get("steps")
    if not isinstance(steps, list) or not steps:
        raise RecipeError(
            "recipe: need a non-empty list of steps, e.g. [{step: prune, method: optin, budget: macs=0.5}]"
        )
    parsed: list[Step] = []
    for i, raw in enumerate(steps, start=1):
        if not isinstance(raw, dict) or "step" not in raw:
            raise RecipeError(f"step {i}: need a mapping with a 'step' key ({', '.join(STEPS)}), got {raw!r}")
        fields = dict(raw)
        name = fields.pop("step")
        if name not in STEPS:
            raise RecipeError(f"step {i}: unknown step {name!r}; available: {', '.join(STEPS)}")
        try:
            config = STEPS[name].parse(fields)
        except (ValueError, TypeError) as exc:
            raise RecipeError(f"step {i} ({name}): {exc}") from None
        parsed.append(Step(name, config))
    _check_order(parsed)
    return parsed


def _check_order(steps: list[Step]) -> None:
    for i, step in enumerate(steps, start=1):
        if STEPS[step.kind].terminal and i != len(steps):
            raise RecipeError(
                f"step {i} ({step.kind}) must be the last step: step {i + 1} ({steps[i].kind}) cannot run after it"
            )
    seen: dict[str, tuple[int, Budget]] = {}
    for i, step in enumerate(steps, start=1):
        b = step.budget
        if b is None:
            continue
        if b.kind == "latency":
            continue  # latency budgets are checked against a measured table when they run
        key = f"{b.kind}/{b.relative}"
        if key in seen:
            j, earlier = seen[key]
            if b.value >= earlier.value:
                raise RecipeError(
                    f"step {i} ({step.kind}): budget {b} is not tighter than step {j}'s {earlier}, "
                    "so this step would have nothing to remove; relative budgets are fractions of the recipe's input"
                )
        seen[key] = (i, b)


def load_recipe(path: str | Path) -> list[Step]:
    """Read a ``.yaml``/``.yml``/``.json`` recipe file and :func:`parse_recipe` it."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            raise RecipeError(f"recipe file {str(path)!r}: expected a .yaml, .yml or .json file")
    except (json.JSONDecodeError, ImportError) as exc:
        raise RecipeError(f"recipe file {str(path)!r} cannot be read: {exc}") from None
    except Exception as exc:  # yaml.YAMLError without importing yaml at module level
        if type(exc).__module__.startswith("yaml"):
            raise RecipeError(f"recipe file {str(path)!r} is not valid YAML: {exc}") from None
        raise
    return parse_recipe(data)


def _absolute(budget: Budget, reference) -> Budget:
    """A relative budget turned into the absolute cost it means for ``reference`` (the recipe's input)."""
    if not budget.relative or budget.kind == "latency":
        return budget
    return dataclasses.replace(budget, value=budget.limit(reference), relative=False)


def compress(model, steps: list[Step], context: RecipeContext) -> tuple[Any, dict[str, Any]]:
    """Run ``steps`` in order on a copy of ``model``; return the result and the recipe report.

    Each step's entry in the report gives its config, time, and the structure, params and MACs after it.
    """
    import copy

    from slimformer.cost import cost_of
    from slimformer.structure import Structure

    reference = Structure.from_model(model)
    context.cache["input_model"] = model  # the teacher of a recover step
    current = copy.deepcopy(model)
    entries = []
    t_all = time.perf_counter()
    for i, step in enumerate(steps, start=1):
        kind = STEPS[step.kind]
        config = step.config
        if step.budget is not None and step.budget.relative and step.budget.kind != "latency":
            config = dataclasses.replace(config, budget=_absolute(step.budget, reference))
        logger.info("step %d/%d: %s", i, len(steps), step.kind)
        t0 = time.perf_counter()
        current = kind.run(current, config, context)
        seconds = time.perf_counter() - t0
        entry = {"index": i, **step.to_dict(), "seconds": round(seconds, 2)}
        try:
            st = Structure.from_model(current)
            cost = cost_of(st)
            entry.update(params=cost.params, macs=cost.macs, layers=[dict(h=s.heads, ffn=s.ffn) for s in st.layers])
        except Exception:  # a quantized model has no float Linear shapes to read; the earlier entry stands
            logger.debug("no structure after step %d (%s)", i, step.kind)
        entries.append(entry)
    return current, {"steps": entries, "seconds": round(time.perf_counter() - t_all, 2)}


# ---- built-in step kinds ---------------------------------------------------------------------------------


def _parse_prune(fields: dict[str, Any]):
    from slimformer.static import PruneConfig

    if "budget" not in fields:
        raise ValueError("field 'budget' is required, e.g. budget: macs=0.5")
    return PruneConfig.from_dict({"method": fields.pop("method", "optin"), **fields})


def _run_prune(model, config, context: RecipeContext):
    from slimformer.static import prune

    return prune(model, config, context.calibration_batches(), progress=context.progress).model


def _parse_int8(fields: dict[str, Any]):
    from slimformer.quantize import Int8Config

    return Int8Config.from_dict(fields)


def _run_int8(model, config, context: RecipeContext):
    from slimformer.quantize import quantize_dynamic_int8

    return quantize_dynamic_int8(model, config, inplace=True)


def _parse_bf16(fields: dict[str, Any]):
    from slimformer.quantize import Bf16Config

    return Bf16Config.from_dict(fields)


def _run_bf16(model, config, context: RecipeContext):
    from slimformer.quantize import to_bf16

    return to_bf16(model, inplace=True)


def _parse_axformer(fields: dict[str, Any]):
    from slimformer.axformer import AxConfig

    return AxConfig.from_dict(fields)


def _run_axformer(model, config, context: RecipeContext):
    from slimformer.axformer import axformer, validation_batches

    if "validation" not in context.cache:
        context.cache["validation"] = validation_batches(
            context.task.split("validation"), context.tokenizer, max_length=context.max_length, seed=context.seed
        )
    # the refits are fit on train inputs (as the CLI does), so validation only judges them
    fit = context.calibration_batches() if config.compensate or config.repair else None
    return axformer(model, config, context.cache["validation"], fit_data=fit, progress=context.progress).model


def _parse_recover(fields: dict[str, Any]):
    from slimformer.recover import RecoverConfig

    return RecoverConfig.from_dict(fields)


def _run_recover(model, config, context: RecipeContext):
    from slimformer.recover import recover

    teacher = context.cache.get("input_model", model)
    return recover(model, teacher, context.training_batches(), config, progress=context.progress).model


def save_result(model, tokenizer, folder: str | Path, *, overwrite: bool = False, extra: dict | None = None) -> Path:
    """Save a recipe's output: int8 models with :func:`slimformer.quantize.save_quantized`, others as slim folders."""
    from slimformer.export import save_model
    from slimformer.quantize import is_quantized, save_quantized

    save = save_quantized if is_quantized(model) else save_model
    return save(model, tokenizer, folder, overwrite=overwrite, extra=extra)


def _register_builtin() -> None:
    if "prune" in STEPS:
        return
    register_step(
        StepKind(
            name="axformer",
            parse=_parse_axformer,
            run=_run_axformer,
            data="validation",
            help="accuracy-driven removal searched on the validation split (+ hard top-k attention where it helps)",
        )
    )
    register_step(
        StepKind(
            name="recover",
            parse=_parse_recover,
            run=_run_recover,
            data="train",
            help="short fine-tune on the train split, distilled from the recipe's input model (shapes unchanged)",
        )
    )
    register_step(
        StepKind(
            name="int8",
            parse=_parse_int8,
            run=_run_int8,
            terminal=True,
            help="dynamic int8 quantization of every Linear (and the word embeddings); must be the last step",
        )
    )
    register_step(
        StepKind(
            name="bf16",
            parse=_parse_bf16,
            run=_run_bf16,
            terminal=True,
            help="cast every weight to bfloat16 (half the size; faster only on CPUs with native bf16); must be last",
        )
    )
    register_step(
        StepKind(
            name="prune",
            parse=_parse_prune,
            run=_run_prune,
            data="train",
            help="one-shot pruning (method: optin, fisher, magnitude, random) to a budget, no retraining",
        )
    )
