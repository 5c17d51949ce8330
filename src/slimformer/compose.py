"""Recipes: chain compression methods (prune, AxFormer, slim, recover, int8, ...) into one run with one report.

A recipe is a list of steps, each a dict with a ``step`` key naming a method registered in
:mod:`slimformer.methods` and that method's config fields, e.g.::

    steps:
      - {step: prune, method: optin, budget: macs=0.5}   # or {step: optin, budget: macs=0.5}
      - {step: axformer, budget: macs=0.4}
      - {step: recover, epochs: 1}
      - {step: int8}        # or {step: bf16}, or a dynamic method: {step: skim, keep: 0.5}, {step: exits}

Every registered method is a step (``prune`` is kept as the name of the one-shot pruners, chosen by
``method``). It comes from a YAML or JSON file (:func:`load_recipe`) or a Python list
(:func:`parse_recipe`). Every step is parsed and the whole chain checked before any work starts,
so an unknown step, a bad field or an order that cannot work fails at once with a message naming
the step (``step 2 (axformer)``) and the field. Dynamic methods (skim, exits) and precision
conversions (int8, bf16) may only be the last step.

Relative budgets in a recipe are fractions of the recipe's *input* model, not of the previous
step's output: ``prune macs=0.5`` then ``axformer macs=0.4`` ends at 40% of the input's MACs.
A step whose budget is looser than an earlier step's would have nothing to do and is refused.

Adding a step kind: register a method (:func:`slimformer.methods.register`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimformer.budget import Budget
from slimformer.methods import Method, MethodData, methods
from slimformer.methods import run as run_method

logger = logging.getLogger(__name__)

#: What a running step may use (the task, tokenizer, shared settings and cached batches).
RecipeContext = MethodData

#: Step names: every registered method, plus ``prune`` (a one-shot pruner picked by ``method``).
STEPS: dict[str, Method] = {}

WHY_LAST = {
    "dynamic": "a dynamic method wraps the model in its own layer loop",
    "precision": "nothing can be pruned or trained after a precision conversion",
}


def pruners() -> list[str]:
    """Names of the registered one-shot pruning methods: the ``method`` a ``prune`` step may name."""
    from slimformer.static import PruneConfig

    return [m.name for m in methods().values() if issubclass(m.config, PruneConfig)]


def _prune_step() -> Method:
    from slimformer.method_runners import run_prune
    from slimformer.static import PruneConfig

    def parse(fields: dict[str, Any]):
        if "budget" not in fields:
            raise ValueError("field 'budget' is required, e.g. budget: macs=0.5")
        return PruneConfig.from_dict({"method": fields.pop("method", "optin"), **fields})

    return Method(
        "prune",
        PruneConfig,
        run_prune,
        copies=True,
        parse=parse,
        help=f"one-shot pruning (method: {', '.join(pruners())}) to a budget, no retraining",
    )


def _steps() -> dict[str, Method]:
    """Refresh :data:`STEPS` from the registry (methods registered or removed since are too)."""
    STEPS.clear()
    STEPS.update({"prune": _prune_step(), **methods()})
    return STEPS


def available_steps() -> dict[str, Method]:
    """Every step a recipe may name (each registered method, plus ``prune``), by name, in order (a copy)."""
    return dict(_steps())


@dataclass(frozen=True)
class Step:
    """One parsed recipe step: its step name and its config."""

    kind: str
    config: Any

    @property
    def budget(self) -> Budget | None:
        return getattr(self.config, "budget", None)

    def to_dict(self) -> dict[str, Any]:
        cfg = self.config.to_dict() if hasattr(self.config, "to_dict") else dataclasses.asdict(self.config)
        return {"step": self.kind, **{k: str(v) if isinstance(v, Budget) else v for k, v in cfg.items()}}


class RecipeError(ValueError):
    """A recipe that cannot run; the message names the step and the field."""


def parse_recipe(steps: list[dict[str, Any]] | dict[str, Any]) -> list[Step]:
    """Parse and check a whole recipe before any work (see the module docstring).

    Args:
        steps: a list of step dicts, or ``{"steps": [...]}`` as in a recipe file.

    Raises:
        RecipeError: empty recipe, unknown step kind, bad field, or an impossible order.
    """
    registered = _steps()
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
            raise RecipeError(f"step {i}: need a mapping with a 'step' key ({', '.join(registered)}), got {raw!r}")
        fields = dict(raw)
        name = fields.pop("step")
        if name not in registered:
            raise RecipeError(f"step {i}: unknown step {name!r}; available: {', '.join(registered)}")
        try:
            config = registered[name].config_from(fields)
        except (ValueError, TypeError) as exc:
            raise RecipeError(f"step {i} ({name}): {exc}") from None
        parsed.append(Step(name, config))
    _check_order(parsed)
    return parsed


def _check_order(steps: list[Step]) -> None:
    for i, step in enumerate(steps, start=1):
        method = STEPS[step.kind]
        if method.terminal and i != len(steps):
            raise RecipeError(
                f"step {i} ({step.kind}) must be the last step: step {i + 1} ({steps[i].kind}) cannot run after it "
                f"({method.kind}: {WHY_LAST[method.kind]})"
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


def check_kind(model, steps: list[Step]) -> None:
    """Refuse, before any work, a step that cannot run on ``model``'s kind (e.g. fisher on an
    embedding model), naming the step and the reason (:func:`slimformer.tasks.require_kind`)."""
    from slimformer.methods import method_for
    from slimformer.tasks import require_kind

    for i, step in enumerate(steps, start=1):
        try:
            require_kind(model, method_for(step.config).name)
        except ValueError as exc:
            raise RecipeError(f"step {i} ({step.kind}): {exc}") from None


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


def run_steps(model, steps: list[Step], context: MethodData) -> Iterator[tuple[Any, dict[str, Any]]]:
    """Run ``steps`` in order, each through :func:`slimformer.methods.run`, yielding after each one.

    The input is untouched; steps that distil (recover, exits) learn from ``context.teacher``, by
    default ``model`` itself. A caller that needs a step's own model (not only the last) reads it here.

    Yields:
        ``(the step's model, its report entry)``: the entry gives the step's config, time, its
        method's report, and the structure, params and MACs after it.
    """
    from slimformer.cost import cost_of
    from slimformer.structure import Structure

    reference = Structure.from_model(model)
    data = dataclasses.replace(context, teacher=context.teacher if context.teacher is not None else model)
    current = model
    for i, step in enumerate(steps, start=1):
        config = step.config
        # a relative budget is of the input; only a later step's own input differs from it
        if i > 1 and step.budget is not None and step.budget.relative and step.budget.kind != "latency":
            config = dataclasses.replace(config, budget=_absolute(step.budget, reference))
        logger.info("step %d/%d: %s", i, len(steps), step.kind)
        t0 = time.perf_counter()
        result = run_method(current, config, data)
        current = result.model
        entry = {"index": i, **step.to_dict(), "seconds": round(time.perf_counter() - t0, 2), "report": result.report}
        try:
            st = Structure.from_model(current)
            cost = cost_of(st)
            entry.update(params=cost.params, macs=cost.macs, layers=[dict(h=s.heads, ffn=s.ffn) for s in st.layers])
        except Exception:  # a quantized or wrapped model has no plain Linear shapes to read; the earlier entry stands
            logger.debug("no structure after step %d (%s)", i, step.kind)
        yield current, entry


def compress(model, steps: list[Step], context: MethodData) -> tuple[Any, dict[str, Any]]:
    """Run ``steps`` in order (see :func:`run_steps`); the input is untouched.

    Returns:
        ``(the last step's model, report)``; the report's ``steps`` hold one :func:`run_steps` entry per step.
    """
    out, entries = model, []
    t_all = time.perf_counter()
    for step_model, entry in run_steps(model, steps, context):
        out = step_model
        entries.append(entry)
    return out, {"steps": entries, "seconds": round(time.perf_counter() - t_all, 2)}


def save_result(model, tokenizer, folder: str | Path, *, overwrite: bool = False, extra: dict | None = None) -> Path:
    """Save a recipe's output in the format its kind loads back from with :func:`slimformer.models.load_model`:
    int8 with :func:`~slimformer.quantize.save_quantized`, a skimming model with
    :func:`~slimformer.skim.save_skim`, a multi-exit model with :func:`~slimformer.exits.save_exit`,
    any other as a slim folder."""
    from slimformer.exits.model import MultiExitModel
    from slimformer.exits.saving import save_exit
    from slimformer.export import save_model
    from slimformer.quantize import is_quantized, save_quantized
    from slimformer.skim.model import is_skim_model
    from slimformer.skim.saving import save_skim

    if is_skim_model(model):
        return save_skim(model, tokenizer, folder, overwrite=overwrite, report=extra)
    save = save_quantized if is_quantized(model) else save_exit if isinstance(model, MultiExitModel) else save_model
    return save(model, tokenizer, folder, overwrite=overwrite, extra=extra)
