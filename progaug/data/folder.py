"""Users' own data: ``root/<class>/*.{png,jpg,jpeg,tif,tiff}`` cut into tiles."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from progaug.data.images import IMAGE_SUFFIXES, load_rgb
from progaug.data.tiles import TileSet

__all__ = ["folder_tiles", "list_class_folders"]


def list_class_folders(root: str | os.PathLike[str], classes: list[str] | tuple[str, ...] | None = None) -> dict[str, list[Path]]:
    """Image files per class folder, sorted.

    Args:
        root: Folder with one sub-folder per class.
        classes: Class folders to read, in this order (default: all, sorted by name).

    Raises:
        FileNotFoundError: ``root`` or a named class folder does not exist.
        ValueError: No class folders, or a class folder holds no image file.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    names = list(classes) if classes is not None else sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise ValueError(f"{root} has no class sub-folders (expected root/<class>/*.png)")
    out = {}
    for name in names:
        folder = root / name
        if not folder.is_dir():
            raise FileNotFoundError(f"class folder not found: {folder}")
        files = sorted(p for p in folder.iterdir() if (p.is_file() or p.is_symlink()) and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"class folder {folder} holds no image ({', '.join(IMAGE_SUFFIXES)})")
        out[name] = files
    return out


def folder_tiles(
    root: str | os.PathLike[str],
    *,
    tile_size: int = 64,
    classes: list[str] | tuple[str, ...] | None = None,
) -> TileSet:
    """Read ``root/<class>/*`` as RGB and cut each image into non-overlapping ``tile_size`` tiles.

    An image of exactly ``tile_size`` gives one tile; a larger one gives ``floor(W / s) * floor(H / s)``
    tiles from its top-left corner. Every mode PIL reads is converted to RGB or refused.

    Raises:
        FileNotFoundError, ValueError: Missing folders, empty classes, or a corrupt, empty, unreadable
            or too-small image (the message names the file).
    """
    per_class = list_class_folders(root, classes)
    images, labels, sources = [], [], []
    for label, files in enumerate(per_class.values()):
        for path in files:
            array = np.asarray(load_rgb(path, min_size=tile_size))
            for y in range(0, array.shape[0] - tile_size + 1, tile_size):
                for x in range(0, array.shape[1] - tile_size + 1, tile_size):
                    images.append(array[y : y + tile_size, x : x + tile_size])
                    labels.append(label)
                    sources.append(f"{path}:{x},{y}")
    stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return TileSet(stacked, torch.tensor(labels, dtype=torch.long), tuple(per_class), tuple(sources))
