"""Outside baseline: Torch-Pruning's one-shot structured pruning of the fine-tuned MiniLM-L6 at MACs budgets.

Torch-Pruning (``pip install torch-pruning``, https://github.com/VainF/Torch-Pruning) is set up as in its
HF BERT example: a ``MetaPruner`` with ``TaylorImportance`` (|w * dL/dw| from the task loss summed over
the calibration batches, gradients taken in eval mode), local ("uniform") pruning, whole attention
heads (``num_heads`` / ``prune_num_heads=True``, ``prune_head_dims=False``) and FFN channels; the
hidden (residual) dimension, embeddings, pooler and classifier are left alone. No retraining, no repair.

Every layer keeps the same number of heads and FFN neurons. The kept fraction is the same for
heads and neurons up to the head granularity: heads = round(12 k) for the fraction k that would
meet the budget, then the FFN width is searched (bisection on our cost model) so that
``slimformer.cost`` MACs land on the target (within 1%, in practice within one neuron per layer).
The pruned model is then checked: its :class:`Structure` must be the planned one, its parameter count
must equal the cost model's, and its logits must equal those of the dense model with the removed
heads / neurons zeroed (i.e. Torch-Pruning removed whole heads, consistently in q, k, v and the output
projection).

Writes benchmarks/results/torch_pruning.{json,md} (``torch_pruning_smoke`` with ``--limit``; or ``--out``).

    .venv/bin/python benchmarks/torch_pruning_baseline.py [--tasks rotten_tomatoes,bbc_news] \
        [--budgets 0.8,0.6,0.5,0.4,0.3] [--seeds 0,1,2] [--calibration 1024] [--limit N]

From another benchmark::

    sys.path.insert(0, "benchmarks")
    from torch_pruning_baseline import torch_pruning_prune
    pruned, info = torch_pruning_prune(model, 0.6, batches, seed=0)
"""

from __future__ import annotations

import copy
import importlib.metadata
import logging
import random
import statistics
import time

import harness
import torch

from slimformer.arch import get_adapter
from slimformer.cost import cost_of
from slimformer.structure import LayerShape, Structure

MACS_TOLERANCE = 0.01  # achieved MACs must be within 1% of the target (relative)
REFERENCE = "issue: Torch-Pruning 1.6 Taylor, uniform: 81.3% at 60% MACs, 79.2% at 50% (dense 84.3%), rotten_tomatoes"


def _import_tp():
    try:
        import torch_pruning as tp
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "torch_pruning is not installed; this baseline needs it: "
            "`.venv/bin/pip install torch-pruning -c constraints.txt` (must not change torch)"
        ) from exc
    return tp


def tp_version() -> str | None:
    try:
        return importlib.metadata.version("torch-pruning")
    except importlib.metadata.PackageNotFoundError:
        return None


# --- budget -----------------------------------------------------------------------------------
def _uniform(dims, heads: int, ffn: int) -> Structure:
    return Structure(dims, tuple(LayerShape(heads, ffn, i) for i in range(dims.num_layers)))


def plan_uniform(dims, macs_ratio: float, seq_len: int = 128) -> tuple[int, int, int]:
    """``(heads, ffn, macs)`` per layer, the same in every layer, whose cost-model MACs meet the budget.

    Raises:
        ValueError: the budget cannot be met within ``MACS_TOLERANCE`` (e.g. below one head per layer).
    """

    def macs(h: int, f: int) -> int:
        return cost_of(_uniform(dims, h, f), seq_len).macs

    dense = macs(dims.num_heads, dims.ffn)
    target = macs_ratio * dense
    floor = macs(0, 0)  # classifier head only
    k = min(max((target - floor) / (dense - floor), 0.0), 1.0)  # kept fraction if heads were continuous
    heads = min(max(round(k * dims.num_heads), 1), dims.num_heads)
    while True:
        # largest FFN width whose MACs stay <= target (bisection; MACs grow with the width)
        lo, hi = 0, dims.ffn
        if macs(heads, 0) > target:
            if heads > 1:
                heads -= 1
                continue
            raise ValueError(f"MACs ratio {macs_ratio} is below one head per layer and no FFN")
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if macs(heads, mid) <= target:
                lo = mid
            else:
                hi = mid - 1
        ffn = lo
        if ffn + 1 <= dims.ffn and abs(macs(heads, ffn + 1) - target) < abs(macs(heads, ffn) - target):
            ffn += 1  # nearest, not just below
        if ffn == dims.ffn and macs(heads, ffn) < target * (1 - MACS_TOLERANCE) and heads < dims.num_heads:
            heads += 1  # full FFN still too cheap: the heads were rounded down too far
            continue
        break
    achieved = macs(heads, ffn)
    if abs(achieved / target - 1) > MACS_TOLERANCE:
        raise ValueError(f"cannot meet MACs ratio {macs_ratio}: best uniform shape gives {achieved / dense:.4f}")
    return heads, ffn, achieved


