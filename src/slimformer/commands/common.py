"""What every ``slimformer`` command shares: option aliases, errors, JSON output, console, logging.

This module imports nothing from the command modules (they import it), so there is no import cycle.
Importing it loads typer only; torch and transformers load inside the helpers that need them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperCommand

#: exceptions that mean "the user asked for something that cannot work": exit code 2, one line on stderr
#: Errors shown as one line (no traceback): bad input, missing files, and OS failures such as a full disk.
USER_ERRORS = (ValueError, OSError, ImportError)

# ---- option aliases (one definition each; commands with other help texts spell theirs out) ----------------

ModelArg = Annotated[str, typer.Argument(help="built-in model (see `slimformer list`), local folder, or hub id")]
TaskOpt = Annotated[
    str, typer.Option("--task", "-t", help="built-in task (see `slimformer list`), or a CSV/TSV/JSONL file")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print machine-readable JSON only")]
TextCol = Annotated[str, typer.Option(help="column holding the text (user files)")]
PairCol = Annotated[str | None, typer.Option(help="optional second text column for pair tasks (user files)")]
LabelCol = Annotated[str, typer.Option(help="column holding the label (user files)")]
ValFileOpt = Annotated[
    Path | None,
    typer.Option("--validation-file", help="your own validation file, used as given (--task is then the train file)"),
]
TestFileOpt = Annotated[
    Path | None, typer.Option("--test-file", help="your own test file, used as given (--task is then the train file)")
]
SeedOpt = Annotated[int, typer.Option(help="seed of the data split")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="replace a non-empty --out")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="continue from the last epoch checkpoint in --out")]
EvaluateOpt = Annotated[str | None, typer.Option("--evaluate", help="also report metrics on this split (e.g. test)")]
CalibrationOpt = Annotated[int, typer.Option(help="calibration examples sampled from the train split")]
SeqLenOpt = Annotated[int, typer.Option("--seq-len", help="tokens per sequence")]
BatchSizesOpt = Annotated[str, typer.Option("--batch-sizes", help="comma-separated batch sizes to time")]
RecipeMaxLenOpt = Annotated[
    int | None, typer.Option(help="truncate inputs to this many tokens (default: the task's recipe)")
]


def SetOpt(config: str, example: str | None = None) -> Any:  # noqa: N802 (reads as a type in signatures)
    """The repeatable ``--set FIELD=VALUE`` option for the fields of ``config`` (named in the help)."""
    text = f"any other {config} field FIELD=VALUE (repeatable)" + (f", e.g. {example}" if example else "")
    return Annotated[list[str] | None, typer.Option("--set", help=text)]


def field_readers(cls: type) -> tuple[Callable[[str], str], Callable[[str], Any]]:
    """``(help, default)``: readers of ``cls``'s dataclass fields, for an option's help text and default."""
    return partial(field_help, cls), partial(field_default, cls)


def field_help(cls: type, name: str) -> str:
    """The help text of field ``name`` of config ``cls``, from ``cls.field_help()`` (so CLI help and config agree)."""
    helps = cls.field_help()
    if name not in helps:
        raise KeyError(f"{cls.__name__} has no field {name!r}; fields: {', '.join(helps)}")
    return helps[name]


def field_default(cls: type, name: str) -> Any:
    """The default of dataclass field ``name`` of ``cls``."""
    return _field(cls, name).default


def _field(cls: type, name: str) -> dataclasses.Field:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if name not in fields:
        raise KeyError(f"{cls.__name__} has no field {name!r}; fields: {', '.join(fields)}")
    return fields[name]


class LazyHelpCommand(TyperCommand):
    """A command whose help is completed when first shown (:meth:`complete_help`), so that building the
    app imports no config module or method registry (several load torch) for a run that shows no help."""

    _help_completed = False

    def complete_help(self) -> None:
        """Fill in help texts before the help is formatted (subclasses)."""

    def format_help(self, ctx, formatter) -> None:
        if not self._help_completed:
            self.complete_help()
            self._help_completed = True
        super().format_help(ctx, formatter)


def config_help_command(*configs: str) -> type[LazyHelpCommand]:
    """A command class whose options declared without help show the help of the config field of the
    same name, read with ``Config.field_help()`` from the first of ``configs`` (``"module:Class"``) that
    has the field, when help is shown. Options with their own help (a CLI-only meaning) keep it."""

    class ConfigHelpCommand(LazyHelpCommand):
        def complete_help(self) -> None:
            helps = [_config_class(path).field_help() for path in configs]
            for param in self.params:
                if hasattr(param, "help") and not param.help:  # an option or argument declared without help
                    param.help = next((h[param.name] for h in helps if param.name in h), None)

    return ConfigHelpCommand


def _config_class(path: str) -> type:
    import importlib

    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


# ---- output, errors, logging ---------------------------------------------------------------------------


def emit_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout (the only thing printed under ``--json``)."""
    typer.echo(json.dumps(data, indent=2, default=str))


def fail(exc: Exception, code: int = 2) -> NoReturn:
    """Print ``error: <exc>`` on stderr and exit with ``code`` (2: the user's input cannot work)."""
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code) from None


def console():
    """A rich console on stdout; 140 columns wide when piped, so tables are not squeezed into 80."""
    from rich.console import Console

    out = Console()
    if not out.is_terminal:
        out = Console(width=140)
    return out


