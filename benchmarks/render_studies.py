"""The tables of the studies' results pages (fine-tuning, layer shapes, repair, OPTIN's scores)."""

from __future__ import annotations

from collections.abc import Callable

from render_tables import num, table


def finetune_sweep(stem: str, r: dict) -> list[str]:
    heads = ("lr", "epochs", "validation acc", "test acc", "train time (s)")
    rows = [
        (
            f"{x['lr']:g}",
            x["epochs"],
            num(x["validation_accuracy"], ".4f"),
            num(x["test_accuracy"], ".4f"),
            num(x["train_time_s"], ".0f"),
        )
        for x in r["rows"]
    ]
    return table(heads, rows) + ["", f"Chosen by validation accuracy: lr {r['chosen_by_validation']['lr']:g}."]


def shape_latency(stem: str, r: dict) -> list[str]:
    lines = []
    for check in r.get("table_check", []):
        heads = ("model", "cpu: predicted", "measured", "error", "wall: predicted", "measured", "error")
        rows = [
            (
                x["model"],
                num(x["cpu"]["predicted_ms"]),
                num(x["cpu"]["measured_ms"]),
                num(x["cpu"]["error"], "+.1%"),
                num(x["wall"]["predicted_ms"]),
                num(x["wall"]["measured_ms"]),
                num(x["wall"]["error"], "+.1%"),
            )
            for x in check["rows"]
        ]
        lines += [f"### Latency table vs real pruned models, batch {check['batch']}", "", *table(heads, rows), ""]
    for sweep in r.get("rounding", []):
        rows = [
            (k, ", ".join(map(str, g["widths"])), num(g["mean_excess"], "+.1%"))
            for k, g in sweep["excess_by_pow2_divisor"].items()
        ]
        lines += [f"### FFN width rounding, batch {sweep['batch']} (time over the linear trend)", ""]
        lines += table(("largest power-of-2 divisor", "widths", "mean excess"), rows) + [""]
    if r.get("conclusion"):
        lines += ["### Conclusion (recorded with the run)", "", r["conclusion"]]
    return lines


def repair_effect(stem: str, r: dict) -> list[str]:
    rows = [
        (x["model"], num(x["ridge"], "g"), num(x["val_accuracy"], ".4f"), num(x.get("repair_s"), ".1f"))
        for x in r["rows"]
    ]
    return [
        f"{r.get('plan')}; {r['validation_examples']} validation examples.",
        "",
        *table(("model", "ridge", "val accuracy", "repair time (s)"), rows),
    ]


def neuron_score_agreement(stem: str, r: dict) -> list[str]:
    n, h = r["neurons"], r["heads"]
    est = [
        (
            x["estimate"],
            x["spearman_pooled"],
            x["spearman_trajectory_part"],
            x["bottom_half_overlap"],
            x["seconds_all_neurons"],
        )
        for x in n["estimates"]
    ]
    sub = [
        (x["head_examples"], x["spearman_vs_all_mean"], x["spearman_vs_all_min"], x["bottom_half_overlap_vs_all"])
        for x in h["subsets"]
    ]
    return [
        f"### Neurons: estimate vs exact masking ({n['neurons_sampled']} neurons, {n['examples']} examples)",
        "",
        *table(("estimate", "Spearman", "Spearman (trajectory part)", "bottom-half overlap", "s (all neurons)"), est),
        "",
        f"### Heads: exact on a subset vs all {h['examples']} examples",
        "",
        *table(("examples", "Spearman mean", "Spearman min", "bottom-half overlap"), sub),
        "",
        f"Gauss-Newton for heads: Spearman {h['gauss_newton_spearman_vs_exact']} vs exact.",
    ]


STUDIES_BODY: dict[str, Callable[[str, dict], list[str]]] = {
    f.__name__: f for f in (finetune_sweep, shape_latency, repair_effect, neuron_score_agreement)
}
