"""Which way do a set of tiles' textures run? The cue that flips and rotations take away.

Tiles cut from one slide can share a direction (stroma fibres running one way across the whole slide). A
classifier trained without flips and rotations may then read the direction instead of the tissue, and beat
training with flips on held-out blocks of the same slide, while a slide scanned the other way round would not offer
the cue. ``benchmarks/orientation.py`` prints these figures per split and class; the evaluation report prints them
beside its sanity check "flips/rotations vs none" (docs/data.md).

Per tile, the structure tensor of the grey image, summed over the interior pixels with central differences,
``J = sum [[gx^2, gx gy], [gx gy, gy^2]]``, is read as one complex number
``z = ((Jxx - Jyy) + 2i Jxy) / (Jxx + Jyy)``: ``|z|`` is the tile's coherence in [0, 1] (0: no direction,
1: parallel stripes) and ``arg z`` twice the angle of its dominant gradient (the fibres run across it). Doubling
the angle makes a direction and its opposite the same; averaging ``z`` over tiles gives the set's orientation
bias ``|mean z|`` in [0, 1], 0 when the tiles' directions cancel, as they do under random flips and rotations.
"""

from __future__ import annotations

import math

import torch

__all__ = ["orientation_summary", "summarise_orientations", "tile_orientation"]


def tile_orientation(images: torch.Tensor) -> torch.Tensor:
    """Each tile's orientation as ``coherence * exp(2i * gradient angle)``.

    Args:
        images: ``(M, C, H, W)`` tiles in any real range (uint8 is read as float), H and W >= 3.

    Returns:
        ``(M,)`` complex64; modulus in [0, 1], 0 for a flat tile. Angles are counter-clockwise from the image's
        x axis (to the right) with y pointing *up* (decreasing row index), so turning a tile counter-clockwise
        adds to its angle.

    Raises:
        ValueError: ``images`` is not 4-D with sides of at least 3 pixels.
    """
    if images.dim() != 4 or min(images.shape[-2:]) < 3:
        raise ValueError(f"images must be (M, C, H, W) with H, W >= 3, got shape {tuple(images.shape)}")
    grey = images.float().mean(1)
    gx = grey[:, 1:-1, 2:] - grey[:, 1:-1, :-2]
    gy = grey[:, :-2, 1:-1] - grey[:, 2:, 1:-1]  # y up: the row above minus the row below
    jxx, jyy, jxy = (gx * gx).sum((1, 2)), (gy * gy).sum((1, 2)), (gx * gy).sum((1, 2))
    energy = (jxx + jyy).clamp_min(1e-12)
    return torch.complex((jxx - jyy) / energy, 2 * jxy / energy)


def orientation_summary(images: torch.Tensor) -> dict:
    """The orientation of a set of tiles.

    Args:
        images: ``(M, C, H, W)`` tiles, M >= 1 (see :func:`tile_orientation`).

    Returns:
        ``{"tiles": M, "bias": |mean z| in [0, 1], "angle": the mean gradient angle in degrees, (-90, 90],
        "coherence": mean |z| in [0, 1]}``.

    Raises:
        ValueError: No tiles, or tiles of the wrong shape.
    """
    if len(images) == 0:
        raise ValueError("images holds no tiles")
    return summarise_orientations(tile_orientation(images))


def summarise_orientations(z: torch.Tensor) -> dict:
    """:func:`orientation_summary` of tiles whose :func:`tile_orientation` ``z`` (``(M,)`` complex, M >= 1) is known."""
    mean = z.mean()
    angle = math.degrees(math.atan2(float(mean.imag), float(mean.real))) / 2  # atan2 in (-180, 180]
    return {"tiles": len(z), "bias": float(mean.abs()), "angle": angle, "coherence": float(z.abs().mean())}
