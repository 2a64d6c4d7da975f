"""HED stain jitter: the colour augmentation pathology practitioners use first (the stain arms of the evaluation protocol).

The recipe is Tellez et al.'s "HED-light" (Tellez et al., "Whole-slide mitosis detection in H&E breast
histology using PHH3 as a reference to train distilled stain-invariant convolutional networks", IEEE TMI
2018; compared with other colour augmentations in Tellez et al., Medical Image Analysis 2019): each image's
RGB is turned into optical densities, unmixed into haematoxylin, eosin and DAB concentrations with
Ruifrok & Johnston's stain vectors, each concentration is scaled by ``alpha ~ U[1 - sigma, 1 + sigma]`` and
shifted by ``beta ~ U[-sigma, sigma]`` (one draw per image and stain), and the result is mixed back to RGB.
``sigma = 0.05`` is "HED-light"; written here in torch so that the seed of a run reaches every draw.
"""

from __future__ import annotations

import torch

from progaug.errors import check_number

__all__ = ["HED_FROM_RGB", "RGB_FROM_HED", "hed_jitter", "hed_to_rgb", "rgb_to_hed"]

RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29],   # haematoxylin
                             [0.07, 0.99, 0.11],   # eosin
                             [0.27, 0.57, 0.78]],  # DAB
                            dtype=torch.float64)
"""Optical density of each stain per RGB channel (Ruifrok & Johnston, Anal. Quant. Cytol. Histol. 2001);
one row per stain."""
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)
_FLOOR = 1e-6  # lowest intensity before the logarithm: optical densities stay finite for black pixels


def rgb_to_hed(rgb: torch.Tensor) -> torch.Tensor:
    """Stain concentrations of RGB images.

    Args:
        rgb: ``(N, 3, H, W)`` float images in [0, 1].

    Returns:
        ``(N, 3, H, W)`` haematoxylin, eosin and DAB concentrations (optical-density units; not clipped,
        so that :func:`hed_to_rgb` inverts it exactly).
    """
    od = -torch.log(rgb.clamp_min(_FLOOR))
    return torch.einsum("nchw,cs->nshw", od, HED_FROM_RGB.to(rgb))


def hed_to_rgb(hed: torch.Tensor) -> torch.Tensor:
    """RGB images in [0, 1] of ``(N, 3, H, W)`` stain concentrations (inverse of :func:`rgb_to_hed`)."""
    od = torch.einsum("nshw,sc->nchw", hed, RGB_FROM_HED.to(hed))
    return torch.exp(-od).clamp(0.0, 1.0)


def hed_jitter(rgb: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Randomly re-stain a batch: per image and stain, ``c -> alpha * c + beta`` in HED space.

    Args:
        rgb: ``(N, 3, H, W)`` float images in [0, 1].
        sigma: Jitter strength, ``>= 0`` (0.05 = HED-light, 0.2 = HED-strong; 0 returns the images).
        generator: Source of the ``alpha`` / ``beta`` draws (CPU generator).

    Returns:
        ``(N, 3, H, W)`` float images in [0, 1], same dtype and device.

    Raises:
        TypeError: ``sigma`` is not a number.
        ValueError: ``sigma`` is negative or not finite.
    """
    check_number("sigma", sigma, low=0)
    if sigma == 0:
        return rgb
    n = rgb.shape[0]
    alpha = 1 + (2 * torch.rand(n, 3, 1, 1, generator=generator, dtype=torch.float64) - 1) * sigma
    beta = (2 * torch.rand(n, 3, 1, 1, generator=generator, dtype=torch.float64) - 1) * sigma
    hed = rgb_to_hed(rgb.double())
    return hed_to_rgb(hed * alpha.to(rgb.device) + beta.to(rgb.device)).to(rgb.dtype)