def setup_logging(verbose: bool) -> None:
    """Log to stderr (INFO with ``--verbose``, else WARNING); silence transformers' own messages and bars."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # our own bars show progress; theirs repeat on every load


# ---- checks and parsing shared by commands ---------------------------------------------------------------


def ensure_output_dir(
    path: Path | None, overwrite: bool, *, resume: bool | None = None, inputs: tuple[str | Path, ...] = ()
) -> None:
    """Check an output folder before any work starts (``None``: no folder asked for).

    Args:
        path: the folder the command will write.
        overwrite: the user passed ``--overwrite`` (the old folder is replaced only once the new one is complete).
        resume: ``None`` for commands without ``--resume``; else whether it was passed (a non-empty folder
            is then expected).
        inputs: what the command reads (the model): the output may not be or hold it.

    Raises:
        NotADirectoryError: ``path`` is a file.
        FileExistsError: ``path`` holds files and neither ``--overwrite`` nor ``--resume`` was passed.
        ValueError: ``path`` is the root, home, the working folder or above it, or holds an input.
        PermissionError: ``path`` cannot be written.
    """
    from slimformer.fsutil import check_output_dir

    if path is None:
        return
    try:
        check_output_dir(path, overwrite=overwrite or bool(resume), inputs=inputs)
    except FileExistsError:
        hint = "pass --overwrite or --resume" if resume is not None else "choose another or pass --overwrite"
        raise FileExistsError(f"output folder {str(path)!r} is not empty; {hint}") from None


def ensure_distinct(**folders: Path | None) -> None:
    """Refuse two output options naming the same folder (``out=..., int8_out=...``: the option names)."""
    named = {name: f for name, f in folders.items() if f is not None}
    if len({f.resolve() for f in named.values()}) < len(named):
        names = [f"--{n.replace('_', '-')}" for n in folders]
        options = f"{', '.join(names[:-1])} and {names[-1]}" if len(names) > 1 else names[0]
        raise ValueError(f"{options} must be different folders, got {[str(f) for f in named.values()]}")


def load_task_option(
    task: str,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    seed: int = 0,
    *,
    validation_file: Path | None = None,
    test_file: Path | None = None,
):
    """The task named by ``--task`` with the user-file options (one place for every command)."""
    from slimformer.data import load_task

    return load_task(
        task,
        text_column=text_column,
        text_pair_column=text_pair_column,
        label_column=label_column,
        validation_file=validation_file,
        test_file=test_file,
        seed=seed,
    )


def model_and_task(
    model: str,
    task: str,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    seed: int = 0,
    validation_file: Path | None = None,
    test_file: Path | None = None,
):
    """``(model, tokenizer, task)``: a classifier with a trained head and the task, labels in the model's order."""
    from slimformer.models import load_model

    data = load_task_option(
        task, text_column, text_pair_column, label_column, seed, validation_file=validation_file, test_file=test_file
    )
    m, tok = load_model(model, require_head=True)
    return m, tok, check_labels(m, data, model, task)


def refuse_token_model(m, name: str) -> None:
    """``ValueError`` for a token classifier in a command that needs a sequence classifier, saying where it runs."""
    from slimformer.tasks import is_token_classifier

    if is_token_classifier(m):
        raise ValueError(
            f"model {name!r} is a token classifier: this command needs sequence-level outputs; token "
            "classifiers run with slimformer prune (optin, fisher, magnitude, random), evaluate and info"
        )


def check_labels(model, data, model_name: str, task: str):
    """The task with its labels in the model's order (``id2label``, when the model names its classes).

    Raises:
        ValueError: a task label the model does not know (named), a label count that differs, or a
            token classifier (see :func:`refuse_token_model`).
    """
    from slimformer.data import align_labels
    from slimformer.models import model_label_names

    check_modality(model, data, model_name, task)
    refuse_token_model(model, model_name)  # every sequence-task command comes through here
    names = model_label_names(model.config)
    if names is not None:
        data = align_labels(data, names)
    if model.config.num_labels != data.num_labels:
        raise ValueError(
            f"model {model_name!r} has {model.config.num_labels} labels but task {task!r} has {data.num_labels}"
        )
    return data


def check_modality(model, data, model_name: str, task: str) -> None:
    """``ValueError`` when a text task meets an image model or an image task a text model."""
    from slimformer.arch import get_adapter_for_config

    adapter = get_adapter_for_config(model.config)
    kind = data.info.get("modality", "text")
    if adapter.modality != kind:
        hint = "an image task (digits or an ImageFolder path)" if adapter.modality == "image" else "a text task"
        raise ValueError(
            f"task {task!r} is {'an image' if kind == 'image' else 'a text'} task but model {model_name!r} "
            f"({adapter.family}) classifies "
            f"{'images' if adapter.modality == 'image' else 'text'}: give {hint}"
        )


def max_length_for(data, max_length: int | None) -> int:
    """``max_length`` if given, else the task's fine-tuning recipe's."""
    if max_length:
        return max_length
    from slimformer.pipeline import recipe_for

    return recipe_for(data.name).max_length


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """``["head_examples=256", "repair=false"]`` -> typed values (JSON literals, else strings)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set head_examples=256")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def fractions(text: str, option: str) -> tuple[float, ...]:
    """``"0.6,0.4"`` -> ``(0.6, 0.4)``; a clear error naming the option and the bad text otherwise."""
    try:
        return tuple(float(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise ValueError(f"{option} {text!r}: expected comma-separated fractions such as 0.6,0.4") from None


def split_metrics(model, tokenizer, data, split: str, *, max_length: int, progress: bool) -> dict[str, Any]:
    """Task metrics of ``model`` on ``split`` of ``data``, as ``{"split": split, **metrics}`` (``--evaluate``)."""
    from slimformer.evaluate import evaluate

    metrics = evaluate(model, tokenizer, data.split(split), max_length=max_length, progress=progress)
    return {"split": split, **metrics}


def split_examples(data, split: str, limit: int | None = None) -> list:
    """The examples of ``split``, only the first ``limit`` when given."""
    examples = data.split(split)
    return examples[:limit] if limit else examples
