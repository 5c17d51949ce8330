"""int8 dynamic quantization and bf16 weights: smaller on disk, faster on a CPU, composable with every static method.

:func:`quantize_dynamic_int8` uses PyTorch's eager dynamic quantization
(``torch.ao.quantization.quantize_dynamic``): every ``nn.Linear`` stores int8 weights (one scale
per output row by default) and quantizes its input on the fly; the word embeddings, the largest
tensor of a small encoder, are stored int8 per row too (weight-only; looked up and dequantized).
Everything else (position embeddings, LayerNorms, biases) stays fp32. Pruned models with uneven
shapes and top-k attention quantize the same way; removed sublayers (zero-size projections) are
left alone.

A quantized model saves with :func:`save_quantized`: the config (with the per-layer shapes and
top-k settings), the tokenizer, the self-contained modeling file and ``model_int8.pt``, the
quantized state dict. :func:`load_quantized` rebuilds the structure from the config, quantizes the
empty model the same way and loads the state dict, which reproduces the outputs exactly. Plain
transformers cannot read ``model_int8.pt``; the fp32 folder is the portable format.

For ONNX Runtime, export the fp32 model and use its own dynamic int8 quantization:
:func:`slimformer.onnx_export.quantize_int8`.

:func:`to_bf16` casts every weight to bfloat16 (same exponent range as fp32, 8 bits of mantissa).
The model computes in bf16 end to end and saves as an ordinary transformers folder half the size
(``save_model``; ``from_pretrained`` reads the dtype back). It is only faster on CPUs with native
bf16 matrix instructions (AVX512-BF16 or AMX, :func:`bf16_supported`); elsewhere it emulates them
and is slower than fp32, and :func:`to_bf16` says so.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimformer.config import ConfigBase, boolean, option

logger = logging.getLogger(__name__)

QUANT_KEY = "slimformer_quantization"
WEIGHTS_FILE = "model_int8.pt"


@dataclass(frozen=True, kw_only=True)
class Int8Config(ConfigBase):
    """How :func:`quantize_dynamic_int8` quantizes."""

    per_channel: bool = option(True, "one int8 scale per output row of each Linear (else one per tensor)", boolean())
    embeddings: bool = option(True, "store the word embeddings int8 too (per row, weight-only)", boolean())


@contextmanager
def _quiet():
    # torch.ao.quantization warns that it is deprecated in favour of torchao (not installable here).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantiz.*", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*TypedStorage.*", category=UserWarning)
        yield


def quantize_dynamic_int8(model, config: Int8Config | None = None, *, inplace: bool = False):
    """An int8 dynamically quantized copy of ``model`` (CPU inference only), with PyTorch.

    This is the fallback int8: ``torch.ao.quantization`` is deprecated upstream (in favour of
    torchao, which is not installable here), and onnxruntime's per-channel int8 of the same model
    was as fast or faster and kept more accuracy in this project's measurements (MiniLM-L6 at 48
    tokens, batch 1: OPTIN 50% 3.63 ms torch vs 2.48 ms onnxruntime; docs/results/fit.md,
    onnx_export.md). Deploy with
    :func:`slimformer.onnx_export.export_onnx` (``int8=True``) or let :func:`slimformer.fit.fit`
    time both; this path stays for models that must remain PyTorch modules (recipes, saving).

    Args:
        model: a sequence classifier (pruned or not, with or without top-k attention).
        config: what to quantize; default :class:`Int8Config`.
        inplace: quantize ``model`` itself instead of a copy.

    Returns:
        The quantized model in eval mode; its config records the settings (``slimformer_quantization``).

    Raises:
        ValueError: the model is already quantized.
    """
    import torch
    from torch import nn
    from torch.ao.quantization import (
        default_dynamic_qconfig,
        float_qparams_weight_only_qconfig,
        per_channel_dynamic_qconfig,
        quantize_dynamic,
    )

    config = config or Int8Config()
    if is_quantized(model):
        raise ValueError("the model is already quantized")
    if is_bf16(model):
        raise ValueError("the model is bf16; int8 quantization starts from the fp32 model")
    if not inplace:
        model = copy.deepcopy(model)
    linear = per_channel_dynamic_qconfig if config.per_channel else default_dynamic_qconfig
    spec: dict[str, Any] = {}
    words = model.get_input_embeddings() if config.embeddings else None
    for name, module in model.named_modules():
        if type(module) is nn.Linear and module.weight.numel() > 0:  # removed sublayers stay as they are
            spec[name] = linear
        elif module is words and type(module) is nn.Embedding:
            spec[name] = float_qparams_weight_only_qconfig
    with _quiet():
        quantize_dynamic(model.eval(), spec, dtype=torch.qint8, inplace=True)
    setattr(model.config, QUANT_KEY, {"method": "dynamic_int8", **config.to_dict()})
    logger.info("quantized %d modules to int8", len(spec))
    return model


def is_quantized(model) -> bool:
    """Whether any module of ``model`` is a quantized one."""
    return any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules())


def save_quantized(model, tokenizer, folder: str | Path, *, overwrite: bool = False, extra: dict | None = None) -> Path:
    """Save a model quantized by :func:`quantize_dynamic_int8` (see the module docstring for the layout).

    Raises:
        ValueError: the model is not quantized.
        FileExistsError: see :func:`slimformer.export.prepare_output_dir`.
    """
    import torch

    from slimformer.arch import get_adapter
    from slimformer.export import REMOTE_FILE
    from slimformer.fsutil import model_sources, staged_output_dir
    from slimformer.hf_remote import modeling_slimformer as remote

    if not is_quantized(model) or not getattr(model.config, QUANT_KEY, None):
        raise ValueError("save_quantized needs a model from quantize_dynamic_int8; use save_model for fp32 models")
    with staged_output_dir(folder, overwrite=overwrite, inputs=model_sources(model)) as path:  # swapped in whole
        if getattr(model.config, remote.SLIM_KEY, None):
            cls = remote.SLIM_CLASSES[get_adapter(model).family]
            model.config.auto_map = {get_adapter(model).auto_class: f"modeling_slimformer.{cls.__name__}"}
            shutil.copyfile(remote.__file__, path / REMOTE_FILE)
        model.config.save_pretrained(path)
        with _quiet():
            torch.save(model.state_dict(), path / WEIGHTS_FILE)
        if tokenizer is not None:
            tokenizer.save_pretrained(path)
        if extra is not None:
            (path / "slimformer.json").write_text(json.dumps(extra, indent=2, default=str) + "\n")
    path = Path(folder)
    logger.info("saved int8 model to %s (%.1f MB)", path, size_on_disk(path) / 1e6)
    return path


def is_quantized_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a model saved by :func:`save_quantized`."""
    return (Path(folder) / WEIGHTS_FILE).is_file() and (Path(folder) / "config.json").is_file()


