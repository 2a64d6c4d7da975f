"""Adding generated images by per-draw replacement: every draw of a real image becomes a draw of a
generated one with probability ``p``.

This is how published diffusion-augmentation protocols add synthetic images (Diff-Mix, CVPR 2024:
``p = 0.1`` with epochs counted over the real set; DA-Fusion, ICLR 2024: ``p = 0.5``): an epoch still
visits every real image's slot once, so a real tile is seen as often whatever the number of generated
images, which never crowd the real ones out. Used by
:meth:`progaug.SoftLabelProgressiveDataset.from_cache` (``replace_prob``), the timm plugin and the
evaluation protocol.
"""

from __future__ import annotations

import math

import torch

__all__ = ["DEFAULT_REPLACE_PROB", "check_probability", "replace_draws", "replacement_index"]

DEFAULT_REPLACE_PROB = 0.3
"""The replacement probability of :meth:`progaug.SoftLabelProgressiveDataset.from_cache` and the timm plugin
when real samples are given. Chosen from the evaluation protocol (docs/benchmarks.md, small CNN, 10
seeds): concatenating the generated images lowered accuracy beyond the seed interval (-10.3 points at
100 tiles per class, -5.5 with all tiles), replacement at the validation-picked ``p`` never did; the
validation split picked 0.3 in 10 of the 16 (measure, N) cells of the ADD-Pro arms (0.1 in the others),
and no ``p`` made ADD images help the CNN. On the paper's ViT at 100 tiles per class, 0.3 helps on the test
block (+3.0 points on 60 seeds) where the 0.1 that validation picked there does not (+0.7; docs/benchmarks.md,
session 32), but not measurably on the validation block with the held-out roles exchanged (+0.6 [-2.0, +3.2],
session 33). ``None`` still concatenates."""


def check_probability(name: str, p: float) -> float:
    """``p`` as a float in ``[0, 1]``.

    Raises:
        TypeError: ``p`` is not a real number.
        ValueError: ``p`` is outside ``[0, 1]`` or not finite.
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"`{name}` must be a number in [0, 1], got {type(p).__name__} {p!r}")
    if not math.isfinite(p) or not 0 <= p <= 1:
        raise ValueError(f"`{name}` must lie in [0, 1], got {p}")
    return float(p)


def replace_draws(real: torch.Tensor, num_generated: int, p: float, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace each real draw of a batch by a uniformly drawn generated one with probability ``p``.

    Args:
        real: ``(B,)`` int64 indices of real images (one batch of an epoch over the real set).
        num_generated: Size of the generated set (0: nothing is replaced).
        p: Replacement probability in ``[0, 1]``.
        generator: Source of the draws (CPU).

    Returns:
        ``(replaced, index)``: ``(B,)`` bool, True where the draw became a generated image, and ``(B,)``
        int64: the real index where False, the generated index where True.
    """
    p = check_probability("p", p)
    replaced = torch.rand(real.shape, generator=generator) < p if num_generated > 0 else torch.zeros(real.shape, dtype=torch.bool)
    pick = torch.randint(0, max(1, num_generated), real.shape, generator=generator)
    return replaced, torch.where(replaced, pick, real)


def replacement_index(index: int, num_generated: int, p: float, seed: int, epoch: int) -> int | None:
    """The generated image that replaces real draw ``index`` in ``epoch``, or None to keep the real one.

    The draw depends only on ``(seed, epoch, index)`` (no shared generator), so DataLoader workers draw
    independently and a rerun draws the same (see PITFALLS: generators copied into workers repeat).
    """
    gen = torch.Generator().manual_seed(hash((int(seed), int(epoch), int(index), 0x5E1EC7)) & 0x7FFF_FFFF_FFFF)
    if num_generated <= 0 or float(torch.rand((), generator=gen)) >= p:
        return None
    return int(torch.randint(0, num_generated, (), generator=gen))
