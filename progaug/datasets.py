"""``SoftLabelProgressiveDataset``: (image, soft label row) pairs, on the fly or from a precomputed cache.

Images come out as float32 ``(3, S, S)`` tensors in [0, 1] (torchvision's convention), then through
the optional ``transform``; labels as float32 ``(K,)`` rows summing to 1.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from progaug.cache import ProgressiveCache
from progaug.errors import check_device
from progaug.labels import check_measure
from progaug.losses import label_rows, soft_label_to_row
from progaug.replacement import DEFAULT_REPLACE_PROB, check_probability, replace_draws, replacement_index
from progaug.selection import SelectiveFilter

__all__ = ["SoftLabelProgressiveDataset"]


def _to_float_image(image: Any, name: str = "base image") -> torch.Tensor:
    """A PIL image, a uint8 (0..255) or a floating ([0, 1]) tensor -> float32 [0, 1], the scale read
    from the dtype as the transform reads it.

    Raises:
        TypeError: Neither a PIL image nor a tensor.
        ValueError: A floating tensor that is not finite or not in [0, 1]; the message names ``name``.
    """
    from PIL import Image

    if isinstance(image, Image.Image):
        from torchvision.transforms.v2.functional import pil_to_tensor

        return pil_to_tensor(image if image.mode == "RGB" else image.convert("RGB")).float() / 255
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"base dataset images must be PIL images or tensors, got {type(image).__name__}")
    if image.dtype == torch.uint8:
        return image.float() / 255
    image = image.float()
    if not bool(torch.isfinite(image).all()) or float(image.min()) < -1e-3 or float(image.max()) > 1 + 1e-3:
        raise ValueError(f"{name} is floating point but not in [0, 1] (max {float(image.max()):.4g}): give uint8 "
                         f"0..255 or float [0, 1] images, as the transform takes them")
    return image


def _open_cache(cache_dir, measure: str | None, classes: Sequence[str] | None, real: Dataset | None) -> tuple[ProgressiveCache, list[str]]:
    """The checked cache and the classifier's class names (``classes``, else ``real.classes``, else the cache's).

    Raises:
        ValueError: The cache was made with another ``measure``; a cache class is not among the names.
    """
    cache = ProgressiveCache.open(cache_dir)
    if measure is not None and cache.measure != measure:
        raise ValueError(f"the cache {cache_dir} was made with measure {cache.measure!r}, not the requested {measure!r}")
    names = list(classes if classes is not None else getattr(real, "classes", None) or cache.classes)
    for name in cache.classes:
        if name not in names:
            raise ValueError(f"the cache's class {name!r} is not among the classes {names}")
    return cache, names


def _check_mixing(real: Dataset | None, measure: str | None, replace_prob: float | None, selective: SelectiveFilter | None) -> float | None:
    """The checks of :meth:`SoftLabelProgressiveDataset.from_cache`'s settings, before anything is read;
    returns the replacement probability in effect (None without ``real``: nothing to replace)."""
    if measure is not None:
        check_measure("measure", measure)
    if replace_prob is not None:
        check_probability("replace_prob", replace_prob)
    for name, value, default in (("replace_prob", replace_prob, DEFAULT_REPLACE_PROB), ("selective", selective, None)):
        if value not in (None, default) and real is None:
            raise ValueError(f"`{name}` needs `real` samples: it decides how generated samples join real ones")
    if selective is not None and not isinstance(selective, SelectiveFilter):
        raise TypeError(f"`selective` must be a progaug.selection.SelectiveFilter, got {type(selective).__name__}")
    return None if real is None else replace_prob


def _join(cache: ProgressiveCache, names: list[str], real: Dataset | None, selective: SelectiveFilter | None):
    """The cache's images and soft rows (filtered by ``selective``), then the real ones after them.

    Returns:
        ``(images (N, 3, S, S) uint8, rows (N, K), real images (M, 3, S, S), filter report or None)``,
        generated samples first.
    """
    src, tgt = names.index(cache.classes[0]), names.index(cache.classes[1])
    images, soft = cache.load_images(), cache.soft_labels()
    rows = soft_label_to_row(soft, src, tgt, len(names))
    if real is None:
        return images, rows, images[:0], None
    real_images, real_rows = _materialise(real, len(names))
    if real_images.shape[1:] != images.shape[1:]:
        raise ValueError(f"real images are {tuple(real_images.shape[1:])} but the cache holds {tuple(images.shape[1:])}")
    report = None
    if selective is not None:
        keep = selective.keep(images, soft, real_images, real_rows.argmax(-1), len(names), tgt)
        report = {**selective.to_dict(), "kept": int(keep.sum()), "total": len(keep)}
        images, rows = images[keep], rows[keep]
    return torch.cat([images, real_images]), torch.cat([rows, real_rows]), real_images, report


class SoftLabelProgressiveDataset(Dataset):
    """Soft-labelled samples for a classifier.

    On the fly: wraps a base dataset of ``(image, class index)`` and runs ``augment`` (a
    :class:`progaug.transforms.ProgressiveDiffusionAugment`) per sample, its randomness seeded from
    ``(seed, epoch, index)`` so DataLoader workers stay independent and reproducible.
    From a cache: :meth:`from_cache` mixes precomputed progressive samples with real ones.

    Args:
        base: Dataset of ``(image, class index)``; PIL images or ``(3, S, S)`` tensors.
        augment: The per-sample diffusion transform (None: real samples with one-hot rows).
        classes: Class names (default: ``base.classes``).
        transform: Applied to each float [0, 1] image tensor (e.g. ``v2.Normalize``).
        seed: Base seed of the on-the-fly randomness.
        measure: Label measure of the on-the-fly samples (:data:`progaug.labels.MEASURES`): None keeps
            ``augment``'s own; a name is set on a copy of ``augment`` (the one passed in is unchanged).

    Attributes:
        measure: The label measure of the progressive samples (None without ``augment``).

    Raises:
        ValueError: No ``classes``; an unknown ``measure``, or one given for an ``augment`` that has
            no ``measure`` setting.
    """

    def __init__(
        self,
        base: Dataset | None,
        augment: Callable | None = None,
        *,
        classes: Sequence[str] | None = None,
        transform: Callable | None = None,
        seed: int = 0,
        measure: str | None = None,
    ) -> None:
        if measure is not None:
            check_measure("measure", measure)
            if not hasattr(augment, "generation"):
                raise ValueError(f"`measure` {measure!r} needs an `augment` with a `measure` setting "
                                 f"(a ProgressiveDiffusionAugment), got {type(augment).__name__}")
            if augment.measure != measure:
                augment = copy.copy(augment)
                augment.generation = dataclasses.replace(augment.generation, measure=measure)
        self.base = base
        self.augment = augment
        self.measure = getattr(augment, "measure", None)
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        names = classes if classes is not None else getattr(base, "classes", None)
        if names is None:
            raise ValueError("`classes` must be given when the base dataset has no `classes` attribute")
        self.classes = list(names)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self._images: torch.Tensor | None = None  # cache mode: (N, 3, S, S) uint8, generated first, maybe on a GPU
        self._rows: torch.Tensor | None = None
        self._num_generated = 0
        self.replace_prob: float | None = None
        self.filter_report: dict | None = None

    # ------------------------------------------------------------------------------ cache mode

    @classmethod
    def from_cache(
        cls,
        cache_dir: str | os.PathLike[str],
        real: Dataset | None = None,
        *,
        classes: Sequence[str] | None = None,
        transform: Callable | None = None,
        device: str | torch.device | None = None,
        measure: str | None = None,
        replace_prob: float | None = DEFAULT_REPLACE_PROB,
        selective: SelectiveFilter | None = None,
    ) -> SoftLabelProgressiveDataset:
        """Precomputed progressive samples, optionally mixed with a real dataset.

        Two ways of adding the generated images to ``real``: ``replace_prob=p`` (the default, ``p = 0.3``,
        :data:`progaug.replacement.DEFAULT_REPLACE_PROB`) keeps one epoch = one pass over the real samples,
        and each real draw becomes a random generated sample with probability ``p``
        (:mod:`progaug.replacement`; how Diff-Mix and DA-Fusion add synthetic images);
        ``replace_prob=None`` concatenates them (the dataset holds generated + real samples, so with
        thousands of generated images the real ones are a small share of every epoch; it lowered accuracy
        in the evaluation protocol). docs/usage.md gives the evidence. Without ``real`` the dataset is the
        generated samples alone.

        Args:
            cache_dir: Folder written by ``progaug precompute`` (checked against its manifest, every image
                against its sha256).
            real: Real ``(image, class index)`` samples to add, with one-hot rows.
            classes: The classifier's classes (default: ``real.classes``, else the pair's two classes);
                must contain the cache's source and target classes.
            transform: Applied to each float [0, 1] image.
            device: Keep all images as uint8 on this device (e.g. ``"cuda"``): ``__getitem__`` and
                :meth:`sample_batch` then return device tensors with no copying from the host. Checked
                before anything is read: it must parse and exist on this machine.
            measure: The label measure the cache must have been made with (None: any; the dataset's
                ``measure`` is the cache's).
            replace_prob: Per-draw replacement probability in [0, 1] when ``real`` is given (default 0.3);
                None: concatenate. Another value than the default or None needs ``real``.
            selective: Drop generated samples whose soft label a teacher CNN trained on ``real`` contradicts
                (:class:`progaug.selection.SelectiveFilter`; needs ``real``); ``filter_report`` then says
                how many were kept.

        Raises:
            TypeError: ``device`` is neither a str nor a torch.device.
            FileNotFoundError, ValueError: Missing or altered cache files; classes that do not match; a
                ``device`` that does not parse or is not on this machine; a cache made with another
                ``measure``.
        """
        device = check_device("device", device)
        replace_prob = _check_mixing(real, measure, replace_prob, selective)
        cache, names = _open_cache(cache_dir, measure, classes, real)
        images, rows, real_images, report = _join(cache, names, real, selective)
        ds = cls(None, classes=names, transform=transform)
        ds._images, ds._rows = images.to(device) if device else images, rows.to(device) if device else rows
        ds._num_generated = len(images) - len(real_images)
        ds.replace_prob, ds.filter_report = replace_prob, report
        ds.cache = cache
        ds.measure = cache.measure
        return ds

    def sample_batch(self, batch_size: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A random batch ``(B, 3, S, S)`` float [0, 1], ``(B, K)`` from the in-memory cache (GPU-resident mode):
        uniform over all samples, or with ``replace_prob`` uniform over the real ones, each replaced by a
        generated one with that probability."""
        if self._images is None:
            raise RuntimeError("sample_batch needs a dataset made with from_cache")
        if self.replace_prob is None:
            index = torch.randint(0, len(self._images), (batch_size,), generator=generator)
        else:
            real = self._num_generated + torch.randint(0, len(self._images) - self._num_generated, (batch_size,), generator=generator)
            index = replace_draws(real, self._num_generated, self.replace_prob, generator)[1]
        index = index.to(self._images.device)
        return self._images[index].float() / 255, self._rows[index]

    # --------------------------------------------------------------------------------- common

    def set_epoch(self, epoch: int) -> None:
        """Change the on-the-fly randomness (called by training loops each epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self._images is None:
            return len(self.base)
        return len(self._images) - (self._num_generated if self.replace_prob is not None else 0)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._images is not None:
            if self.replace_prob is not None:  # index counts real samples; a draw may become a generated one
                swap = replacement_index(index, self._num_generated, self.replace_prob, self.seed, self.epoch)
                index = self._num_generated + int(index) if swap is None else swap
            image, row = self._images[index].float() / 255, self._rows[index]
        else:
            image, label = self.base[index]
            image = _to_float_image(image)
            if self.augment is not None:
                state = torch.random.get_rng_state()
                torch.manual_seed(hash((self.seed, self.epoch, int(index))) & 0x7FFF_FFFF)
                try:
                    image, row = self.augment(image, int(label))
                finally:
                    torch.random.set_rng_state(state)
                row = label_rows(torch.as_tensor(row)[None], len(self.classes), name="augment")[0]
            else:
                row = _one_hot(label, len(self.classes))
        if self.transform is not None:
            image = self.transform(image)
        return image, row


def _materialise(real: Dataset, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, rows = [], []
    for i in range(len(real)):
        image, label = real[i]
        images.append((_to_float_image(image, f"`real` image {i}") * 255).round().clamp(0, 255).byte())
        rows.append(_one_hot(label, num_classes))
    return torch.stack(images), torch.stack(rows)


def _one_hot(label: Any, num_classes: int) -> torch.Tensor:
    """One class index from a base dataset -> float32 ``(K,)`` one-hot row.

    Raises:
        ValueError: The index is outside ``[0, num_classes)``.
    """
    return label_rows(torch.tensor([int(label)]), num_classes, name="label")[0]
