"""``slimformer list`` and ``slimformer info``: what is built in, and what a model costs."""

from __future__ import annotations

from typing import Annotated

import typer

from slimformer.commands.common import USER_ERRORS, JsonOpt, ModelArg, emit_json, fail


def list_builtins(as_json: JsonOpt = False):
    """List the built-in models and tasks (installed from packages, no download)."""
    from slimformer.data import BUILTIN_TASKS
    from slimformer.models import BUILTIN_MODELS

    data = {"models": {k: v[1] for k, v in BUILTIN_MODELS.items()}, "tasks": dict(BUILTIN_TASKS)}
    if as_json:
        emit_json(data)
        return
    for kind, items in data.items():
        typer.echo(f"{kind}:")
        for name, desc in items.items():
            typer.echo(f"  {name:18s} {desc}")


def info(
    model: ModelArg,
    seq_len: Annotated[int, typer.Option("--seq-len", help="tokens per sequence for MACs")] = 128,
    as_json: JsonOpt = False,
):
    """Parameters, bytes and MACs of a model, from the cost model, with per-layer shapes."""
    from slimformer.cost import cost_of, marginal_costs
    from slimformer.models import load_model
    from slimformer.structure import Structure

    try:
        m, _ = load_model(model)
        structure = Structure.from_model(m)
        cost = cost_of(structure, seq_len)
    except USER_ERRORS as exc:
        fail(exc)
    data = {
        "model": model,
        "family": structure.dims.family,
        **cost.to_dict(),
        "marginal": marginal_costs(structure, seq_len),
    }
    if as_json:
        emit_json(data)
        return
    _echo_info(model, structure, cost, data["macs_note"], seq_len)


def _echo_info(model: str, structure, cost, macs_note: str, seq_len: int) -> None:
    from slimformer.report import human

    dims = structure.dims
    typer.echo(f"{model} ({dims.family}, hidden {dims.hidden}, head size {dims.head_size})")
    typer.echo(f"  params       {cost.params:,} ({human(cost.params)}), encoder {cost.encoder_params:,}")
    typer.echo(
        f"  bytes        fp32 {human(cost.bytes_fp32)}B, fp16 {human(cost.bytes_fp16)}B, int8 {human(cost.bytes_int8)}B"
    )
    typer.echo(f"  MACs/seq     {cost.macs:,} ({human(cost.macs)}) at {seq_len} tokens")
    typer.echo(f"               ({macs_note})")
    for i, layer in enumerate(cost.layers):
        typer.echo(f"  layer {i:2d}     heads {layer['heads']:3d}  ffn {layer['ffn']:5d}  MACs {human(layer['macs'])}")
