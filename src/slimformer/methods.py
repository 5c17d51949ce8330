"""One method contract and one registry: ``run(model, config, data) -> Result(model, report)``.

Every compression method (the one-shot pruners, AxFormer, differentiable slimming, token skimming,
early exit, recover, int8, bf16) is registered here once, under its name, with its config class::

    from slimformer.methods import MethodData, run
    data = MethodData(tokenizer=tok, task=task)
    result = run(model, OptinConfig(budget="macs=0.5"), data)   # the config's type picks the method
    result.model, result.report                                # the input model is untouched

The contract, the same for all of them (and checked for every registered method by
``tests/test_methods.py``):

* the input model is never modified (:func:`apply` hands a runner a copy unless it declares
  ``copies=True``, i.e. it already works on one);
* the config comes second and is required; it round-trips through ``to_dict`` / ``from_dict``;
* ``data`` is one :class:`MethodData`: the task, the tokenizer, and the batches built from them;
* the report is a JSON-ready dict.

``kind`` says where a method may sit in a recipe (:mod:`slimformer.compose`): ``static`` methods
anywhere; ``dynamic`` ones (skim, exits: a wrapper with its own layer loop) and ``precision`` ones
(int8, bf16) only last.

Adding a method: :func:`register` a :class:`Method`; compose, pareto and the contract tests pick it up.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

KINDS = ("static", "dynamic", "precision")


@dataclass
class Result:
    """What every method returns: the new model and a JSON-ready report."""

    model: Any
    report: dict


@dataclass
class MethodData:
    """What a method may read: the task's splits, the tokenizer, and settings shared by methods.

    Batches are built on first use with :func:`slimformer.batching.batches` and cached, so steps of
    one recipe share them.

    Attributes:
        teacher: the model distilled from (recover, exits); ``None``: the method's own input.
            A recipe sets it to the recipe's input model.
    """

    tokenizer: Any
    task: Any  # slimformer.data.TaskData
    max_length: int = 128
    calibration: int = 1024
    seed: int = 0
    progress: bool = True
    teacher: Any = None
    cache: dict[str, Any] = field(default_factory=dict)

    def _cached(self, key: str, split: str, **options) -> list[dict]:
        if key not in self.cache:
            from slimformer.batching import batches

            self.cache[key] = batches(
                self.task, self.tokenizer, split=split, max_length=self.max_length, seed=self.seed, **options
            )
        return self.cache[key]

    def calibration_batches(self) -> list[dict]:
        """A seeded sample of ``calibration`` train examples (importance scoring, refits)."""
        return self._cached("calibration", "train", size=self.calibration)

    def training_batches(self) -> list[dict]:
        """The whole train split, labelled and length-grouped (methods that train)."""
        return self._cached("training", "train")

    def validation_batches(self) -> list[dict]:
        """The whole validation split (searches and calibrations; never test)."""
        return self._cached("validation", "validation")


@dataclass(frozen=True)
class Method:
    """A registered method: its name, config class and runner ``(model, config, data) -> Result``."""

    name: str
    config: type
    run: Callable[[Any, Any, MethodData], Result]
    kind: str = "static"
    copies: bool = False  # the runner leaves its input untouched itself (else apply() passes it a copy)
    help: str = ""
    parse: Callable[[dict[str, Any]], Any] | None = None  # fields -> config (default: config.from_dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Method {self.name!r}: kind={self.kind!r}; allowed: {', '.join(KINDS)}")

    @property
    def terminal(self) -> bool:
        """Whether the method may only be the last step of a recipe."""
        return self.kind != "static"

    def config_from(self, fields: dict[str, Any]) -> Any:
        """The config these recipe fields describe; ``ValueError`` names a bad or unknown field."""
        return self.parse(dict(fields)) if self.parse is not None else self.config.from_dict(dict(fields))


_METHODS: dict[str, Method] = {}
_BUILTIN = {"loaded": False}


def _registry() -> dict[str, Method]:
    # the built-in methods register on first use: their modules import this one (FlatConfig, Result)
    if not _BUILTIN["loaded"]:
        _BUILTIN["loaded"] = True
        from slimformer.method_runners import register_builtin

        register_builtin()
    return _METHODS


def register(method: Method) -> None:
    """Make ``method`` available by name (replaces one of the same name, built-in ones included)."""
    _registry()[method.name] = method


def methods() -> dict[str, Method]:
    """Every registered method by name, in registration order (a copy)."""
    return dict(_registry())


def get_method(name: str) -> Method:
    """The method registered as ``name``.

    Raises:
        ValueError: no such method (the message lists the registered ones).
    """
    registry = _registry()
    if name not in registry:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(registry)}")
    return registry[name]


def method_for(config: Any) -> Method:
    """The method whose config class is ``type(config)``.

    Raises:
        ValueError: no method takes this config type.
    """
    registry = _registry()
    for method in registry.values():
        if type(config) is method.config:
            return method
    known = ", ".join(f"{m.config.__name__} ({m.name})" for m in registry.values())
    raise ValueError(f"no method takes a {type(config).__name__}; registered configs: {known}")


def apply(method: str | Method, model, config: Any, data: MethodData) -> Result:
    """Run ``method`` on ``model`` under the contract (input untouched, config checked, a Result back).

    Raises:
        ValueError: an unknown method, or a config of another type than the method's.
    """
    from slimformer.arch import require
    from slimformer.tasks import require_kind

    method = get_method(method) if isinstance(method, str) else method
    require(model, method.name)
    require_kind(model, method.name)  # e.g. early exit on a token classifier, naming why not
    if not isinstance(config, method.config):
        raise ValueError(
            f"method {method.name!r} takes a {method.config.__name__}, got {type(config).__name__}: {config!r}"
        )
    result = method.run(model if method.copies else copy.deepcopy(model), config, data)
    if not isinstance(result, Result):
        raise TypeError(f"method {method.name!r} returned {type(result).__name__}, not a Result")
    return result


def run(model, config: Any, data: MethodData) -> Result:
    """Run the method that ``config``'s type belongs to (see :func:`method_for`) on a copy of ``model``."""
    return apply(method_for(config), model, config, data)


def available(kind: str | None = None) -> list[str]:
    """Names of the registered methods (only those of ``kind`` when given)."""
    return [name for name, m in _registry().items() if kind is None or m.kind == kind]