# --- Taylor gradients -------------------------------------------------------------------------
def taylor_gradients(model, calibration) -> dict[str, torch.Tensor]:
    """dL/dw of the mean task loss over the calibration batches (eval mode), by parameter name."""
    net = copy.deepcopy(model)
    net.eval()
    net.zero_grad(set_to_none=True)
    total = sum(len(b["labels"]) for b in calibration)
    with torch.enable_grad():
        for batch in calibration:
            out = net(**batch)
            (out.loss * (len(batch["labels"]) / total)).backward()
    return {name: p.grad.detach().clone() for name, p in net.named_parameters() if p.grad is not None}


# --- pruning ----------------------------------------------------------------------------------
def _pin_ratio(keep: int, total: int) -> float:
    """Ratio for which Torch-Pruning's ``total - int(total * (1 - r))`` prunes exactly ``total - keep``."""
    return 0.0 if keep >= total else 1.0 - (keep + 0.5) / total


def _pin_head_ratio(keep: int, total: int) -> float:
    """Ratio for which Torch-Pruning's ``ceil(r * total)`` removes exactly ``total - keep`` heads."""
    remove = total - keep
    return 0.0 if remove <= 0 else (remove - 0.5) / total


def torch_pruning_prune(
    model,
    macs_ratio: float,
    calibration,
    *,
    seed: int,
    seq_len: int = 128,
    gradients: dict[str, torch.Tensor] | None = None,
    verify: bool = True,
):
    """Torch-Pruning (Taylor, uniform, whole heads + FFN channels) to ``macs_ratio`` of the dense MACs.

    Args:
        model: a fine-tuned BERT-family ``...ForSequenceClassification`` (left untouched).
        macs_ratio: target MACs relative to dense (``slimformer.cost`` MACs at ``seq_len`` tokens).
        calibration: list of batches (dicts with ``input_ids``, ``attention_mask``, ``labels``...), as
            returned by ``slimformer.static.calibration_batches``; the Taylor gradients come from them.
        seed: seeds torch (Taylor importance itself is deterministic given the batches).
        seq_len: tokens per sequence for the MACs budget.
        gradients: precomputed :func:`taylor_gradients` of ``model`` on ``calibration`` (reused across
            budgets); ``None`` computes them here.
        verify: check the result against the cost model and a masked dense model (one extra forward).

    Returns:
        ``(pruned_model, info)``: a new model in eval mode, and a JSON-ready dict (shape, ratios,
        MACs/params absolute and relative to dense, seconds, checks, torch-pruning version).

    Raises:
        ImportError: torch_pruning is not installed.
        ValueError: the budget cannot be met, or the model is not a BERT-style encoder.
        RuntimeError: a verification failed.
    """
    tp = _import_tp()
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    adapter = get_adapter(model)
    if adapter.family not in ("bert", "roberta"):
        raise ValueError(f"torch_pruning_prune supports BERT/RoBERTa layers, not {adapter.family!r}")
    base = adapter.base_model(model)
    base_name = next(n for n, m in model.named_children() if m is base)
    dims = adapter.dims(model.config)
    dense_structure = Structure.from_model(model)
    dense_cost = cost_of(dense_structure, seq_len)
    if not dense_structure.is_dense():
        raise ValueError("torch_pruning_prune expects the dense (unpruned) model")
    heads, ffn, planned_macs = plan_uniform(dims, macs_ratio, seq_len)

    if gradients is None:
        tg = time.perf_counter()
        gradients = taylor_gradients(model, calibration)
        grad_seconds = time.perf_counter() - tg
    else:
        grad_seconds = 0.0

    tprune = time.perf_counter()
    net = copy.deepcopy(model)
    net.eval()
    attn_impl = net.config._attn_implementation
    net.set_attn_implementation("eager")  # plain matmuls, so the traced graph couples q, k, v and o
    pbase = getattr(net, base_name)
    layers = adapter.layers(net)
    num_heads, ratio_dict, head_ratio_dict = {}, {}, {}
    head_r, ffn_r = _pin_head_ratio(heads, dims.num_heads), _pin_ratio(ffn, dims.ffn)
    for layer in layers:
        s = layer.attention.self
        for lin in (s.query, s.key, s.value):
            num_heads[lin] = s.num_attention_heads
        # the attention group's width ratio only gates head removal (prune_head_dims=False keeps head dims)
        ratio_dict[s.query] = 0.5 if head_r > 0 else 0.0
        head_ratio_dict[s.query] = head_r
        ratio_dict[layer.intermediate.dense] = ffn_r
    first = calibration[0]
    example = {k: v[:2] for k, v in first.items() if k != "labels"}
    ignored = [pbase.embeddings, net.classifier]  # embeddings: keeps the residual (hidden) width
    if getattr(pbase, "pooler", None) is not None:
        ignored.append(pbase.pooler)
    pruner = tp.pruner.MetaPruner(
        net,
        example,
        importance=tp.importance.TaylorImportance(),
        global_pruning=False,
        pruning_ratio=0.0,
        pruning_ratio_dict=ratio_dict,
        ignored_layers=ignored,
        output_transform=lambda out: out.logits.sum(),
        num_heads=num_heads,
        prune_num_heads=True,
        prune_head_dims=False,
        head_pruning_ratio=head_r,
        head_pruning_ratio_dict=head_ratio_dict,
    )
    params = dict(net.named_parameters())
    for name, p in params.items():
        p.grad = gradients[name].clone() if name in gradients else None
    names = {m: n for n, m in net.named_modules()}
    removed: dict[str, list[int]] = {}
    for group in pruner.step(interactive=True):
        for dep, idxs in group:
            n = names.get(dep.target.module)
            if n is not None and pruner.DG.is_out_channel_pruning_fn(dep.handler):
                removed[n] = sorted(int(i) for i in idxs)
        group.prune()
    for layer in layers:  # what Torch-Pruning's HF example does after pruning
        s = layer.attention.self
        s.num_attention_heads = s.query.out_features // s.attention_head_size
        s.all_head_size = s.query.out_features
    net.zero_grad(set_to_none=True)
    net.set_attn_implementation(attn_impl)
    prune_seconds = time.perf_counter() - tprune

    structure = Structure.from_model(net)
    cost = cost_of(structure, seq_len)
    info = {
        "method": "torch-pruning",
        "torch_pruning": tp_version(),
        "importance": "TaylorImportance (|w * grad|, grads of the task loss over the calibration batches)",
        "scope": "local (uniform across layers); whole heads + FFN channels; hidden/embeddings/pooler kept",
        "target_macs_ratio": macs_ratio,
        "seed": seed,
        "seq_len": seq_len,
        "calibration_examples": sum(len(b["labels"]) for b in calibration),
        "heads_per_layer": heads,
        "ffn_per_layer": ffn,
        "head_pruning_ratio": 1 - heads / dims.num_heads,
        "ffn_pruning_ratio": 1 - ffn / dims.ffn,
        "layers": [{"heads": x.heads, "ffn": x.ffn} for x in structure.layers],
        "macs": cost.macs,
        "params": cost.params,
        "macs_rel": cost.macs / dense_cost.macs,
        "params_rel": cost.params / dense_cost.params,
        "seconds": {"gradients": grad_seconds, "prune": prune_seconds, "total": time.perf_counter() - t0},
    }
    if verify:
        tv = time.perf_counter()
        info["checks"] = _verify(
            model, net, adapter, structure, heads, ffn, planned_macs, removed, calibration, seq_len
        )
        info["seconds"]["verify"] = time.perf_counter() - tv
    return net, info


