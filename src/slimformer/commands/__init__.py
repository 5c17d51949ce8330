"""CLI subcommands, one module each, every one a thin layer over a library function.

``slimformer.cli`` registers them (e.g. ``app.command("export")(export_command)``); they import
from ``slimformer.cli`` only inside the command function, so there is no import cycle.
"""
