"""Open any image file as RGB, or refuse it with a message that names the file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["IMAGE_SUFFIXES", "load_rgb", "to_rgb"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def to_rgb(image: Image.Image, name: str = "image") -> Image.Image:
    """Convert a PIL image of any common mode to 8-bit RGB.

    Transparency is composited on white (slide background). 16- and 32-bit grey images (``I;16``,
    ``I``, ``F``) are rescaled from their own min..max to 0..255.

    Raises:
        ValueError: A mode that has no sensible RGB reading; the message names ``name``.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("L", "P", "1", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        return image.convert("RGB")
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        return Image.fromarray(scaled.round().astype(np.uint8), mode="L").convert("RGB")
    raise ValueError(f"{name}: image mode {mode!r} cannot be converted to RGB")


def load_rgb(path: str | os.PathLike[str], *, min_size: int | None = None) -> Image.Image:
    """Open an image file as RGB, fully decoded.

    Args:
        path: Image file.
        min_size: Refuse images whose shorter side is below this many pixels.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: Empty, corrupt, unreadable, of an unconvertible mode, or too small; the
            message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty")
    try:
        with Image.open(path) as im:
            im.load()
            rgb = to_rgb(im, str(path))
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from exc
    if min_size is not None and min(rgb.size) < min_size:
        raise ValueError(f"{path}: image is {rgb.size[0]}x{rgb.size[1]} pixels, smaller than the tile size {min_size}")
    return rgb
