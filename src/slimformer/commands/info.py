"""``slimformer list`` and ``slimformer info``: what is built in (models, tasks, the registered methods),
and what a model costs."""

from __future__ import annotations

from typing import Annotated

import typer

from slimformer.commands.common import USER_ERRORS, JsonOpt, ModelArg, emit_json, fail


def registered_methods() -> list[dict[str, str]]:
    """Every method of :mod:`slimformer.methods` as ``{"name", "kind", "help"}`` (each a recipe step)."""
    from slimformer.methods import methods

    return [{"name": m.name, "kind": m.kind, "help": m.help} for m in methods().values()]


def list_builtins(as_json: JsonOpt = False):
    """List the built-in models and tasks (installed from packages, no download) and the registered methods."""
    from slimformer.data import BUILTIN_TASKS
    from slimformer.images import IMAGE_TASKS
    from slimformer.models import BUILTIN_MODELS
    from slimformer.token_data import BUILTIN_TOKEN_TASKS

    data = {"models": {k: v[1] for k, v in BUILTIN_MODELS.items()}, "tasks": {**BUILTIN_TASKS, **IMAGE_TASKS}}
    data["token_tasks"] = dict(BUILTIN_TOKEN_TASKS)
    data["methods"] = registered_methods()
    if as_json:
        emit_json(data)
        return
    for kind in ("models", "tasks", "token_tasks"):
        typer.echo(f"{kind}:")
        for name, desc in data[kind].items():
            typer.echo(f"  {name:18s} {desc}")
    _echo_methods(data["methods"])


def _echo_methods(rows: list[dict[str, str]]) -> None:
    typer.echo("methods (recipe steps of `slimformer compress`):")
    for row in rows:
        typer.echo(f"  {row['name']:10s} {row['kind']:9s} {row['help']}")


def info(
    model: ModelArg,
    seq_len: Annotated[int, typer.Option("--seq-len", help="tokens per sequence for MACs")] = 128,
    as_json: JsonOpt = False,
):
    """Parameters, bytes and MACs of a model, from the cost model, with per-layer shapes, and the
    methods that can compress it (the registered ones)."""
    from slimformer.cost import cost_of, marginal_costs
    from slimformer.models import load_model
    from slimformer.structure import Structure
    from slimformer.tasks import describe, model_kind

    try:
        m, _ = load_model(model)
        structure = Structure.from_model(m)
        cost = cost_of(structure, seq_len)
    except USER_ERRORS as exc:
        fail(exc)
    embedding = _kind(model, m)  # a sentence-embedding model wins over its unused head
    data = {
        "model": model,
        "family": structure.dims.family,
        "kind": model_kind(m),
        "kind_description": describe(m),
        **(embedding if embedding["kind"] == "embedding" else {}),
        **cost.to_dict(),
        "marginal": marginal_costs(structure, seq_len),
        "methods": registered_methods(),
    }
    if as_json:
        emit_json(data)
        return
    _echo_info(model, structure, cost, data["macs_note"], seq_len)
    typer.echo(f"  kind         {data['kind_description']}")
    _echo_methods(data["methods"])


def _echo_info(model: str, structure, cost, macs_note: str, seq_len: int) -> None:
    from slimformer.report import human

    dims = structure.dims
    typer.echo(f"{model} ({dims.family}, hidden {dims.hidden}, head size {dims.head_size})")
    typer.echo(f"  params       {cost.params:,} ({human(cost.params)}), encoder {cost.encoder_params:,}")
    typer.echo(
        f"  bytes        fp32 {human(cost.bytes_fp32)}B, fp16 {human(cost.bytes_fp16)}B, int8 {human(cost.bytes_int8)}B"
    )
    typer.echo(f"  MACs/seq     {cost.macs:,} ({human(cost.macs)}) at {cost.seq_len} tokens")
    if dims.is_image:  # the image size fixes the tokens; --seq-len does not apply
        macs_note = f"{dims.num_patches} patches + {dims.special_tokens} special; the patch projection counts"
    typer.echo(f"               ({macs_note})")
    for i, layer in enumerate(cost.layers):
        typer.echo(f"  layer {i:2d}     heads {layer['heads']:3d}  ffn {layer['ffn']:5d}  MACs {human(layer['macs'])}")


def _kind(name: str, model) -> dict:
    """``kind`` (``embedding`` or ``sequence``), ``kind_description`` and, for an embedding model, ``pooling``.

    An embedding model is marked in its config, or is a sentence-transformers folder without a
    classifier (like the built-in minilm-l6); see :func:`slimformer.embedding.folder_pooling`.
    """
    from slimformer.embedding import embedding_pooling, folder_pooling

    pooling = embedding_pooling(model) or folder_pooling(name)
    if pooling is None:
        labels = model.config.num_labels
        return {"kind": "sequence", "kind_description": f"sequence classification ({labels} classes)"}
    norm = ", normalised" if pooling.normalize else ""
    text = f"sentence embedding ({pooling.mode} pooling{norm}, max {pooling.max_seq_length} tokens; head unused)"
    return {"kind": "embedding", "kind_description": text, "pooling": pooling.to_dict()}
