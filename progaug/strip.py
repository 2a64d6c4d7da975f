"""A picture like the paper's Fig. 1: each source tile followed by its progressive images and labels."""

from __future__ import annotations

import io
import os

import torch

from progaug.fileio import atomic_write_bytes
from progaug.data.tiles import to_uint8

__all__ = ["progressive_strip"]


def progressive_strip(
    sources: torch.Tensor,
    images: torch.Tensor,
    soft_labels: torch.Tensor,
    path: str | os.PathLike[str],
    *,
    classes: tuple[str, str] = ("A", "B"),
    scale: int = 2,
) -> None:
    """Write a PNG: one row per source, the source tile then its ``L`` progressive images, with the
    soft label reached printed above each image.

    Args:
        sources: ``(B, 3, S, S)`` source tiles in [-1, 1].
        images: ``(B, L, 3, S, S)`` their progressive images in [-1, 1].
        soft_labels: ``(B, L)`` the soft labels reached.
        path: Output PNG (written atomically).
        classes: ``(source class, target class)`` for the header.
        scale: Pixel upscaling for legibility.
    """
    from PIL import Image, ImageDraw

    b, n_levels = soft_labels.shape
    size = sources.shape[-1] * scale
    pad, label_h = 4, 14
    width = (n_levels + 1) * (size + pad) + pad
    height = label_h + b * (size + label_h + pad) + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 1), f"source ({classes[0]}) -> progressive images towards {classes[1]}; soft label = share of {classes[1]}", fill=(0, 0, 0))

    def to_pil(x: torch.Tensor) -> Image.Image:
        arr = to_uint8(x).permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(arr).resize((size, size), Image.NEAREST)

    for row in range(b):
        top = label_h + row * (size + label_h + pad) + label_h
        draw.text((pad, top - label_h + 1), "L=0 (src)", fill=(0, 0, 0))
        canvas.paste(to_pil(sources[row]), (pad, top))
        for j in range(n_levels):
            left = pad + (j + 1) * (size + pad)
            draw.text((left, top - label_h + 1), f"L={float(soft_labels[row, j]):.2f}", fill=(0, 0, 0))
            canvas.paste(to_pil(images[row, j]), (left, top))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
