"""The README's headline figures, each read from its results file (see render_results.py)."""

from __future__ import annotations

from render_tables import at, count_targets, num, pct


def _row(rows: list[dict], name: str) -> dict:
    for r in rows:
        if r["name"] == name:
            return r
    raise KeyError(f"no row named {name!r}; rows: {[r['name'] for r in rows]}")


def headline_rows(data: dict[str, dict[str, dict]]) -> list[tuple[str, str, str]]:
    """``(page, what, figures)`` for the README's short table, every figure read from ``data``."""
    out = []
    dense = data["dense_baseline"]["dense_baseline"]["rows"]
    out.append(
        (
            "dense_baseline",
            "MiniLM-L6, fine-tuned (dense)",
            "; ".join(
                f"{r['name'].split(' / ')[-1]} {pct(r['accuracy'])}%, {num(r.get('latency_b1_ms'), '.1f')} ms @b1 "
                f"x {r['seq_len']} tokens"
                for r in dense
            ),
        )
    )
    out.append(fit_row(data["fit"]["fit_maxdrop"]))
    res = data["prune_budgets"]["prune_budgets_rotten"]["results"][0]
    s = next(x for x in res["summary"] if x["method"] == "optin" and x["budget"] == 0.5)
    out.append(
        (
            "prune_budgets",
            "OPTIN one-shot, 50% MACs, no retraining (rotten_tomatoes)",
            f"{pct(s['acc_mean'])} ± {pct(s['acc_std'])}% (dense {pct(res['dense']['accuracy'])}%), "
            f"{num(at(s['speedup'], 1))}x @b1, {num(at(s['speedup'], 32))}x @b32",
        )
    )
    o = data["onnx_export"]["onnx_export"]["rows"]
    q, d = o["pruned_onnx_int8"], o["dense_pytorch_fp32"]
    out.append(
        (
            "onnx_export",
            "OPTIN 50% + onnxruntime int8, 128 tokens",
            f"{pct(q['accuracy'])}% (dense {pct(d['accuracy'])}%), {num(q['speedup_b1'])}x @b1, "
            f"{num(q['speedup_b32'])}x @b32, {num(q.get('file_mb'), '.1f')} MB",
        )
    )
    ax = data["axformer"]["axformer_rotten_repair"]["results"][0]["rows"]
    a, a8, dx = _row(ax, "axformer accuracy-first"), _row(ax, "axformer accuracy-first int8"), ax[0]
    out.append(
        (
            "axformer",
            "AxFormer accuracy-first (rotten_tomatoes)",
            f"{pct(a['accuracy'])}% (dense {pct(dx['accuracy'])}%), {num(a['speedup_b32'])}x @b32; "
            f"int8: {num(a8['size_vs_dense'])}x smaller, {num(a8['speedup_b32'])}x @b32",
        )
    )
    sl = data["slim_curve"]["slim_curve_rotten"]["result"]
    s3 = next(r for r in sl["rows"] if r["method"] == "slim" and r["budget"] == 0.3)
    out.append(
        (
            "slim_curve",
            "Differentiable slimming, 30% of encoder bytes (rotten_tomatoes)",
            f"{pct(s3['accuracy'])}% (dense {pct(sl['dense_accuracy'])}%), "
            f"{num(at(s3.get('speedup'), 32))}x @b32; one run serves every budget",
        )
    )
    sk = data["skim"]["skim_bbc_news_full"]
    chosen = next(r for r in sk["rows"] if r.get("chosen"))
    out.append(
        (
            "skim",
            f"Token skimming, bbc_news at {sk['max_length']} tokens",
            f"{pct(chosen['test']['accuracy'])}% (dense {pct(sk['dense']['test']['accuracy'])}%), "
            f"{num(at(chosen['speedup'], 1))}x @b1, {num(at(chosen['speedup'], 32))}x @b32",
        )
    )
    ex = data["early_exit"]["early_exit_rotten"]["results"][0]["rows"]
    e, de = ex[-1], ex[0]
    out.append(
        (
            "early_exit",
            "Slender + early exit (rotten_tomatoes)",
            f"{num(e['test']['accuracy'], '.2%')} (dense {num(de['test']['accuracy'], '.2%')}), "
            f"{num(e['timing']['b1']['speedup_mean'])}x @b1, {num(e['timing']['b32']['speedup_mean'])}x @b32",
        )
    )
    out.append(targets_row(data))
    return out


def fit_row(report: dict) -> tuple[str, str, str]:
    """``slimformer fit --max-drop``: its choice per batch size beside dense and the peer, on test inputs."""
    parts = []
    for r in report["rows"]:
        parts.append(
            f"b{r['batch']}: `{r['chosen']}` {pct(r['test_accuracy']['chosen'])}% "
            f"(dense {pct(r['test_accuracy']['dense'])}%), {num(r['test_speedup'])}x, "
            f"{num(r['fit_vs_peer'])}x the peer's speed"
        )
    return (
        "fit",
        f"`slimformer fit`, fastest within {num(report['max_drop'], 'g')} validation point of dense "
        f"({report['task']}, {report['seq_len']} tokens)",
        "; ".join(parts) + f"; peer (dense, onnxruntime optimizer + int8) {pct(report['peer']['test_accuracy'])}%",
    )


def targets_row(data: dict[str, dict[str, dict]]) -> tuple[str, str, str]:
    """The headline row counting every target recorded in the results files."""
    met = missed = 0
    for page in data.values():
        for report in page.values():
            for found in _all_targets(report):
                m, x = count_targets(found)
                met, missed = met + m, missed + x
    return (
        "README",
        "Targets recorded in the results files (every run, earlier ones too)",
        f"{met} met, {missed} missed",
    )


def _all_targets(report: dict) -> list[dict]:
    """Every ``targets`` dict of a report, wherever its script put it."""
    found = [report.get("targets")]
    found += [r.get("targets") for r in report.get("results", [])]
    found.append(report.get("result", {}).get("targets"))
    return [t for t in found if t]
