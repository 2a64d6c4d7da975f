"""progaug datasets inside timm's own ``train.py``, without forking it.

``python -m progaug.timm_train path/to/train.py --dataset progaug/CACHE_DIR --data-dir REAL_ROOT ...``

- ``--dataset progaug/CACHE_DIR``: the training split is the precomputed cache (soft rows) plus, when
  ``REAL_ROOT/<train split>/<class>/`` exists, the real images there (one-hot rows); the validation
  split is ``REAL_ROOT/<val split>/<class>/`` with class indices, as timm's ``validate`` expects.
- timm's ``create_dataset`` has no registry, so :func:`install` wraps ``timm.data.create_dataset``
  before the script imports it; every other dataset name goes to timm unchanged.
- Options that break soft labels are refused with what to use instead (:func:`check_timm_args`).
- ``--progaug-replace-prob P`` (read by ``progaug.timm_train``, not passed to timm; default 0.3,
  :data:`progaug.replacement.DEFAULT_REPLACE_PROB`): an epoch is one pass over the real training images
  and each draw becomes a generated one with probability ``P``; ``--progaug-replace-prob none``
  concatenates the cache to them instead (docs/usage.md gives the evidence). Without real training
  images the training split is the cache alone.

For any other training loop, :class:`progaug.transforms.ProgressiveDiffusionAugment` is a batch
callable ``(x, target) -> (x, target)`` with a ``mixup_enabled`` flag: use it where timm's loop calls
``mixup_fn``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from progaug.cache import ProgressiveCache
from progaug.data.folder import list_class_folders
from progaug.data.images import load_rgb
from progaug.losses import soft_label_to_row
from progaug.replacement import DEFAULT_REPLACE_PROB, check_probability

__all__ = ["PREFIX", "ProgaugTimmDataset", "check_timm_args", "create_dataset", "install"]

PREFIX = "progaug/"


class ProgaugTimmDataset(Dataset):
    """``(PIL image, target)`` samples for timm's loader, which sets ``self.transform``.

    Args:
        items: ``(path or PIL image, target)`` pairs; targets are ``(K,)`` float rows or int indices.
        classes: Class names.
        generated: Generated ``(PIL image, target)`` pairs that replace draws of ``items`` with probability
            ``replace_prob`` (:mod:`progaug.replacement`; drawn from torch's generator, which timm seeds
            per worker); None: ``items`` only.
        replace_prob: Per-draw replacement probability in [0, 1] (with ``generated``).
    """

    def __init__(self, items: list[tuple[Any, Any]], classes: list[str], generated: list[tuple[Any, Any]] | None = None,
                 replace_prob: float = 0.0) -> None:
        self.items = items
        self.generated = generated or []
        self.replace_prob = check_probability("replace_prob", replace_prob)
        self.classes = classes
        self.class_to_idx = {c: i for i, c in enumerate(classes)}
        self.transform = None
        self.target_transform = None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        source, target = self.items[index]
        if self.generated and self.replace_prob > 0 and float(torch.rand(())) < self.replace_prob:
            source, target = self.generated[int(torch.randint(0, len(self.generated), ()))]
        image = load_rgb(source) if isinstance(source, (str, Path)) else source
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target

    def filename(self, index: int, basename: bool = False, absolute: bool = False) -> str:
        """timm's inference scripts ask datasets for file names."""
        source = self.items[index][0]
        name = str(source) if isinstance(source, (str, Path)) else f"sample_{index}"
        return Path(name).name if basename else name


def _real_items(folder: Path, classes: list[str] | None, soft: bool) -> tuple[list[tuple[Any, Any]], list[str]]:
    per_class = list_class_folders(folder, classes)
    names = list(per_class)
    items = []
    for idx, (_, files) in enumerate(per_class.items()):
        for f in files:
            target = torch.nn.functional.one_hot(torch.tensor(idx), len(names)).float() if soft else idx
            items.append((f, target))
    return items, names


