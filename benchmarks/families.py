"""Pruned speed per model family at base size: does the MACs cut reach the clock, and what does OPTIN cost?

For each family at its base-size shapes (bert-base, xlm-roberta-base, electra-base, modernbert-base,
deberta-v3-base, and the image classifier vit-base-patch16-224: 224 x 224 images, 197 tokens whatever
``seq_len``) with random weights (speed does not depend on the values; vocabularies are cut to ``--vocab`` rows,
which changes no MACs), the script prunes the dense model to 0.6 and 0.4 of its MACs at 128 tokens
with real surgery (magnitude scores, the uneven per-layer structure a scorer gives, no repair), then
times dense and pruned models interleaved (alternating calls, so drift hits all alike) at batch 32
and batch 1 x 128 tokens. It reports each pruned model's speedup over dense divided by the speedup
its MACs promise (1 / MACs ratio): 1.0 means every MAC removed came off the clock. The MACs of
a batch are the cost model's (``batch_macs``): DeBERTa projects its relative-position table once
per forward, so its batched MACs are less than batch x the per-sequence count.

It then times OPTIN (score + select + surgery + repair) on base-size BERT, ModernBERT, DeBERTa-v3 and ViT
with a small calibration set of ``--calib`` sequences x 128 tokens (images for ViT) and extrapolates to 1,024
sequences:
each phase grows linearly with the examples it sees (heads see at most ``head_examples`` = 64, the
default; neurons and repair see all of them), selection and surgery do not grow. The extrapolation
is stated with its inputs in the results, so it can be checked against a measured run.

    .venv/bin/python benchmarks/families.py [--rounds 3] [--calib 16] [--only deberta-v3-base ...] [--smoke]

Writes benchmarks/results/families.{json,md}.
"""

from __future__ import annotations

import copy
import time

import harness
import torch
import transformers
from transformers import BertConfig, DebertaV2Config, ElectraConfig, ModernBertConfig, ViTConfig, XLMRobertaConfig

from slimformer.arch import FAMILIES
from slimformer.bench import BenchConfig, bench_models, make_bench_inputs
from slimformer.cost import batch_macs, cost_of
from slimformer.static import PruneConfig, prune
from slimformer.structure import Structure

FRACTIONS = (0.6, 0.4)
TARGETS = {32: 0.95, 1: 0.85}  # speedup / MACs ratio the issue asks for, by batch size
TARGET_EXAMPLES = 1024
OPTIN_ROWS = (
    "bert-base",
    "modernbert-base",
    "deberta-v3-base",
    "vit-base-patch16-224",
)  # the families OPTIN is timed on
BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}


def base_configs(vocab: int) -> dict[str, object]:
    """Base-size configs by name (the real models' shapes, ``vocab`` rows of embeddings)."""
    return {
        "bert-base": BertConfig(**BASE, vocab_size=vocab, num_labels=2),
        "xlm-roberta-base": XLMRobertaConfig(
            **BASE, vocab_size=vocab, max_position_embeddings=514, pad_token_id=1, num_labels=2
        ),
        "electra-base": ElectraConfig(**BASE, vocab_size=vocab, embedding_size=768, num_labels=2),
        "modernbert-base": ModernBertConfig(
            vocab_size=vocab,
            hidden_size=768,
            num_hidden_layers=22,
            num_attention_heads=12,
            intermediate_size=1152,
            global_attn_every_n_layers=3,
            local_attention=128,
            pad_token_id=0,
            bos_token_id=2,
            cls_token_id=2,
            eos_token_id=3,
            sep_token_id=3,
            num_labels=2,
        ),
        # google/vit-base-patch16-224's shapes (ViTConfig's defaults), 1,000 ImageNet classes
        "vit-base-patch16-224": ViTConfig(**BASE, image_size=224, patch_size=16, num_labels=1000),
        "deberta-v3-base": DebertaV2Config(
            **BASE,
            vocab_size=vocab,  # 128,100 in the real model
            max_position_embeddings=512,
            relative_attention=True,
            position_buckets=256,
            pos_att_type=["p2c", "c2p"],
            share_att_key=True,
            norm_rel_ebd="layer_norm",
            position_biased_input=False,
            type_vocab_size=0,
            hidden_act="gelu",
            pad_token_id=0,
            num_labels=2,
        ),
    }


