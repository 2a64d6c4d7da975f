"""Open any image file as RGB, or refuse it with a message that names the file."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["IMAGE_SUFFIXES", "load_rgb", "to_rgb"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def to_rgb(image: Image.Image, name: str = "image") -> Image.Image:
    """Convert a PIL image of any common mode to 8-bit RGB.

    Transparency is composited on white (slide background). 16- and 32-bit grey images (``I;16``,
    ``I``, ``F``) are rescaled from their own min..max to 0..255; a constant one, which has no range of
    its own, from its type's range (see :func:`_type_range`).

    Raises:
        ValueError: A mode that has no sensible RGB reading, or a constant image outside its type's
            range; the message names ``name``.
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
        if hi <= lo:  # constant: no range of its own
            lo, hi = _type_range(mode, lo, name)
        scaled = (arr - lo) / (hi - lo) * 255.0
        return Image.fromarray(scaled.round().astype(np.uint8), mode="L").convert("RGB")
    raise ValueError(f"{name}: image mode {mode!r} cannot be converted to RGB")


def _type_range(mode: str, value: float, name: str) -> tuple[float, float]:
    """The nominal range of a constant 16/32-bit grey image of ``value``: 0..65535 for ``I;16``; the
    smallest of 0..1 (floats only), 0..255 and 0..65535 that holds ``value`` for ``I`` and ``F`` (which
    PIL also fills from 8-bit images).

    Raises:
        ValueError: ``value`` is outside 0..65535 (NaN included); the message names ``name``.
    """
    tops = (65535.0,) if mode.startswith("I;16") else ((1.0,) if mode == "F" else ()) + (255.0, 65535.0)
    for top in tops:
        if 0 <= value <= top:
            return 0.0, top
    raise ValueError(f"{name}: a constant {mode} image (every pixel {value:g}) outside 0..65535 has no brightness "
                     f"to convert to RGB")


def _file_size(path: Path) -> int:
    """Size of a regular file, with errors that say what is wrong with the path.

    Raises:
        FileNotFoundError: Nothing there, or a symbolic link to nothing.
        ValueError: A symbolic link loop, a folder or another non-file.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        broken = " (a broken symbolic link)" if path.is_symlink() else ""
        raise FileNotFoundError(f"image not found: {path}{broken}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError(f"{path}: a symbolic link loop, not an image") from None
        raise
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{path}: not a regular file")
    return info.st_size


def load_rgb(path: str | os.PathLike[str], *, min_size: int | None = None) -> Image.Image:
    """Open an image file as RGB, fully decoded.

    Args:
        path: Image file.
        min_size: Refuse images whose shorter side is below this many pixels.

    Raises:
        FileNotFoundError: ``path`` does not exist (or is a broken link).
        ValueError: A link loop or folder, too large to decode safely, empty, corrupt, unreadable, of an unconvertible mode, or too small; the
            message names the file.
    """
    path = Path(path)
    size = _file_size(path)
    if size == 0:
        raise ValueError(f"{path}: the file is empty")
    try:
        with Image.open(path) as im:
            im.load()
            rgb = to_rgb(im, str(path))
    except Image.DecompressionBombError as exc:
        raise ValueError(
            f"{path}: too large to open safely ({exc}); cut it into smaller images first, or raise "
            f"PIL.Image.MAX_IMAGE_PIXELS if you trust the file"
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from exc
    if min_size is not None and min(rgb.size) < min_size:
        raise ValueError(f"{path}: image is {rgb.size[0]}x{rgb.size[1]} pixels, smaller than the tile size {min_size}")
    return rgb