def create_dataset(name: str, root: str | None = None, split: str = "validation", is_training: bool = False, **_: Any) -> ProgaugTimmDataset:
    """The dataset behind ``progaug/CACHE_DIR`` for one split (see the module docstring).

    Raises:
        FileNotFoundError, ValueError: A missing or altered cache, missing class folders, or classes
            that do not contain the cache's classes.
    """
    from PIL import Image

    cache = ProgressiveCache.open(name[len(PREFIX):])
    real_split = Path(root) / split if root else None
    if not is_training:
        if real_split is None or not real_split.is_dir():
            raise FileNotFoundError(f"validation split {split!r} needs real images in {real_split or '--data-dir/' + split}/<class>/")
        items, classes = _real_items(real_split, None, soft=False)
        return ProgaugTimmDataset(items, classes)
    items, classes = [], sorted(cache.classes)
    if real_split is not None and real_split.is_dir():
        items, classes = _real_items(real_split, None, soft=True)
    missing = [c for c in cache.classes if c not in classes]
    if missing:
        raise ValueError(f"the cache's classes {list(cache.classes)} are not all among the real classes {classes}")
    src, tgt = classes.index(cache.classes[0]), classes.index(cache.classes[1])
    soft = torch.tensor([row["soft_label"] for row in cache.rows], dtype=torch.float64)  # 1 - L rounded once
    targets = soft_label_to_row(soft, src, tgt, len(classes)).float()
    generated = [(Image.fromarray(cache.read_image(row)), target) for row, target in zip(cache.rows, targets)]
    if _OPTIONS["replace_prob"] is None or not items:
        return ProgaugTimmDataset(items + generated, classes)
    return ProgaugTimmDataset(items, classes, generated, _OPTIONS["replace_prob"])


_OPTIONS: dict[str, Any] = {"replace_prob": DEFAULT_REPLACE_PROB}
"""progaug's own options of a ``progaug.timm_train`` run (set by :func:`install`)."""


def install(replace_prob: float | None = DEFAULT_REPLACE_PROB) -> None:
    """Route ``progaug/...`` dataset names in ``timm.data.create_dataset`` to :func:`create_dataset`.

    Args:
        replace_prob: How the cache's images join the real training images: a probability (default 0.3)
            replaces each real draw by a generated one with that probability; None concatenates them.
    """
    _OPTIONS["replace_prob"] = None if replace_prob is None else check_probability("replace_prob", replace_prob)
    import timm.data
    import timm.data.dataset_factory as factory

    original = factory.create_dataset
    if getattr(original, "_progaug", False):
        return

    def patched(name: str, *args: Any, **kwargs: Any):
        if isinstance(name, str) and name.startswith(PREFIX):
            return create_dataset(name, *args, **kwargs)
        return original(name, *args, **kwargs)

    patched._progaug = True  # type: ignore[attr-defined]
    factory.create_dataset = patched
    timm.data.create_dataset = patched


_REFUSED = {
    "mixup": "timm's Mixup turns the soft rows back into one-hot rows; progaug's rows already mix the two "
             "classes — leave --mixup 0 (or apply torchvision's v2.MixUp to the soft rows in your own loop)",
    "cutmix": "timm's Mixup/CutMix turns the soft rows back into one-hot rows — leave --cutmix 0",
    "bce_target_thresh": "--bce-target-thresh turns soft labels back into 0/1; use --bce-loss without it",
    "jsd_loss": "the JSD loss expects class indices; use the default cross-entropy (soft targets are accepted)",
}


def check_timm_args(argv: list[str]) -> list[str]:
    """Refuse options of timm's train.py that break soft labels; return ``argv`` with ``--smoothing 0``
    added when it was not given (timm's default 0.1 expects class indices).

    Raises:
        SystemExit: With a message naming the option and what to use instead.
    """
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--dataset", default="")
    p.add_argument("--smoothing", type=float, default=None)
    p.add_argument("--mixup", type=float, default=0.0)
    p.add_argument("--cutmix", type=float, default=0.0)
    p.add_argument("--bce-target-thresh", type=float, default=None)
    p.add_argument("--jsd-loss", action="store_true")
    p.add_argument("-c", "--config", default="")
    args, _ = p.parse_known_args(argv)
    if args.config:
        import yaml

        with open(args.config) as f:
            for key, value in (yaml.safe_load(f) or {}).items():
                if hasattr(args, key) and value is not None:
                    setattr(args, key, value)
    if not str(args.dataset).startswith(PREFIX):
        return argv
    if args.smoothing not in (None, 0, 0.0):
        raise SystemExit(
            f"progaug.timm_train: --smoothing {args.smoothing} makes timm use LabelSmoothingCrossEntropy, which needs "
            "class indices; pass --smoothing 0 (timm then uses nn.CrossEntropyLoss, which takes soft rows) and smooth "
            "the rows with progaug.losses.smooth_soft_targets if you want smoothing"
        )
    for key, why in _REFUSED.items():
        value = getattr(args, key)
        if value not in (None, 0, 0.0, False):
            raise SystemExit(f"progaug.timm_train: --{key.replace('_', '-')} {value} is refused: {why}")
    return argv if args.smoothing is not None else [*argv, "--smoothing", "0"]
