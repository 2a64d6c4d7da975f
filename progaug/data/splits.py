"""Train / validation / test tiles for evaluating a classifier: the bundled demo split, or a user's
``ROOT/{train,val,test}/<class>/`` folders."""

from __future__ import annotations

from pathlib import Path

from progaug.data.folder import folder_tiles
from progaug.data.hgsc import SPLITS, TileSpec, hgsc_tiles
from progaug.data.tiles import TileSet

__all__ = ["load_splits"]


def load_splits(data: str, size: int, splits: tuple[str, ...] = SPLITS) -> dict[str, TileSet]:
    """Tiles per split at ``size`` pixels.

    Args:
        data: ``'hgsc'`` (the bundled demo: train / val / test by spatial block), a root with ``train/``,
            ``val/``, ``test/`` class folders (the splits that exist), or a plain ``root/<class>/`` folder
            (train only).
        size: Tile side in pixels (the pair's image size).
        splits: Which of the splits to read (a plain folder is ``train`` whatever this says).
    """
    if data == "hgsc":
        spec = TileSpec(tile_size=size, stride=size // 2)
        return {s: hgsc_tiles(s, spec) for s in splits}
    root = Path(data)
    if (root / "train").is_dir():
        return {s: folder_tiles(root / s, tile_size=size) for s in splits if (root / s).is_dir()}
    return {"train": folder_tiles(root, tile_size=size)}
