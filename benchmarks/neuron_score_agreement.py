"""How closely OPTIN's fast scores rank like exact masking, on the fine-tuned MiniLM-L6 (rotten_tomatoes).

OPTIN scores a unit by the damage masking it does (KL of the outputs + later layers' feature error,
see :mod:`slimformer.static.optin`). Heads are masked one at a time, on a sample of the calibration
set; neurons get a Gauss-Newton estimate. This script measures, on a seeded calibration sample:

* neurons: exact masking of a random sample of neurons per layer against the estimate (same
  examples), Spearman per layer and pooled, for several probe counts, plus each part of the loss;
* heads: exact scores on random subsets of the examples against exact on all of them (and against
  the disjoint rest), and the Gauss-Newton estimate for heads against exact;
* timings, including ``score_optin`` with its defaults on ``--timing-examples`` examples.

Writes benchmarks/results/neuron_score_agreement.{json,md}. Runs single-threaded by default (the
machine is shared); timings are wall clock on this CPU under whatever else runs on it.

    .venv/bin/python benchmarks/neuron_score_agreement.py [--examples 256] [--neuron-examples 64]
"""

from __future__ import annotations

import os
import random
import time

import harness
import numpy as np
import torch

from slimformer.arch import get_adapter
from slimformer.data import make_loader
from slimformer.models import load_model
from slimformer.static.optin import gauss_newton, masking_terms, pack_examples, score_optin

TASK = "rotten_tomatoes"