def _verify(model, net, adapter, structure, heads, ffn, planned_macs, removed, calibration, seq_len) -> dict:
    """Structure, cost and function checks of a pruned model; raises RuntimeError on failure."""
    dims = structure.dims
    got = [(s.heads, s.ffn) for s in structure.layers]
    if got != [(heads, ffn)] * dims.num_layers:
        raise RuntimeError(f"Torch-Pruning gave shapes {got}, planned {(heads, ffn)} per layer")
    cost = cost_of(structure, seq_len)
    if cost.macs != planned_macs:
        raise RuntimeError(f"pruned model costs {cost.macs} MACs, the plan {planned_macs}")
    n_params = sum(p.numel() for p in net.parameters())
    if n_params != cost.params:
        raise RuntimeError(f"pruned model has {n_params} parameters, cost model says {cost.params}")
    # Masked dense model: zero the removed heads' value rows and the removed neurons' fc_in rows.
    masked = copy.deepcopy(model)
    head_size = dims.head_size
    kept_heads = []
    for i, layer in enumerate(adapter.layers(masked)):
        prefix = f"{adapter.paths['layers']}.{i}."
        q_idx = removed.get(prefix + "attention.self.query", [])
        for proj in ("key", "value"):
            if removed.get(prefix + f"attention.self.{proj}", []) != q_idx:
                raise RuntimeError(f"layer {i}: q and {proj} lost different channels")
        lost = sorted({j // head_size for j in q_idx})
        if sorted(q_idx) != [h * head_size + d for h in lost for d in range(head_size)]:
            raise RuntimeError(f"layer {i}: removed channels are not whole heads")
        kept_heads.append([h for h in range(dims.num_heads) if h not in lost])
        view, fview = adapter.attention(layer), adapter.ffn(layer)
        with torch.no_grad():
            view.v.weight[q_idx] = 0
            view.v.bias[q_idx] = 0
            f_idx = removed.get(prefix + "intermediate.dense", [])
            fview.fc_in.weight[f_idx] = 0
            fview.fc_in.bias[f_idx] = 0
    batch = {k: v for k, v in calibration[0].items() if k != "labels"}
    with torch.inference_mode():
        a, b, d = net(**batch).logits, masked(**batch).logits, model(**batch).logits
    diff = (a - b).abs().max().item()
    if diff > 1e-3:
        raise RuntimeError(f"pruned logits differ from the masked dense model by {diff:.2e}")
    return {
        "structure_matches_plan": True,
        "params_match_cost_model": True,
        "whole_heads": True,
        "max_abs_logit_diff_vs_masked_dense": diff,
        "max_abs_logit_diff_vs_dense": (a - d).abs().max().item(),
        "kept_heads": kept_heads,
        "flop_counter_macs": flop_counter_macs(net, seq_len),
    }


def flop_counter_macs(model, seq_len: int) -> float:
    """MACs of one unpadded ``seq_len``-token forward counted by torch (eager attention), on a copy."""
    from torch.utils.flop_counter import FlopCounterMode

    net = copy.deepcopy(model)
    net.set_attn_implementation("eager")
    ids = torch.randint(1000, 2000, (1, seq_len))
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        net(input_ids=ids, attention_mask=torch.ones_like(ids))
    return counter.get_total_flops() / 2


# --- benchmark --------------------------------------------------------------------------------
def run_task(name: str, args, log) -> dict:
    from slimformer.evaluate import evaluate
    from slimformer.models import load_model
    from slimformer.static import calibration_batches

    folder, task, recipe = harness.finetuned(name, args)
    log.info("%s: fine-tuned model %s", name, folder)
    model, tokenizer = load_model(str(folder))
    test = task.split("test")
    if args.limit:  # a seeded random subset (the test split may be sorted by label)
        test = random.Random(0).sample(test, min(args.limit, len(test)))
    dense_metrics = evaluate(model, tokenizer, test, max_length=recipe.max_length, progress=False)
    dense_cost = cost_of(Structure.from_model(model), args.seq_len)
    log.info("%s dense: acc %.4f on %d test examples", name, dense_metrics["accuracy"], len(test))
    dense_flops = flop_counter_macs(model, args.seq_len)

    runs = []
    for seed in args.seeds:
        batches = calibration_batches(
            task.split("train"), tokenizer, size=args.calibration, seed=seed, max_length=recipe.max_length
        )
        tg = time.perf_counter()
        grads = taylor_gradients(model, batches)  # once per seed, reused across budgets
        grad_seconds = time.perf_counter() - tg
        for value in args.budgets:
            pruned, info = torch_pruning_prune(model, value, batches, seed=seed, seq_len=args.seq_len, gradients=grads)
            metrics = evaluate(pruned, tokenizer, test, max_length=recipe.max_length, progress=False)
            info["seconds"]["gradients"] = grad_seconds
            info["seconds"]["total"] += grad_seconds
            checks = info.get("checks", {})
            run = {
                "budget": value,
                "seed": seed,
                "accuracy": metrics["accuracy"],
                "f1_macro": metrics["f1_macro"],
                "macs_rel": info["macs_rel"],
                "params_rel": info["params_rel"],
                "flop_counter_macs_rel": checks["flop_counter_macs"] / dense_flops if checks else None,
                "heads_per_layer": info["heads_per_layer"],
                "ffn_per_layer": info["ffn_per_layer"],
                "seconds": info["seconds"]["total"],
                "info": info,
            }
            runs.append(run)
            log.info(
                "%s %.2f seed %d: acc %.4f, MACs %.4f (flop counter %.4f), params %.4f, %d heads + %d FFN/layer, %.1fs",
                name,
                value,
                seed,
                run["accuracy"],
                run["macs_rel"],
                run["flop_counter_macs_rel"] or float("nan"),
                run["params_rel"],
                run["heads_per_layer"],
                run["ffn_per_layer"],
                run["seconds"],
            )
    return {
        "task": name,
        "content_hash": task.content_hash,
        "test_examples": len(test),
        "test_subset": bool(args.limit),
        "dense": {
            "accuracy": dense_metrics["accuracy"],
            "f1_macro": dense_metrics["f1_macro"],
            "macs": dense_cost.macs,
            "params": dense_cost.params,
            "flop_counter_macs": dense_flops,
        },
        "runs": runs,
        "summary": summarize(runs),
    }


def summarize(runs: list[dict]) -> list[dict]:
    groups: dict[float, list[dict]] = {}
    for r in runs:
        groups.setdefault(r["budget"], []).append(r)
    out = []
    for budget, rs in groups.items():
        accs = [r["accuracy"] for r in rs]
        out.append(
            {
                "budget": budget,
                "seeds": len(rs),
                "acc_mean": statistics.mean(accs),
                "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "acc_min": min(accs),
                "acc_max": max(accs),
                "macs_rel": statistics.mean(r["macs_rel"] for r in rs),
                "params_rel": statistics.mean(r["params_rel"] for r in rs),
                "heads_per_layer": rs[0]["heads_per_layer"],
                "ffn_per_layer": rs[0]["ffn_per_layer"],
                "seconds": statistics.mean(r["seconds"] for r in rs),
            }
        )
    return out


def markdown(results: list[dict], args, env: dict, version: str | None) -> str:
    title = "Torch-Pruning baseline: one-shot structured pruning of MiniLM-L6 at MACs budgets (no retraining)"
    lines = [
        harness.header(title, args, env),
        f"torch-pruning {version}: MetaPruner, TaylorImportance, local (uniform) pruning of whole heads and FFN "
        f"channels, same shape in every layer; {args.calibration} calibration examples from train; seeds "
        f"{args.seeds}; MACs from slimformer's cost model at {args.seq_len} tokens (checked against torch's flop "
        f"counter). Time = Taylor gradients (once per seed) + pruning.",
        "",
        f"Reference ({REFERENCE}).",
    ]
    for res in results:
        d = res["dense"]
        subset = f"{res['test_examples']} test examples" + (" (seeded random subset)" if res["test_subset"] else "")
        lines += [
            "",
            f"## {res['task']} (dense test accuracy {d['accuracy']:.4f}, {subset})",
            "",
            "| MACs budget | test acc (mean ± std) | min-max | MACs | params | heads / FFN per layer | time (s) |",
            "|---|---|---|---|---|---|---|",
        ]
        for s in sorted(res["summary"], key=lambda s: -s["budget"]):
            lines.append(
                f"| {s['budget']:.2f} | {s['acc_mean']:.4f} ± {s['acc_std']:.4f} "
                f"| {s['acc_min']:.4f}-{s['acc_max']:.4f} | {s['macs_rel']:.3f} | {s['params_rel']:.3f} "
                f"| {s['heads_per_layer']} / {s['ffn_per_layer']} | {s['seconds']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__file__, __doc__, out="torch_pruning.json")
    parser.add_argument("--tasks", default="rotten_tomatoes,bbc_news")
    parser.add_argument("--budgets", default="0.8,0.6,0.5,0.4,0.3", help="MACs relative to dense")
    parser.add_argument("--seeds", default="0,1,2", help="calibration sample seeds")
    parser.add_argument("--calibration", type=int, default=1024, help="calibration examples from train")
    parser.add_argument("--limit", type=int, default=0, help="evaluate on a seeded random N test examples (0 = all)")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sequence for MACs")
    args = harness.start(parser, argv)
    if args.smoke:
        args.tasks, args.budgets, args.seeds, args.calibration = "rotten_tomatoes", "0.5", "0", 16
    args.budgets = [float(x) for x in args.budgets.split(",")]
    args.seeds = [int(x) for x in args.seeds.split(",")]
    if args.limit and args.out == parser.get_default("out"):
        args.out = harness.RESULTS / "torch_pruning_smoke.json"
    log = logging.getLogger("torch_pruning_baseline")
    _import_tp()
    version = tp_version()
    log.info("torch-pruning %s, torch %s", version, torch.__version__)

    t0, results = time.perf_counter(), []
    for name in args.tasks.split(","):
        results.append(run_task(name, args, log))
        env = harness.environment()
        report = {
            "command": args.command,
            "torch_pruning": version,
            "reference": REFERENCE,
            "results": results,
            "environment": env,
            "wall_time_s": round(time.perf_counter() - t0, 1),
        }
        md = markdown(results, args, env, version)
        harness.write_results(args.out, report, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