def load_quantized(folder: str | Path):
    """Load a model saved by :func:`save_quantized`; its outputs equal the saved model's exactly.

    Raises:
        FileNotFoundError: no ``model_int8.pt`` in the folder.
        ValueError: the config does not record a quantization, or the architecture is unsupported.
    """
    import torch
    import transformers
    from transformers import AutoConfig

    from slimformer.arch import get_adapter_for_config
    from slimformer.hf_remote import modeling_slimformer as remote

    path = Path(folder)
    if not (path / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{str(path)!r} has no {WEIGHTS_FILE}; is it a folder saved by save_quantized?")
    config = AutoConfig.from_pretrained(str(path))
    settings = dict(getattr(config, QUANT_KEY, None) or {})
    if settings.pop("method", None) != "dynamic_int8":
        raise ValueError(f"{str(path)!r}: config.json records no dynamic int8 quantization ({QUANT_KEY})")
    adapter = get_adapter_for_config(config)
    family = adapter.family
    setattr(config, QUANT_KEY, None)
    if getattr(config, remote.SLIM_KEY, None):
        model = remote.SLIM_CLASSES[family](config)
    else:
        model = getattr(transformers, adapter.auto_class).from_config(config)
    quantize_dynamic_int8(model, Int8Config.from_dict(settings), inplace=True)
    with _quiet():
        state = torch.load(path / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def size_on_disk(path: str | Path) -> int:
    """Bytes of a file, or of every file under a folder (weights, config and tokenizer alike).

    Raises:
        FileNotFoundError: the path does not exist.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such file or folder: {str(p)!r}")
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


@dataclass(frozen=True, kw_only=True)
class Bf16Config(ConfigBase):
    """Settings of :func:`to_bf16` (none yet: every floating-point weight and buffer is cast)."""


def bf16_supported() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (oneDNN with AVX512-BF16 or AMX)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def is_bf16(model) -> bool:
    """Whether ``model``'s floating-point weights are all bfloat16."""
    import torch

    floats = [p.dtype for p in model.parameters() if p.is_floating_point()]
    return bool(floats) and all(d is torch.bfloat16 for d in floats)


def to_bf16(model, config: Bf16Config | None = None, *, inplace: bool = False):
    """A bfloat16 copy of ``model``: every floating-point weight and buffer cast, computing in bf16.

    Logits come out bf16 (:func:`slimformer.evaluate.predict` returns them as fp32). Pruned shapes
    and top-k settings are kept; the config records ``dtype: bfloat16``, so ``save_model`` writes a
    folder half the size that loads back in bf16.

    Args:
        model: an fp32 classifier.
        config: the cast's settings (default ``Bf16Config()``).
        inplace: cast ``model`` itself instead of a copy.

    Raises:
        ValueError: the model is int8-quantized (cast the fp32 model instead), or ``config`` is not a
            :class:`Bf16Config`.
    """
    import torch

    config = Bf16Config() if config is None else config
    if not isinstance(config, Bf16Config):
        raise ValueError(f"config={config!r}: must be a Bf16Config")
    if is_quantized(model):
        raise ValueError("the model is int8-quantized; bf16 applies to an fp32 model, not on top of int8")
    if not bf16_supported():
        logger.warning(
            "this CPU has no native bf16 matrix instructions (AVX512-BF16 or AMX): a bf16 model will be half the "
            "size but slower than fp32 here"
        )
    if not inplace:
        model = copy.deepcopy(model)
    return model.to(torch.bfloat16).eval()
