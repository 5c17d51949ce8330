"""The tables of each results page, read from the results JSON (see render_results.py).

``PAGES_BODY[page](stem, report)`` returns the markdown lines of one results file; ``headline_rows``
picks the README's headline figures. Every number printed here is read from the report passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

NA = "-"


def num(value: Any, spec: str = ".2f", *, scale: float = 1.0, suffix: str = "") -> str:
    """``value * scale`` formatted with ``spec``; ``-`` for a missing value."""
    if value is None or isinstance(value, str):
        return NA if value is None else value
    return f"{value * scale:{spec}}{suffix}"


def pct(value: Any) -> str:
    """A fraction as a percentage with two decimals (0.83686 -> 83.69)."""
    return num(value, ".2f", scale=100)


def human(n: Any) -> str:
    """1234567 -> 1.23M (parameters, MACs)."""
    if n is None:
        return NA
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def at(mapping: dict | None, batch: int) -> Any:
    """A per-batch-size value; JSON turns the int keys into strings."""
    if not mapping:
        return None
    return mapping.get(str(batch), mapping.get(batch))


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A pipe table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _target_lines(found: dict) -> list[str]:
    lines = []
    for name, value in found.items():
        if isinstance(value, bool):
            lines.append(f"- {name}: {'met' if value else '**MISSED**'}")
        elif isinstance(value, dict) and "met" in value:
            detail = ", ".join(f"{k} {num(v, '.4g')}" for k, v in value.items() if k != "met")
            lines.append(f"- {name}: {'met' if value['met'] else '**MISSED**'} ({detail})")
    return lines


def targets(found: dict | None) -> list[str]:
    """The targets a run recorded, one line each, met or MISSED (the several shapes scripts write)."""
    if not found:
        return []
    if isinstance(found.get("met"), dict):  # skim: {"met": {name: bool}, other figures}
        detail = ", ".join(f"{k} {v}" for k, v in found.items() if k != "met")
        return [f"Targets ({detail}):", "", *_target_lines(found["met"])]
    lines = _target_lines(found)
    return ["Targets:", "", *lines] if lines else []


def count_targets(found: dict | None) -> tuple[int, int]:
    """(met, missed) among the targets of one run."""
    text = "\n".join(targets(found))
    return text.count(": met"), text.count("**MISSED**")


# --- pages ---------------------------------------------------------------------------------------------
def dense_baseline(stem: str, r: dict) -> list[str]:
    heads = ("model", "params", "MACs/seq", "seq len", "test acc", "test F1", "ms @b1", "ms @b32", "seq/s @b32")
    rows = [
        (
            x["name"],
            human(x["params"]),
            human(x["macs"]),
            x["seq_len"],
            num(x["accuracy"], ".4f"),
            num(x["f1_macro"], ".4f"),
            num(x.get("latency_b1_ms")),
            num(x.get("latency_b32_ms"), ".1f"),
            num(x.get("throughput_b32"), ".1f"),
        )
        for x in r["rows"]
    ]
    return table(heads, rows)


def _pivot(summary: list[dict], methods: list[str], cell: Callable[[dict], str], best) -> list[list[str]]:
    """Rows per budget (tightest last), a column per method; the ``best(budget)`` method in bold."""
    budgets = sorted({s["budget"] for s in summary}, reverse=True)
    by = {(s["method"], s["budget"]): s for s in summary}
    out = []
    for b in budgets:
        row, top = [f"{b:g}"], best(b)
        for m in methods:
            s = by.get((m, b))
            text = cell(s) if s else NA
            row.append(f"**{text}**" if s and top == m else text)
        out.append(row)
    return out


def _pair(per_batch: dict | None) -> str:
    return f"{num(at(per_batch, 1))} / {num(at(per_batch, 32))}"


def prune_budgets(stem: str, r: dict) -> list[str]:
    if stem == "batch1_overhead":
        heads = ("model", "MACs", "wall ms", "matmul ms", "other ms", "speedup", "x MACs", "ceiling x MACs")
        rows = [
            (
                x["name"],
                num(x["macs_rel"]),
                num(x["wall_ms"]),
                num(x["matmul_ms"]),
                num(x["other_ms"]),
                num(x["speedup"]),
                num(x["speedup_x_macs"]),
                num(x["ceiling_x_macs"]),
            )
            for x in r["rows"]
        ]
        return ["Where batch-1 time goes (1 x 128 tokens):", "", *table(heads, rows)]
    lines = [f"Calibration: {r.get('calibration')} train examples; seeds {r.get('seeds')}."]
    for res in r["results"]:
        summary, d = res["summary"], res["dense"]
        methods = list(dict.fromkeys(s["method"] for s in summary))

        def best(b, summary=summary):
            return max((s for s in summary if s["budget"] == b), key=lambda s: s["acc_mean"])["method"]

        def acc(s):
            return f"{100 * s['acc_mean']:.1f} ± {100 * s['acc_std']:.1f}"

        lines += ["", f"### {res['task']}: test accuracy (%), mean ± std over seeds (dense {pct(d['accuracy'])})", ""]
        lines += table(["MACs", *methods], _pivot(summary, methods, acc, best))
        timed = [m for m in methods if any(s["method"] == m and s.get("speedup") for s in summary)]
        if timed:
            ms = d.get("latency_ms") or {}
            lines += [
                "",
                "Latency, first seed, interleaved with dense "
                f"({num(at(ms, 1), '.1f')} ms @b1, {num(at(ms, 32), '.0f')} ms @b32):",
            ]

            by = {(s["method"], s["budget"]): s for s in summary}
            budgets = sorted({s["budget"] for s in summary}, reverse=True)
            for key, what in (("speedup", "speedup b1 / b32"), ("speedup_vs_macs", "speedup x MACs b1 / b32")):
                rows = [[f"{b:g}", *(_pair((by.get((m, b)) or {}).get(key)) for m in timed)] for b in budgets]
                lines += ["", *table([f"MACs: {what}", *timed], rows)]
        spans = {m: [s["seconds"] for s in summary if s["method"] == m] for m in methods}
        spread = ", ".join(f"{m} {min(v):.0f}-{max(v):.0f}" for m, v in spans.items())
        lines += ["", f"Method time per budget (s): {spread}"]
    return lines


def frontier(stem: str, r: dict) -> list[str]:
    heads = (
        "model",
        "test acc",
        "weights MB",
        "params",
        "MACs/seq",
        "ms @b1",
        "x @b1",
        "ms @b32",
        "x @b32",
        "frontier",
    )
    rows = [
        (
            x["name"],
            num(x["accuracy"], ".4f"),
            num(x.get("bytes"), ".1f", scale=1e-6),
            human(x["params"]),
            human(x["macs"]),
            num(x.get("latency_b1_ms")),
            num(x.get("speedup_b1")),
            num(x.get("latency_b32_ms"), ".1f"),
            num(x.get("speedup_b32")),
            x.get("frontier", ""),
        )
        for x in r["rows"]
    ]
    lines = [f"Test split, {r.get('seq_len')} tokens; frontier: * accuracy-latency, † accuracy-memory.", ""]
    lines += ["![accuracy vs latency](../frontier_latency.png)", "![accuracy vs memory](../frontier_memory.png)", ""]
    return lines + table(heads, rows)


ONNX_LABELS = {
    "dense_pytorch_fp32": "dense, PyTorch fp32",
    "dense_pytorch_int8": "dense, PyTorch dynamic int8",
    "dense_onnx_fp32": "dense, ONNX fp32",
    "dense_onnx_int8": "dense, ONNX int8",
    "pruned_pytorch_fp32": "OPTIN, PyTorch fp32",
    "pruned_pytorch_int8": "OPTIN, PyTorch dynamic int8",
    "pruned_onnx_fp32": "OPTIN, ONNX fp32",
    "pruned_onnx_int8": "OPTIN, ONNX int8",
}


def onnx_export(stem: str, r: dict) -> list[str]:
    dense = r["rows"]["dense_pytorch_fp32"]["accuracy"]
    heads = (
        "variant",
        "test acc",
        "Δ vs dense (pts)",
        "max abs Δ logit",
        "argmax agreement",
        "file MB",
        "ms b1",
        "speedup b1",
        "ms b32",
        "speedup b32",
    )
    rows = [
        (
            label,
            num(x["accuracy"], ".4f"),
            num(x["accuracy"] - dense, "+.2f", scale=100),
            num(x.get("max_abs_diff"), ".2g"),
            num(x.get("argmax_agreement"), ".4f"),
            num(x.get("file_mb"), ".1f"),
            num(x.get("ms_b1")),
            num(x.get("speedup_b1"), ".2f", suffix="x"),
            num(x.get("ms_b32"), ".1f"),
            num(x.get("speedup_b32"), ".2f", suffix="x"),
        )
        for key, label in ONNX_LABELS.items()
        if (x := r["rows"].get(key))
    ]
    prune = r.get("prune", {})
    lines = [
        f"{r['task']}, {r['test_examples']} test examples; OPTIN {prune.get('budget')}, "
        f"{prune.get('calibration')} calibration examples.",
        "",
    ]
    return lines + table(heads, rows) + [""] + targets(r.get("targets"))


def axformer(stem: str, r: dict) -> list[str]:
    lines = []
    for res in r["results"]:
        dense = res["rows"][0]["accuracy"]
        heads = ("model", "test acc", "Δ pts", "MACs", "x smaller", "ms @b1", "x @b1", "ms @b32", "x @b32")
        rows = [
            (
                x["name"],
                pct(x["accuracy"]),
                num(x["accuracy"] - dense, "+.2f", scale=100),
                num(x.get("macs_rel"), ".3f"),
                num(x.get("size_vs_dense")),
                num(x.get("latency_b1_ms")),
                num(x.get("speedup_b1")),
                num(x.get("latency_b32_ms"), ".1f"),
                num(x.get("speedup_b32")),
            )
            for x in res["rows"]
        ]
        searched = ", ".join(f"{k} {v['seconds']:.0f} s" for k, v in res.get("searches", {}).items())
        lines += [
            f"### {res['task']} ({res.get('validation_examples')} validation, {res.get('test_examples')} test)",
            "",
        ]
        lines += table(heads, rows) + ["", f"Search time: {searched or NA}.", ""] + targets(res.get("targets"))
    return lines


def slim_curve(stem: str, r: dict) -> list[str]:
    res = r["result"]
    dense = res["dense_accuracy"]
    heads = (
        "method",
        "budget",
        "test acc",
        "vs dense (pt)",
        "params",
        "MB fp32",
        "% dense bytes",
        "encoder %",
        "ms b1",
        "ms b32",
        "x b32",
        "extract s",
    )
    rows = [
        (
            x["method"],
            f"{x['budget']:.2f}",
            num(x["accuracy"], ".4f"),
            num(x["accuracy"] - dense, "+.2f", scale=100),
            human(x["params"]),
            num(x["bytes_fp32"], ".1f", scale=1e-6),
            num(x["bytes_rel"], ".1f", scale=100),
            num(x["encoder_rel"], ".1f", scale=100),
            num(at(x.get("latency_ms"), 1)),
            num(at(x.get("latency_ms"), 32), ".1f"),
            num(at(x.get("speedup"), 32)),
            x.get("extract_s", NA),
        )
        for x in res["rows"]
    ]
    train = res.get("train", {})
    lines = [
        f"{res['task']}: dense test accuracy {num(dense, '.4f')}, {res['test_examples']} test examples; "
        f"one run of {train.get('global_step')} steps, {train.get('wall_time_s')} s.",
        "",
    ]
    return lines + table(heads, rows) + [""] + targets(res.get("targets"))


def early_exit(stem: str, r: dict) -> list[str]:
    lines = []
    for res in r["results"]:
        dense = res["rows"][0]["test"]["accuracy"]
        heads = ("model", "test acc", "Δ pts", "avg exit layer", "MACs rel", "ms @b1", "x @b1", "ms @b32", "x @b32")
        rows = []
        for x in res["rows"]:
            t1, t32 = x["timing"]["b1"], x["timing"]["b32"]
            rows.append(
                (
                    x["name"],
                    num(x["test"]["accuracy"], ".4f"),
                    num(x["test"]["accuracy"] - dense, "+.2f", scale=100),
                    num(x.get("avg_exit_layer")),
                    num(x.get("macs_rel"), ".3f"),
                    num(t1["mean_ms"]),
                    num(t1.get("speedup_mean")),
                    num(t32["mean_ms"], ".1f"),
                    num(t32.get("speedup_mean")),
                )
            )
        lines += [f"### {res['task']} ({res.get('seq_len')} tokens)", "", *table(heads, rows), ""]
        lines += targets(res.get("targets"))
    return lines


def skim(stem: str, r: dict) -> list[str]:
    d = r["dense"]
    heads = ("model", "shift", "val acc", "test acc", "mean kept", "rel MACs", "ms b1", "ms b32", "x b1", "x b32")
    rows = [
        (
            "dense",
            NA,
            pct(d["validation"]["accuracy"]),
            pct(d["test"]["accuracy"]),
            "1.00",
            "1.00",
            num(at(d.get("latency_ms"), 1), ".1f"),
            num(at(d.get("latency_ms"), 32), ".0f"),
            "1.00",
            "1.00",
        )
    ]
    for x in r["rows"]:
        t, lat, sp = x["test"], x.get("latency_ms"), x.get("speedup")
        name = f"**{x['name']}**" if x.get("chosen") else x["name"]
        rows.append(
            (
                name,
                num(x["shift"], ".3f"),
                pct(x["validation"]["accuracy"]),
                pct(t["accuracy"]),
                num(t["mean_kept"], ".3f"),
                num(t["relative_macs"], ".3f"),
                num(at(lat, 1), ".1f"),
                num(at(lat, 32), ".0f"),
                num(at(sp, 1)),
                num(at(sp, 32)),
            )
        )
    lines = [
        f"{r['task']}, max length {r['max_length']}, skim weight {r['train_config']['skim_weight']}; "
        f"chosen on validation: {r.get('selection')} (bold).",
        "",
    ]
    return lines + table(heads, rows) + [""] + targets(r.get("targets"))


#: The method pages' renderers, by page name (render_studies.py adds the studies').
PAGES_BODY: dict[str, Callable[[str, dict], list[str]]] = {
    f.__name__: f
    for f in (
        dense_baseline,
        prune_budgets,
        frontier,
        onnx_export,
        axformer,
        slim_curve,
        early_exit,
        skim,
    )
}
