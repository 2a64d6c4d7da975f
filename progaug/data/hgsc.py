"""The bundled HGSC demo tiles: two real H&E classes from one crop, tiled deterministically, split by place.

Both classes come from the same 1500x1500 px crop (``hgsc_nest.jpg``) and its nucleus-type mask, so a
classifier has to tell them apart by what the tissue shows (nuclei and their arrangement), not by which
crop, stain batch or scanner a tile came from:

- ``stroma``: tiles whose nucleus pixels are more than 70 % connective-tissue (type 1);
- ``tumour``: tiles whose nucleus pixels are more than 70 % neoplastic (type 3).

Every tile holds tissue (``min_tissue``) and at least ``min_nucleus_pixels`` nucleus pixels; tiles with
mixed or mostly inflammatory nuclei belong to neither class. Tiles are taken at native resolution
(``tile_size`` 64, ``stride`` 32: one 64-px tile holds one to three nuclei).

Spatial split: the crop is cut into a 6x6 grid of 250-px blocks, each block assigned to one split by
the fixed table ``BLOCK_SPLITS``. A tile is kept only when all of it lies in blocks of one split, so no
two tiles of different splits overlap. The table (``docs/data.md`` says how it was chosen) gives every
split both classes. Training tiles are capped at ``max_train_per_class`` (500, as in the paper),
chosen evenly over the raster-ordered list.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from importlib import resources

import numpy as np
import torch

from progaug.errors import check_int
from progaug.config import JsonConfig
from progaug.data.images import load_rgb
from progaug.data.tiles import TileSet

__all__ = ["BLOCK_SPLITS", "CROP", "HGSC_CLASSES", "SPLITS", "TileSpec", "block_split", "hgsc_tiles", "tissue_fraction"]

HGSC_CLASSES = ("stroma", "tumour")
"""Class order of the demo data: index 0 is the default source class (A), 1 the target (B)."""

CROP = "hgsc_nest.jpg"
"""The one crop both classes come from."""

SPLITS = ("train", "val", "test")

BLOCK_SPLITS = (
    ("val", "val", "train", "train", "train", "train"),
    ("val", "val", "val", "val", "train", "train"),
    ("test", "train", "train", "train", "train", "train"),
    ("test", "train", "train", "train", "test", "train"),
    ("val", "train", "train", "test", "test", "train"),
    ("val", "train", "train", "test", "test", "train"),
)
"""Split of each 250-px block, ``BLOCK_SPLITS[row][column]`` (row = y // 250, column = x // 250)."""

_NUCLEUS_TYPES = {"stroma": 1, "tumour": 3}  # type-mask values: 1 connective, 2 inflammatory, 3 neoplastic


@dataclasses.dataclass(frozen=True)
class TileSpec(JsonConfig):
    """How the demo crop is tiled and its tiles labelled.

    Attributes:
        tile_size: Tile side in pixels (native resolution).
        stride: Step between tile origins.
        block_size: Side of the spatial blocks that define the splits (``BLOCK_SPLITS`` has 6x6).
        max_train_per_class: Cap on training tiles per class.
        class_share: Minimum share of a tile's nucleus pixels that are of its class's nucleus type.
        min_nucleus_pixels: Minimum number of nucleus pixels in a tile.
        min_tissue: Minimum tissue fraction of any tile.
    """

    tile_size: int = 64
    stride: int = 32
    block_size: int = 250
    max_train_per_class: int = 500
    class_share: float = 0.7
    min_nucleus_pixels: int = 50
    min_tissue: float = 0.5

    def __post_init__(self) -> None:
        for name in ("tile_size", "stride", "block_size", "max_train_per_class"):
            check_int(name, getattr(self, name))
        if self.tile_size > self.block_size:
            raise ValueError(f"`tile_size` {self.tile_size} must not exceed `block_size` {self.block_size}")
        if not 0.5 <= self.class_share < 1:
            raise ValueError(f"`class_share` must be in [0.5, 1) so that no tile has two classes, got {self.class_share!r}")


def tissue_fraction(tile: np.ndarray) -> float:
    """Fraction of pixels that are stained tissue (channel spread > 20/255), for an ``(S, S, 3)`` uint8 tile."""
    spread = tile.max(axis=-1).astype(np.int16) - tile.min(axis=-1).astype(np.int16)
    return float((spread > 20).mean())


def block_split(x: int, y: int, spec: TileSpec) -> str | None:
    """Split of the tile with origin ``(x, y)``, or None when it touches blocks of two splits."""
    last = len(BLOCK_SPLITS) - 1
    found = {
        BLOCK_SPLITS[min(yy // spec.block_size, last)][min(xx // spec.block_size, last)]
        for xx in (x, x + spec.tile_size - 1)
        for yy in (y, y + spec.tile_size - 1)
    }
    return found.pop() if len(found) == 1 else None


def _file(name: str):
    return resources.files("progaug.data").joinpath("files", "hgsc", name)


def tile_class(types: np.ndarray, spec: TileSpec) -> str | None:
    """Class of a tile from its ``(S, S)`` nucleus-type mask, or None (too few nuclei, mixed, inflammatory)."""
    nuclei = int((types > 0).sum())
    if nuclei < spec.min_nucleus_pixels:
        return None
    for cls, kind in _NUCLEUS_TYPES.items():
        if (types == kind).sum() / nuclei > spec.class_share:
            return cls
    return None


@lru_cache(maxsize=4)
def _all_tiles(spec: TileSpec) -> dict[str, dict[str, list[tuple[int, int]]]]:
    """Tile origins per class and split (cached: the crop is decoded once per spec)."""
    crop = np.asarray(load_rgb(_file(CROP)))
    with _file("hgsc_nest_type_mask.npz").open("rb") as f:
        types = np.load(f)["nuc_raster"]
    out: dict[str, dict[str, list[tuple[int, int]]]] = {c: {s: [] for s in SPLITS} for c in HGSC_CLASSES}
    s = spec.tile_size
    for y in range(0, crop.shape[0] - s + 1, spec.stride):
        for x in range(0, crop.shape[1] - s + 1, spec.stride):
            split = block_split(x, y, spec)
            if split is None:
                continue
            cls = tile_class(types[y : y + s, x : x + s], spec)
            if cls is not None and tissue_fraction(crop[y : y + s, x : x + s]) >= spec.min_tissue:
                out[cls][split].append((x, y))
    return out


def _cap(origins: list[tuple[int, int]], cap: int) -> list[tuple[int, int]]:
    if len(origins) <= cap:
        return origins
    keep = np.linspace(0, len(origins) - 1, cap).round().astype(int)
    return [origins[i] for i in keep]


def hgsc_tiles(split: str = "train", spec: TileSpec | None = None) -> TileSet:
    """The demo tiles of one split (``"train"``, ``"val"``, ``"test"`` or ``"all"``).

    Returns:
        A :class:`TileSet` with classes ``("stroma", "tumour")``; sources read ``file:x,y``.

    Raises:
        ValueError: Unknown split.
    """
    if split not in (*SPLITS, "all"):
        raise ValueError(f"`split` must be one of {(*SPLITS, 'all')}, got {split!r}")
    spec = spec or TileSpec()
    origins = _all_tiles(spec)
    array = np.asarray(load_rgb(_file(CROP)))
    images, labels, sources = [], [], []
    for label, cls in enumerate(HGSC_CLASSES):
        for sp in SPLITS if split == "all" else (split,):
            chosen = _cap(origins[cls][sp], spec.max_train_per_class) if sp == "train" else origins[cls][sp]
            for x, y in chosen:
                images.append(array[y : y + spec.tile_size, x : x + spec.tile_size])
                labels.append(label)
                sources.append(f"{CROP}:{x},{y}")
    stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return TileSet(stacked, torch.tensor(labels, dtype=torch.long), HGSC_CLASSES, tuple(sources))
