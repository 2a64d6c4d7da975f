"""Source-class tiles for generation: the demo tiles of a pair's source class, or a folder of images."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from progaug.data.folder import folder_tiles
from progaug.data.hgsc import HGSC_CLASSES, TileSpec, hgsc_tiles

if TYPE_CHECKING:  # data sits below the pair; only its classes and size are read
    from progaug.pair import Pair

__all__ = ["source_tiles"]


def source_tiles(source: str, pair: Pair, *, split: str = "train") -> tuple[torch.Tensor, list[str]]:
    """Source-class tiles at the pair's size and their names.

    Args:
        source: ``"hgsc"`` (the demo tiles of the pair's source class, from ``split``) or a folder of
            images (``folder/*.png``, cut into tiles).
        pair: The pair (gives the source class and the tile size).
        split: Demo split to use with ``"hgsc"``.

    Returns:
        ``(N, 3, S, S)`` uint8 tiles and ``N`` names: ``file:x,y`` with the file relative to the folder,
        so the names (and a ``--resume``) do not depend on how the folder was spelled.

    Raises:
        ValueError: An empty ``source``; the pair's source class is not a demo class, or the folder holds
            no usable image.
        FileNotFoundError: The folder does not exist.
    """
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"--source must be 'hgsc' or a folder of source-class images, got {source!r}")
    if source == "hgsc":
        if pair.classes[0] not in HGSC_CLASSES:
            raise ValueError(f"the pair's source class {pair.classes[0]!r} is not a demo class {HGSC_CLASSES}; pass --source DIR")
        tiles = hgsc_tiles(split, TileSpec(tile_size=pair.image_size, stride=pair.image_size // 2)).of_class(pair.classes[0])
        return tiles.images, list(tiles.sources)
    folder = Path(os.path.abspath(source))  # "." and "dir/" name their folder too
    tiles = folder_tiles(folder.parent, tile_size=pair.image_size, classes=[folder.name])
    return tiles.images, [_relative(name, folder) for name in tiles.sources]


def _relative(name: str, folder: Path) -> str:
    """``/abs/folder/a.png:x,y`` -> ``a.png:x,y``."""
    path, _, place = name.rpartition(":")
    return f"{Path(path).relative_to(folder).as_posix()}:{place}"
