"""The ``slimformer`` command line: one module per command group, each a thin layer over library functions.

``common`` holds what they share (option aliases, errors, JSON output, console, logging, the output-folder
check) and imports none of them; ``app`` builds the typer app from them.
"""

from slimformer.commands.app import app, main

__all__ = ["app", "main"]