def smoke_configs() -> dict[str, object]:
    """The registry's tiny configs of the same four families (the numbers mean nothing)."""
    names = {"bert-base": "bert", "xlm-roberta-base": "xlm-roberta", "electra-base": "electra"}
    names["modernbert-base"], names["deberta-v3-base"] = "modernbert", "deberta-v2"
    names["vit-base-patch16-224"] = "vit"
    return {name: FAMILIES[family].tiny_config(layers=3, num_labels=2) for name, family in names.items()}


def calibration(model, n: int, seq: int, seed: int) -> list[dict]:
    """``n`` random sequences of ``seq`` tokens in batches of up to 8, with random labels."""
    batches = []
    for start in range(0, n, 8):
        b = min(8, n - start)
        inputs = make_bench_inputs(model, b, seq, seed=seed + start)
        batches.append({**inputs, "labels": torch.arange(b) % model.config.num_labels})
    return batches


def build(config):
    """A random model of ``config`` with the family's Auto class (sequence or image classification)."""
    return getattr(transformers, FAMILIES[config.model_type].auto_class).from_config(config).eval()


def pruned_to(model, fraction: float, seq: int, data: list[dict]):
    """``model`` cut to ``fraction`` of its MACs by real surgery (magnitude scores, no repair)."""
    config = PruneConfig.from_dict({"method": "magnitude", "budget": f"macs={fraction},seq={seq}", "repair": False})
    return prune(model, config, data, progress=False).model.eval()


def time_family(name: str, config, args) -> dict:
    """Dense and pruned models of one family, timed interleaved at each batch size."""
    torch.manual_seed(args.seed)
    dense = build(config)
    data = calibration(dense, 8, args.seq, args.seed)
    models = {"dense": dense, **{f"macs={f}": pruned_to(dense, f, args.seq, data) for f in FRACTIONS}}
    structures = {k: Structure.from_model(m) for k, m in models.items()}
    macs = {k: cost_of(st, args.seq).macs for k, st in structures.items()}
    out = {"family": FAMILIES[config.model_type].family, "params": {}, "macs": macs, "batches": {}}
    out["tokens"] = cost_of(Structure.from_model(dense), args.seq).seq_len  # an image family: its own
    out["params"] = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    out["layers"] = {k: [[s.heads, s.ffn] for s in Structure.from_model(m).layers] for k, m in models.items()}
    for batch in args.batches:
        calls = args.rounds * (1 if batch > 1 else 8)
        bench = BenchConfig(batch_sizes=(batch,), seq_len=args.seq, warmup=1, repeats=calls, seed=args.seed)
        timed = bench_models(models, bench, progress=False)  # interleaved, order alternating per round
        walls = {k: r["results"][0]["median_ms"] for k, r in timed.items()}
        forward = {k: batch_macs(st, args.seq, batch) for k, st in structures.items()}  # one timed call
        rows = {}
        for k in models:
            speedup = walls["dense"] / walls[k]
            rows[k] = {"median_ms": round(walls[k], 2), "speedup": round(speedup, 3)}
            rows[k]["speedup_over_macs_ratio"] = round(speedup * forward[k] / forward["dense"], 3)
        out["batches"][str(batch)] = {"calls": calls, "models": rows}
        harness.logger.info("%s batch %d: %s", name, batch, {k: r["median_ms"] for k, r in rows.items()})
    return out


def optin_cost(name: str, config, args) -> dict:
    """OPTIN score + select + surgery + repair on ``--calib`` sequences, extrapolated to 1,024."""
    torch.manual_seed(args.seed)
    dense = build(config)
    data = calibration(dense, args.calib, args.seq, args.seed)
    cfg = PruneConfig.from_dict({"method": "optin", "budget": f"macs=0.5,seq={args.seq}"})
    t0 = time.perf_counter()
    report = prune(dense, cfg, data, progress=False).report
    wall = time.perf_counter() - t0
    info, seconds = report["importance_info"], report["seconds"]
    head_n, neuron_n = info["head_examples"], info["neuron_examples"]
    phases = {
        "heads": info["head_seconds"],
        "neurons": info["neuron_seconds"],
        "select_and_surgery": seconds["select_and_surgery"],
        "repair": seconds["repair"],
    }
    growth = {
        "heads": min(64, TARGET_EXAMPLES) / head_n,
        "neurons": TARGET_EXAMPLES / neuron_n,
        "select_and_surgery": 1.0,
        "repair": TARGET_EXAMPLES / args.calib,
    }
    projected = {k: round(v * growth[k], 1) for k, v in phases.items()}
    harness.logger.info("%s optin: %.1fs measured, projected %s", name, wall, projected)
    return {
        "params": sum(p.numel() for p in dense.parameters()),
        "calibration": {"sequences": args.calib, "seq_len": report["seq_len"], "head_examples": head_n},
        "measured_seconds": {**phases, "wall": round(wall, 1)},
        "growth_to_1024": {k: round(v, 2) for k, v in growth.items()},
        "projected_seconds_1024": {**projected, "total": round(sum(projected.values()), 1)},
    }


