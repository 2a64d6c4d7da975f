"""A set of equally sized RGB tiles with class labels, and its torch Dataset."""

from __future__ import annotations

import dataclasses
import functools
import hashlib

import torch
from torch.utils.data import Dataset

__all__ = ["TileDataset", "TileSet", "dihedral", "tile_digest", "to_model_range", "to_uint8"]


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 ``[0, 255]`` images -> float32 ``[-1, 1]`` (the diffusion models' range)."""
    return x.float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images to uint8 [0, 255], clamped and rounded as they are saved to PNG (the inverse of
    :func:`to_model_range` up to rounding)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().byte()


def dihedral(x: torch.Tensor, op: int) -> torch.Tensor:
    """One of the 8 flips/rotations of ``(..., H, W)`` images: ``op >= 4`` flips horizontally, then
    ``op % 4`` quarter turns (tissue has no orientation)."""
    y = x.flip(-1) if op >= 4 else x
    return torch.rot90(y, op % 4, dims=(-2, -1))


def tile_digest(image: torch.Tensor) -> str:
    """A tile's content fingerprint: the first 16 hex digits of the sha256 of its size and uint8 pixels.

    Equal for the same pixels whatever the file's name, folder or PNG encoding, so a pair card can record the tiles
    a pair saw and an evaluation can find them among its splits (:func:`progaug.evaluation.pipeline.leak`).

    Args:
        image: ``(3, S, S)`` uint8 tile.

    Returns:
        16 lowercase hex digits.
    """
    if image.dtype != torch.uint8 or image.ndim != 3:
        raise ValueError(f"`image` must be a (3, S, S) uint8 tile, got {tuple(image.shape)} {image.dtype}")
    h = hashlib.sha256(f"{tuple(image.shape)}".encode())
    h.update(image.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class TileSet:
    """Tiles of several classes, held in memory.

    Attributes:
        images: ``(N, 3, S, S)`` uint8 tiles.
        labels: ``(N,)`` int64 class indices into ``classes``.
        classes: Class names; index ``i`` is class ``i``.
        sources: ``N`` strings naming where each tile came from (``file:x,y``).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    sources: tuple[str, ...]

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"`images` must be (N, 3, S, S) uint8, got {tuple(self.images.shape)} {self.images.dtype}")
        if self.labels.shape != (n,) or len(self.sources) != n:
            raise ValueError(f"`labels` and `sources` must have {n} entries")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def class_to_idx(self) -> dict[str, int]:
        """Class name -> index."""
        return {c: i for i, c in enumerate(self.classes)}

    def of_class(self, name: str) -> TileSet:
        """The tiles of one class (labels kept)."""
        if name not in self.classes:
            raise ValueError(f"unknown class {name!r}; the classes are {list(self.classes)}")
        keep = (self.labels == self.classes.index(name)).nonzero().flatten()
        return self.subset(keep)

    def subset(self, index: torch.Tensor) -> TileSet:
        """The tiles at ``index``."""
        index = torch.as_tensor(index, dtype=torch.long)
        return TileSet(self.images[index], self.labels[index], self.classes, tuple(self.sources[int(i)] for i in index))

    def counts(self) -> dict[str, int]:
        """Number of tiles per class."""
        return {c: int((self.labels == i).sum()) for i, c in enumerate(self.classes)}

    def digests(self) -> tuple[str, ...]:
        """:func:`tile_digest` of every tile, in order (computed once per set: a run's leak line reads them per N)."""
        return self._digests

    @functools.cached_property
    def _digests(self) -> tuple[str, ...]:
        return tuple(tile_digest(image) for image in self.images)

    def digests_by_class(self) -> dict[str, list[str]]:
        """``{class: sorted digests of its tiles}``, the form a pair card records (``data.digests``)."""
        digests = self.digests()
        return {c: sorted(d for d, label in zip(digests, self.labels.tolist()) if label == i) for i, c in enumerate(self.classes)}


class TileDataset(Dataset):
    """``(image, label)`` pairs from a :class:`TileSet`.

    Args:
        tiles: The tiles.
        transform: Applied to each ``(3, S, S)`` uint8 tensor; default: convert to float32 in [0, 1]
            (torchvision's convention for classifiers).
    """

    def __init__(self, tiles: TileSet, transform=None) -> None:
        self.tiles = tiles
        self.transform = transform
        self.classes = list(tiles.classes)
        self.class_to_idx = tiles.class_to_idx

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.tiles.images[index]
        image = self.transform(image) if self.transform is not None else image.float() / 255
        return image, int(self.tiles.labels[index])
