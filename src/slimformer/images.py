"""Image tasks and image batches: the built-in ``digits`` set, ImageFolder layouts, preprocessing.

An image task is a :class:`~slimformer.data.TaskData` of :class:`ImageExample` (``info["modality"]``
is ``"image"``), split like the text tasks: given splits as they are, else stratified and seeded.
Labels are the class folder names (or the digits ``0``..``9``), put in the model's ``id2label``
order by :func:`slimformer.data.align_labels`, never guessed.

Pixels become model inputs only through the model folder's ``preprocessor_config.json`` (size,
mean, std): :class:`ImageProcessor` refuses a folder without one. It stands where a text model's
tokenizer stands (``load_model`` returns it), so the batch builders hand it the examples.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

IMAGE_TASKS: dict[str, str] = {
    "digits": "10-class handwritten digits (scikit-learn's load_digits), 1,797 real 8 x 8 grayscale images",
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
PREPROCESSOR_FILE = "preprocessor_config.json"
_SPLIT_DIRS = {"train": ("train",), "validation": ("validation", "val", "dev"), "test": ("test",)}


@dataclass(frozen=True)
class ImageExample:
    """One labelled image: ``pixels`` (``(H, W)`` or ``(H, W, C)`` uint8) or a ``path`` to an image file."""

    label: int
    pixels: np.ndarray | None = None
    path: str | None = None

    def image(self):
        """The image as a PIL image (read from ``path`` when it is a file)."""
        from PIL import Image

        if self.pixels is not None:
            return Image.fromarray(self.pixels)
        try:
            with Image.open(self.path) as im:
                im.load()
                return im
        except OSError as e:
            raise ValueError(f"{self.path}: not a readable image ({e})") from None

    def hash_fields(self) -> tuple:
        """What the task's content hash reads (see :func:`slimformer.data.TaskData`)."""
        data = self.pixels.tobytes() if self.pixels is not None else str(self.path).encode()
        return (hashlib.sha256(data).hexdigest()[:16], self.label)


def is_image_task(name: str) -> bool:
    """A built-in image task, or a folder laid out as ImageFolder (class folders of image files)."""
    return name in IMAGE_TASKS or _is_image_folder(Path(name).expanduser())


def _is_image_folder(root: Path) -> bool:
    if not root.is_dir():
        return False
    for depth in ("*/*", "*/*/*"):  # class/file or split/class/file
        if any(p.suffix.lower() in IMAGE_SUFFIXES for p in root.glob(depth)):
            return True
    return False


def load_image_task(name: str, *, seed: int = 0, fractions=(0.8, 0.1, 0.1)):
    """Load the built-in ``digits`` task or an ImageFolder layout as a :class:`~slimformer.data.TaskData`.

    An ImageFolder is ``root/<class>/<image>`` (pooled and split, stratified and seeded) or
    ``root/<split>/<class>/<image>`` with ``train`` and any of ``validation`` (``val``, ``dev``) and
    ``test`` (used as given; a missing split is carved out of train).

    Raises:
        FileNotFoundError: no such task or folder.
        ValueError: an empty class folder, split folders with different classes, or an empty split.
    """
    from slimformer.data import _check_fractions, _complete_splits, _make_task

    fractions = _check_fractions(fractions)
    if name == "digits":
        examples, names, info = _load_digits()
        given: dict = {}
    else:
        given, names, info = _read_image_folder(Path(name).expanduser())
        examples = given.pop("train")
    splits = _complete_splits(examples, given, fractions, seed, info["source"])
    info = {**info, "modality": "image", "seed": seed, "fractions": list(fractions)}
    return _make_task(name, names, splits, info)


def _load_digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    # 0..16 ink levels -> 0..255 grayscale, as an image file would hold them
    pixels = np.clip(np.round(data.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)  # (N, 8, 8)
    examples = [ImageExample(int(y), pixels=p) for p, y in zip(pixels, data.target, strict=True)]
    names = [str(int(n)) for n in data.target_names]
    return examples, names, {"source": "sklearn.datasets.load_digits"}


def _class_files(folder: Path) -> dict[str, list[Path]]:
    classes = {}
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"{d}: class folder without image files ({', '.join(IMAGE_SUFFIXES)})")
        classes[d.name] = files
    if not classes:
        raise ValueError(f"{folder}: no class folders (expected {folder}/<class>/<image>)")
    return classes


def _read_image_folder(root: Path):
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    found = {s: root / d for s, ds in _SPLIT_DIRS.items() for d in ds if (root / d).is_dir()}
    if found and "train" not in found:
        raise ValueError(f"{root}: split folders {sorted(found)} without a 'train' folder")
    parts = {s: _class_files(p) for s, p in found.items()} if found else {"train": _class_files(root)}
    names = sorted(parts["train"])
    for split, classes in parts.items():
        unknown = sorted(set(classes) - set(names))
        if unknown:
            raise ValueError(f"{root}/{split}: classes {unknown} that train does not have; train has {names}")
    given = {
        s: [ImageExample(names.index(c), path=str(f)) for c, files in classes.items() for f in files]
        for s, classes in parts.items()
    }
    return given, names, {"source": str(root), "layout": "splits" if found else "pooled"}


# ---------------------------------------------------------------- preprocessing