def markdown(report: dict, args) -> str:
    lines = [harness.header("Pruned speed per family at base size", args, report["environment"])]
    lines += [
        f"Random weights, {args.seq} tokens, {torch.get_num_threads()} threads; pruned by magnitude scores to "
        "the MACs fraction with real surgery. Ratio = (dense ms / pruned ms) / (dense MACs / pruned MACs); "
        f"targets {TARGETS[32]} at batch 32 and {TARGETS[1]} at batch 1.",
        "",
        "| family | params | model | MACs | " + " | ".join(f"b{b} ms | b{b} ratio" for b in args.batches) + " |",
        "|---|---|---|---|" + "---|---|" * len(args.batches),
    ]
    for name, fam in report["families"].items():
        for k, macs in fam["macs"].items():
            cells = []
            for b in args.batches:
                row = fam["batches"][str(b)]["models"][k]
                cells += [f"{row['median_ms']:.1f}", f"{row['speedup_over_macs_ratio']:.2f}"]
            rel = macs / fam["macs"]["dense"]
            lines.append(f"| {name} | {fam['params'][k] / 1e6:.1f}M | {k} | {rel:.2f} | " + " | ".join(cells) + " |")
    lines += ["", f"OPTIN on {args.calib} sequences, projected to {TARGET_EXAMPLES} (seconds):", ""]
    lines += ["| model | heads | neurons | select+surgery | repair | projected total |", "|---|---|---|---|---|---|"]
    for name, o in report["optin"].items():
        m, p = o["measured_seconds"], o["projected_seconds_1024"]
        cells = [f"{m[k]:.1f} -> {p[k]:.0f}" for k in ("heads", "neurons", "select_and_surgery", "repair")]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {p['total']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = harness.parser(__file__, __doc__, out="families.json")
    p.add_argument("--rounds", type=int, default=3, help="timed calls per model at batch 32 (x8 at batch 1)")
    p.add_argument("--calib", type=int, default=16, help="calibration sequences for the OPTIN timing")
    p.add_argument("--vocab", type=int, default=1024, help="embedding rows of the base-size models")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: a shared CPU oversubscribes more)")
    p.add_argument("--only", nargs="+", default=None, help="run only these rows (e.g. deberta-v3-base)")
    args = harness.start(p, argv)
    torch.set_num_threads(args.threads)
    configs = smoke_configs() if args.smoke else base_configs(args.vocab)
    if args.only:
        unknown = sorted(set(args.only) - set(configs))
        if unknown:
            p.error(f"--only {' '.join(unknown)}: unknown; choose from {', '.join(configs)}")
        configs = {k: v for k, v in configs.items() if k in args.only}
        if args.out.resolve() == (harness.RESULTS / "families.json").resolve():
            p.error("--only writes a report of those rows alone: pass --out elsewhere (families.json has every row)")
    args.seq, args.batches = (16, (4, 1)) if args.smoke else (128, (32, 1))
    if args.smoke:
        args.rounds, args.calib = 1, 4
    report = {"seq_len": args.seq, "targets": TARGETS, "families": {}, "optin": {}}
    for name, config in configs.items():
        report["families"][name] = time_family(name, copy.deepcopy(config), args)
    for name in [n for n in OPTIN_ROWS if n in configs]:
        report["optin"][name] = optin_cost(name, copy.deepcopy(configs[name]), args)
    report["environment"] = harness.environment()
    harness.write_results(args.out, report, markdown(report, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