def markdown_table(rows: list[dict]) -> str:
    """A pipe table with the rows' keys as columns."""
    cols = list(rows[0]) if rows else []
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return "\n".join(lines + ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows])


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, ties sharing their average rank."""
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    return (np.bincount(inv, weights=r) / counts)[inv]


def spearman(a, b) -> float:
    """Spearman rank correlation (Pearson correlation of the ranks)."""
    ra, rb = ranks(np.asarray(a, dtype=np.float64)), ranks(np.asarray(b, dtype=np.float64))
    return float(np.corrcoef(ra, rb)[0, 1])


def bottom_overlap(est, exact, frac: float = 0.5) -> float:
    """Share of the ``frac`` least important units by ``exact`` that ``est`` also puts there."""
    k = max(1, int(len(exact) * frac))
    low_exact = set(np.argsort(np.asarray(exact), kind="mergesort")[:k].tolist())
    low_est = set(np.argsort(np.asarray(est), kind="mergesort")[:k].tolist())
    return len(low_exact & low_est) / k


def neurons(model, batches, args) -> dict:
    """Exact masking of sampled neurons vs the Gauss-Newton estimate on the same examples."""
    adapter = get_adapter(model)
    widths = [adapter.ffn(layer).width for layer in adapter.layers(model)]
    g = torch.Generator().manual_seed(args.seed)
    units = [
        ("ffn", li, int(i)) for li, w in enumerate(widths) for i in torch.randperm(w, generator=g)[: args.per_layer]
    ]
    t0 = time.perf_counter()
    total = sum(widths)
    terms = masking_terms(model, batches, units, progress=False)
    exact_s = time.perf_counter() - t0
    exact = terms.scores(1.0).numpy()
    exact_kl = terms.scores(0.0).numpy()
    norms = terms.norms()
    layer_of = np.array([u[1] for u in units])
    pick = [(li, i) for _, li, i in units]

    def estimate(weight: float, probes: int) -> tuple[np.ndarray, float]:
        t = time.perf_counter()
        options = {"trajectory_weight": weight, "probes": probes, "seed": args.seed, "progress": False}
        _, ffn = gauss_newton(model, batches, norms=norms, **options)
        return np.array([float(ffn[li][i]) for li, i in pick]), time.perf_counter() - t

    kl_est, _ = estimate(0.0, 0)  # the KL part is exact (no probes)
    rows = []
    for probes in args.probes:
        est, secs = estimate(1.0, probes)
        per_layer = [spearman(est[layer_of == li], exact[layer_of == li]) for li in range(len(widths))]
        rows.append(
            {
                "estimate": f"gauss-newton, {probes} probe(s)",
                "spearman_pooled": round(spearman(est, exact), 4),
                "spearman_per_layer": [round(x, 3) for x in per_layer],
                "spearman_trajectory_part": round(spearman(est - kl_est, exact - exact_kl), 4),
                "bottom_half_overlap": round(bottom_overlap(est, exact), 3),
                "median_ratio_est_to_exact": round(float(np.median(est / np.maximum(exact, 1e-30))), 3),
                "seconds_all_neurons": round(secs, 2),
            }
        )
    return {
        "examples": sum(len(b["input_ids"]) for b in batches),
        "neurons_sampled": len(units),
        "neurons_total": total,
        "exact_seconds": round(exact_s, 1),
        "exact_seconds_per_neuron": round(exact_s / len(units), 3),
        "exact_seconds_all_neurons_extrapolated": round(exact_s / len(units) * total, 0),
        "kl_part_spearman": round(spearman(kl_est, exact_kl), 4),
        "kl_share_of_exact": round(float(exact_kl.sum() / exact.sum()), 3),
        "estimates": rows,
    }


def heads(model, batches, args) -> dict:
    """Exact head scores on random subsets of the examples vs on all of them; and the head estimate."""
    adapter = get_adapter(model)
    layers = adapter.layers(model)
    units = [("head", li, h) for li, layer in enumerate(layers) for h in range(adapter.attention(layer).num_heads)]
    n = sum(len(b["input_ids"]) for b in batches)
    t0 = time.perf_counter()
    terms = masking_terms(model, batches, units, progress=False)
    exact_s = time.perf_counter() - t0
    ref = terms.scores(1.0).numpy()
    rng = np.random.default_rng(args.seed)
    rows = []
    for k in [k for k in args.subsets if k < n]:
        vs_all, vs_rest, overlap = [], [], []
        for _ in range(args.draws):
            idx = rng.permutation(n)
            sub = terms.scores(1.0, idx[:k].tolist()).numpy()
            vs_all.append(spearman(sub, ref))
            vs_rest.append(spearman(sub, terms.scores(1.0, idx[k:].tolist()).numpy()))
            overlap.append(bottom_overlap(sub, ref))
        rows.append(
            {
                "head_examples": k,
                "spearman_vs_all_mean": round(float(np.mean(vs_all)), 4),
                "spearman_vs_all_min": round(float(np.min(vs_all)), 4),
                "spearman_vs_rest_mean": round(float(np.mean(vs_rest)), 4),
                "bottom_half_overlap_vs_all": round(float(np.mean(overlap)), 3),
                "seconds_estimated": round(exact_s * k / n, 1),
            }
        )
    t0 = time.perf_counter()
    gn_heads, _ = gauss_newton(model, batches, norms=terms.norms(), probes=1, seed=args.seed, progress=False)
    gn_s = time.perf_counter() - t0
    gn = torch.cat(gn_heads).numpy()
    return {
        "examples": n,
        "heads": len(units),
        "exact_seconds": round(exact_s, 1),
        "subsets": rows,
        "gauss_newton_spearman_vs_exact": round(spearman(gn, ref), 4),
        "gauss_newton_bottom_half_overlap": round(bottom_overlap(gn, ref), 3),
        "gauss_newton_seconds": round(gn_s, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__file__, __doc__, out="neuron_score_agreement.json")
    parser.add_argument("--examples", type=int, default=256, help="calibration examples for the head study")
    parser.add_argument("--neuron-examples", type=int, default=64, help="examples for exact neuron masking")
    parser.add_argument("--per-layer", type=int, default=32, help="neurons masked exactly per layer")
    parser.add_argument("--probes", default="1,4,16", help="probe counts of the neuron estimate to compare")
    parser.add_argument("--subsets", default="32,64,128", help="head subset sizes to compare with all")
    parser.add_argument("--draws", type=int, default=5, help="random subsets per size")
    parser.add_argument("--timing-examples", type=int, default=1000, help="score_optin timing run (0: skip)")
    parser.add_argument("--threads", type=int, default=1)
    args = harness.start(parser, argv)
    if args.smoke:
        args.examples, args.neuron_examples, args.per_layer, args.timing_examples = 16, 8, 4, 16
        args.probes, args.subsets, args.draws = "1", "8", 2
    args.probes = [int(x) for x in args.probes.split(",")]
    args.subsets = [int(x) for x in args.subsets.split(",")]
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    folder, task, _ = harness.finetuned(TASK, args)
    model, tok = load_model(str(folder))
    train = task.split("train")
    sample = random.Random(args.seed).sample(train, max(args.examples, args.timing_examples, args.neuron_examples))

    def packed(examples):
        return pack_examples(list(make_loader(examples, tok, batch_size=32, max_length=64)), batch_size=32)

    t0 = time.perf_counter()
    neuron_part = neurons(model, packed(sample[: args.neuron_examples]), args)
    head_part = heads(model, packed(sample[: args.examples]), args)
    timing = None
    if args.timing_examples:
        batches = list(make_loader(sample[: args.timing_examples], tok, batch_size=32, max_length=64))
        t = time.perf_counter()
        imp = score_optin(model, batches, seed=args.seed, progress=False)
        timing = {"examples": args.timing_examples, "total_seconds": round(time.perf_counter() - t, 1), **imp.info}
        timing.pop("hidden_norms", None)
    report = {
        "command": args.command,
        "model": str(folder),
        "task": "rotten_tomatoes (train split, seeded sample), batch 32, max_length 64, packed by length",
        "threads": args.threads,
        "neurons": neuron_part,
        "heads": head_part,
        "score_optin_defaults": timing,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "environment": harness.environment(),
    }
    md = to_markdown(report, args)
    harness.write_results(args.out, report, md)
    print(md)
    return 0


def to_markdown(r: dict, args) -> str:
    n, h, env = r["neurons"], r["heads"], r["environment"]
    neuron_rows = [
        {k: (", ".join(map(str, v)) if isinstance(v, list) else v) for k, v in row.items()} for row in n["estimates"]
    ]
    lines = [
        harness.header("OPTIN: fast scores against exact masking (MiniLM-L6, rotten_tomatoes)", args, env),
        f"{r['threads']} thread(s); load average "
        f"{r['load_average_before_after'][0]} -> {r['load_average_before_after'][1]} on {env['logical_cores']} cores "
        "(shared machine: timings are indicative).",
        "",
        f"## Neurons: Gauss-Newton estimate vs exact masking ({n['neurons_sampled']} sampled neurons, "
        f"{n['examples']} examples)",
        "",
        f"Exact masking: {n['exact_seconds_per_neuron']} s per neuron (all {n['neurons_total']} neurons would take "
        f"about {n['exact_seconds_all_neurons_extrapolated']:.0f} s on these examples). KL part alone: Spearman "
        f"{n['kl_part_spearman']} (the KL is {n['kl_share_of_exact']:.0%} of the exact damage).",
        "",
        markdown_table(neuron_rows),
        "",
        f"## Heads: exact on a subset vs exact on all {h['examples']} examples ({h['heads']} heads, "
        f"{h['exact_seconds']} s for all)",
        "",
        markdown_table(h["subsets"]),
        "",
        f"Gauss-Newton estimate for heads (all examples, 1 probe, {h['gauss_newton_seconds']} s): Spearman "
        f"{h['gauss_newton_spearman_vs_exact']} vs exact, bottom-half overlap {h['gauss_newton_bottom_half_overlap']}.",
        "",
    ]
    t = r.get("score_optin_defaults")
    if t:
        lines += [
            f"## score_optin with its defaults on {t['examples']} calibration examples",
            "",
            f"Total {t['total_seconds']} s: heads {t['head_seconds']} s (exact, {t['head_examples']} examples), "
            f"neurons {t['neuron_seconds']} s (estimate, {t['neuron_examples']} examples, {t['probes']} probe(s)).",
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