def missing_preprocessor(folder: str | Path) -> FileNotFoundError:
    """The error for an image model folder without ``preprocessor_config.json``, saying what it must hold."""
    return FileNotFoundError(
        f"image model folder {str(folder)!r} has no {PREPROCESSOR_FILE}: slimformer needs the image "
        "size, mean and std the model was trained with; save the image processor into the folder "
        '(processor.save_pretrained(folder)) or write {"size": {"height": H, "width": W}, '
        '"image_mean": [...], "image_std": [...]}'
    )


class ImageProcessor:
    """Pixels -> ``pixel_values`` as the model folder's ``preprocessor_config.json`` says.

    Resize to ``size`` (PIL, the config's ``resample``), scale by ``rescale_factor``, normalise by
    ``image_mean`` / ``image_std``, channels first. It reads and writes the transformers
    ``ViTImageProcessor`` format, so a saved folder loads with plain transformers too.
    """

    modality = "image"

    def __init__(self, settings: dict, *, channels: int):
        self.settings = dict(settings)
        self.channels = channels
        size = settings.get("size")
        if isinstance(size, int):
            size = {"height": size, "width": size}
        if not isinstance(size, dict) or not {"height", "width"} <= set(size):
            raise ValueError(
                f"{PREPROCESSOR_FILE}: size={size!r}; slimformer needs {{'height': H, 'width': W}} (or one int)"
            )
        self.size = (int(size["height"]), int(size["width"]))
        self.mean = np.asarray(settings.get("image_mean", [0.5] * channels), dtype=np.float32)
        self.std = np.asarray(settings.get("image_std", [0.5] * channels), dtype=np.float32)
        for key, v in (("image_mean", self.mean), ("image_std", self.std)):
            if v.shape != (channels,):
                raise ValueError(f"{PREPROCESSOR_FILE}: {key} has {v.size} values; the model has {channels} channels")

    @classmethod
    def from_folder(cls, folder: str | Path, config) -> ImageProcessor:
        """The processor of a model folder, checked against the model's image size and channels.

        Raises:
            FileNotFoundError: no ``preprocessor_config.json`` (saying what it must hold).
            ValueError: unreadable, or a size / channel count the model does not take.
        """
        file = Path(folder) / PREPROCESSOR_FILE
        if not file.is_file():
            raise missing_preprocessor(folder)
        try:
            settings = json.loads(file.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{file} is not valid JSON ({e.msg}, line {e.lineno})") from None
        proc = cls(settings, channels=config.num_channels)
        expected = config.image_size if isinstance(config.image_size, (list, tuple)) else (config.image_size,) * 2
        if proc.size != tuple(expected):
            raise ValueError(f"{file}: size {proc.size} but the model takes {tuple(expected)} images")
        return proc

    @classmethod
    def for_model(cls, config, *, mean: float = 0.5, std: float = 0.5) -> ImageProcessor:
        """A processor for a new model (its image size; the same ``mean`` / ``std`` on every channel)."""
        h, w = config.image_size if isinstance(config.image_size, (list, tuple)) else (config.image_size,) * 2
        c = config.num_channels
        settings = {
            "image_processor_type": "ViTImageProcessor",
            "do_resize": True,
            "size": {"height": h, "width": w},
            "resample": 2,  # bilinear
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": [mean] * c,
            "image_std": [std] * c,
        }
        return cls(settings, channels=c)

    def save_pretrained(self, folder: str | Path) -> None:
        (Path(folder) / PREPROCESSOR_FILE).write_text(json.dumps(self.settings, indent=2) + "\n")

    def pixel_values(self, images) -> torch.Tensor:  # noqa: F821 (torch imported lazily)
        """PIL images -> ``(B, C, H, W)`` float32."""
        import torch
        from PIL import Image

        s, out = self.settings, []
        for im in images:
            im = im.convert("L" if self.channels == 1 else "RGB")
            if s.get("do_resize", True) and im.size != self.size[::-1]:
                im = im.resize(self.size[::-1], resample=Image.Resampling(int(s.get("resample", 2))))
            x = np.asarray(im, dtype=np.float32).reshape(im.size[1], im.size[0], -1)  # (H, W, C)
            if s.get("do_rescale", True):
                x = x * float(s.get("rescale_factor", 1 / 255))
            if s.get("do_normalize", True):
                x = (x - self.mean) / self.std
            out.append(torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))))  # (C, H, W)
        return torch.stack(out)

    def collate(self, examples: list[ImageExample]) -> dict:
        """A batch: ``pixel_values`` ``(B, C, H, W)`` and ``labels`` ``(B,)``."""
        import torch

        if not all(isinstance(e, ImageExample) for e in examples):
            raise ValueError("an image model needs image examples; got text (give an image task: digits or a folder)")
        return {
            "pixel_values": self.pixel_values([e.image() for e in examples]),
            "labels": torch.tensor([e.label for e in examples], dtype=torch.long),
        }

    def loader(self, examples: list[ImageExample], *, batch_size: int = 32, shuffle: bool = False, seed: int = 0):
        """A ``DataLoader`` of :meth:`collate` batches (seeded order when ``shuffle``)."""
        import torch
        from torch.utils.data import DataLoader

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        return DataLoader(
            examples, batch_size=batch_size, shuffle=shuffle, collate_fn=self.collate, generator=generator
        )
