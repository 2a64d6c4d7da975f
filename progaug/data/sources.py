"""Source-class tiles for generation: the demo tiles of a pair's source class, or a folder of images."""

from __future__ import annotations

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
        ``(N, 3, S, S)`` uint8 tiles and ``N`` names.

    Raises:
        ValueError: The pair's source class is not a demo class, or the folder holds no usable image.
    """
    if source == "hgsc":
        if pair.classes[0] not in HGSC_CLASSES:
            raise ValueError(f"the pair's source class {pair.classes[0]!r} is not a demo class {HGSC_CLASSES}; pass --source DIR")
        tiles = hgsc_tiles(split, TileSpec(tile_size=pair.image_size, stride=pair.image_size // 2)).of_class(pair.classes[0])
    else:
        folder = Path(source)
        tiles = folder_tiles(folder.parent, tile_size=pair.image_size, classes=[folder.name])
    return tiles.images, list(tiles.sources)
