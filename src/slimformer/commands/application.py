"""The ``slimformer`` typer app: every command module registered under its name (``slimformer.commands.app``)."""

from __future__ import annotations

from typing import Annotated

import typer

from slimformer.commands import (
    axformer,
    bench,
    compress,
    demo,
    embedding,
    evaluate,
    export,
    finetune,
    fit,
    info,
    pareto,
    prune,
)
from slimformer.commands.common import setup_logging
from slimformer.commands.exit import exit_app
from slimformer.commands.skim import skim_app
from slimformer.commands.slim import slim_app

app = typer.Typer(
    help="Make fine-tuned transformer encoders smaller and faster, and measure it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log progress messages")] = False):
    setup_logging(verbose)


app.command("list")(info.list_builtins)
app.command("info")(info.info)
app.command("evaluate")(evaluate.evaluate)
app.command("bench")(bench.bench)
app.command("finetune")(finetune.finetune)
app.command("prune", cls=prune.PruneCommand)(prune.prune)
app.command("compress", cls=compress.RecipeCommand)(compress.compress)
app.command("pareto")(pareto.pareto)
app.command("demo")(demo.demo)
app.command("export")(export.export_command)
app.command("axformer", cls=axformer.AxCommand)(axformer.axformer_command)
app.command("fit")(fit.fit_command)
app.command("embed-compress")(embedding.embed_compress)
app.add_typer(exit_app, name="exit")
app.add_typer(skim_app, name="skim")
app.add_typer(slim_app, name="slim")


def main() -> None:
    """Run the ``slimformer`` command line."""
    app()
