"""Differentiable slimming: train once, then extract a plain pruned model for any memory budget.

    slimmed = slim(model, SlimConfig(...), task, tokenizer=tok, out_dir="run")
    result = extract("run", Budget.parse("memory=40MB"), prune_vocab=True)
    result.save("model-40mb")

Gates on every head, FFN neuron group and layer (:mod:`~slimformer.slim.gates`) are trained with
the task loss, distillation from the dense model and a budget loss from the cost model at budgets
sampled every step (:mod:`~slimformer.slim.train`); extraction ranks units by their gates and
performs surgery (:mod:`~slimformer.slim.extraction`; the module is not called ``extract`` so that
it never shadows the function); the vocabulary shrinks to the task's tokens
(:mod:`~slimformer.slim.vocab`).
"""

from slimformer.slim.config import SlimConfig

__all__ = ["ExtractResult", "SlimConfig", "SlimmedModel", "curve", "extract", "load_run", "prune_vocabulary", "slim"]


def __getattr__(name: str):
    # torch-heavy pieces load on first use, so `import slimformer.slim` stays light for the CLI
    if name == "slim":
        from slimformer.slim.train import slim

        return slim
    if name in ("extract", "curve", "ExtractResult"):
        from slimformer.slim import extraction as module

        return getattr(module, name)
    if name == "SlimmedModel":
        from slimformer.slim.gates import SlimmedModel

        return SlimmedModel
    if name == "load_run":
        from slimformer.slim.run import load_run

        return load_run
    if name == "prune_vocabulary":
        from slimformer.slim.vocab import prune_vocabulary

        return prune_vocabulary
    raise AttributeError(f"module 'slimformer.slim' has no attribute {name!r}")
