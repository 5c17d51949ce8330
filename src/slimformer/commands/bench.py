"""``slimformer bench``: wall-clock latency and throughput, optionally against a second model."""

from __future__ import annotations

from typing import Annotated

import typer

from slimformer.commands.common import USER_ERRORS, JsonOpt, ModelArg, SeqLenOpt, emit_json, fail


def bench(
    model: ModelArg,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="comma-separated batch sizes")] = "1,32",
    seq_len: SeqLenOpt = 128,
    repeats: Annotated[int, typer.Option(help="timed runs per batch size")] = 20,
    warmup: Annotated[int, typer.Option(help="untimed runs first")] = 3,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's choice)")] = None,
    vs: Annotated[str | None, typer.Option("--vs", help="a reference model to compare against")] = None,
    as_json: JsonOpt = False,
):
    """Wall-clock latency and throughput per batch size (median and spread), optionally vs another model.

    With --vs the two models are timed in alternating calls, so the speedup is not skewed by the machine
    getting busier or quieter between the two runs.

    An embedding model (saved by `slimformer embed-compress`, or a sentence-transformers folder such as
    minilm-l6) is timed as its users run it: encoder and pooling, no classification head.
    """
    from slimformer.bench import BenchConfig, bench_model, bench_models, compare, format_table, parse_int_list

    try:
        config = BenchConfig(
            batch_sizes=parse_int_list(batch_sizes), seq_len=seq_len, repeats=repeats, warmup=warmup, threads=threads
        )
        m = _timed_model(model)
        other = None
        if vs is None:
            result = bench_model(m, config, progress=not as_json)
        else:
            # Interleaved: both models share any drift of the machine, so their ratio is trustworthy.
            ref = _timed_model(vs)
            both = bench_models({"model": m, "vs": ref}, config, progress=not as_json)
            result, other = both["model"], both["vs"]
    except USER_ERRORS as exc:
        fail(exc)
    if not as_json:
        typer.echo(format_table(result, other))
        return
    data = {"model": model, **result}
    if other is not None:
        data["vs"] = {"model": vs, **other}
        data["comparison"] = compare(result, other)
    emit_json(data)


def _timed_model(name: str):
    """The model as its users call it: an embedding model's encoder + pooling, else the classifier."""
    from slimformer.embedding import EmbeddingForward, folder_pooling, load_embedding_model
    from slimformer.models import load_model

    if folder_pooling(name) is not None:
        return EmbeddingForward(load_embedding_model(name)[0])
    return load_model(name)[0]
