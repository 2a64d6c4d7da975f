"""The bundled HGSC demo tiles: two real H&E classes, tiled deterministically, split by spatial block.

Both crops are 1500x1500 px. Tiles are taken at native resolution (``tile_size`` 64, ``stride`` 32:
one 64-px tile holds one to three nuclei). The crops are cut into a 4x4 grid of 384-px blocks; only
tiles that lie wholly inside one block are kept, so no two tiles of different splits overlap. The
third column of blocks is held out: its upper two blocks are the validation split, its lower two the
test split; every other block is training data. Because the tumour nest sits in the middle of its crop,
this gives every split both classes (counts in ``docs/data.md``).

- ``tumour``: tiles of ``hgsc_nest.jpg`` whose nucleus pixels (type mask) are more than 70 %
  neoplastic and that hold tissue;
- ``stroma``: tiles of ``hgsc_stromal_he.jpg`` that hold tissue.

Training tiles are capped at ``max_train_per_class`` (500, as in the paper), chosen evenly over the
sorted tile list so the choice is deterministic and spread over the whole training area.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from importlib import resources

import numpy as np
import torch

from progaug.errors import check_positive_int
from progaug.config import _JsonMixin
from progaug.data.images import load_rgb
from progaug.data.tiles import TileSet

__all__ = ["HGSC_CLASSES", "SPLITS", "TileSpec", "block_split", "hgsc_tiles", "tissue_fraction"]

HGSC_CLASSES = ("stroma", "tumour")
"""Class order of the demo data: index 0 is the default source class (A), 1 the target (B)."""

SPLITS = ("train", "val", "test")
_BLOCK_SPLITS = (
    ("train", "train", "val", "train"),
    ("train", "train", "val", "train"),
    ("train", "train", "test", "train"),
    ("train", "train", "test", "train"),
)
_NEOPLASTIC = 3


@dataclasses.dataclass(frozen=True)
class TileSpec(_JsonMixin):
    """How the demo crops are tiled.

    Attributes:
        tile_size: Tile side in pixels (native resolution).
        stride: Step between tile origins.
        block_size: Side of the spatial blocks that define the splits.
        max_train_per_class: Cap on training tiles per class.
        neoplastic_share: Minimum share of neoplastic nucleus pixels in a tumour tile.
        min_tissue: Minimum tissue fraction of any tile.
    """

    tile_size: int = 64
    stride: int = 32
    block_size: int = 384
    max_train_per_class: int = 500
    neoplastic_share: float = 0.7
    min_tissue: float = 0.5

    def __post_init__(self) -> None:
        for name in ("tile_size", "stride", "block_size", "max_train_per_class"):
            check_positive_int(name, getattr(self, name))
        if self.tile_size > self.block_size:
            raise ValueError(f"`tile_size` {self.tile_size} must not exceed `block_size` {self.block_size}")


def tissue_fraction(tile: np.ndarray) -> float:
    """Fraction of pixels that are stained tissue (channel spread > 20/255), for an ``(S, S, 3)`` uint8 tile."""
    spread = tile.max(axis=-1).astype(np.int16) - tile.min(axis=-1).astype(np.int16)
    return float((spread > 20).mean())


def block_split(x: int, y: int, spec: TileSpec) -> str | None:
    """Split of the tile with origin ``(x, y)``, or None when it crosses a block border."""
    size = spec.tile_size
    bx, by = x // spec.block_size, y // spec.block_size
    if (x + size - 1) // spec.block_size != bx or (y + size - 1) // spec.block_size != by:
        return None
    return _BLOCK_SPLITS[min(by, 3)][min(bx, 3)]


def _file(name: str):
    return resources.files("progaug.data").joinpath("files", "hgsc", name)


@lru_cache(maxsize=4)
def _all_tiles(spec: TileSpec) -> dict[str, dict[str, list[tuple[int, int]]]]:
    """Tile origins per class and split (cached: the crops are decoded once per spec)."""
    nest = np.asarray(load_rgb(_file("hgsc_nest.jpg")))
    stroma = np.asarray(load_rgb(_file("hgsc_stromal_he.jpg")))
    with _file("hgsc_nest_type_mask.npz").open("rb") as f:
        types = np.load(f)["nuc_raster"]
    out: dict[str, dict[str, list[tuple[int, int]]]] = {c: {s: [] for s in SPLITS} for c in HGSC_CLASSES}
    s = spec.tile_size
    for y in range(0, nest.shape[0] - s + 1, spec.stride):
        for x in range(0, nest.shape[1] - s + 1, spec.stride):
            split = block_split(x, y, spec)
            if split is None:
                continue
            if tissue_fraction(stroma[y : y + s, x : x + s]) >= spec.min_tissue:
                out["stroma"][split].append((x, y))
            t = types[y : y + s, x : x + s]
            nuclei = int((t > 0).sum())
            if nuclei and (t == _NEOPLASTIC).sum() / nuclei > spec.neoplastic_share:
                if tissue_fraction(nest[y : y + s, x : x + s]) >= spec.min_tissue:
                    out["tumour"][split].append((x, y))
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
    files = {"stroma": "hgsc_stromal_he.jpg", "tumour": "hgsc_nest.jpg"}
    images, labels, sources = [], [], []
    for label, cls in enumerate(HGSC_CLASSES):
        array = np.asarray(load_rgb(_file(files[cls])))
        for sp in SPLITS if split == "all" else (split,):
            chosen = _cap(origins[cls][sp], spec.max_train_per_class) if sp == "train" else origins[cls][sp]
            for x, y in chosen:
                images.append(array[y : y + spec.tile_size, x : x + spec.tile_size])
                labels.append(label)
                sources.append(f"{files[cls]}:{x},{y}")
    stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return TileSet(stacked, torch.tensor(labels, dtype=torch.long), HGSC_CLASSES, tuple(sources))
