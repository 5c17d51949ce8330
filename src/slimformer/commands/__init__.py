"""The ``slimformer`` command line: one module per command group, each a thin layer over library functions.

``common`` holds what they share (option aliases, errors, JSON output, console, logging, the output-folder
check) and imports none of them; ``application`` builds the typer app from them. ``app`` and ``main`` load
on first use, so importing one command module (or ``common``) does not load every other.
"""

from __future__ import annotations

from typing import Any

__all__ = ["app", "main"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from slimformer.commands import application

        return getattr(application, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
