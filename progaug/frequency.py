"""Feature measuring by high-frequency amplitude, soft labels and adaptive depths (paper 2.3, eq. 6-9).

Pathological patterns live mostly in high frequencies; inversion towards noise first destroys them
and then fills the spectrum with noise, so the high-pass amplitude moves steadily from the source
image's value to the latent's, and eq. 9 turns it into a soft label in [0, 1].

This is the ``"paper"`` label measure; :mod:`progaug.labels` holds the others and picks one by name.
"""

from __future__ import annotations

import torch

from progaug.errors import check_int, check_levels

__all__ = [
    "DEFAULT_RADIUS",
    "adaptive_depths",
    "check_radius",
    "default_levels",
    "depth_for_label",
    "highpass_amplitude",
    "highpass_mask",
    "soft_labels",
    "to_grayscale",
]

DEFAULT_RADIUS = 0.125
"""High-pass cut-off as a fraction of the image side: frequencies closer than ``side / 8`` bins to DC
(stain and illumination gradients, tissue-scale layout) are removed; the cell-scale structure and the
added noise remain. At 64 px this removes ``|f| < 8`` bins, at 256 px ``|f| < 32``."""

_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as OpenCV's RGB -> gray used by the reference code


def to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """``(*, 3, H, W)`` RGB -> ``(*, H, W)`` luma (BT.601 weights)."""
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device)
    return torch.einsum("...chw,c->...hw", x, w)


def check_radius(name: str, radius: object) -> float:
    """Return ``radius`` as a float if it is a high-pass cut-off in [0, 0.5) (a fraction of the side).

    Raises:
        TypeError: Not a number.
        ValueError: Outside [0, 0.5) (NaN included).
    """
    try:
        value = float(radius)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be a number, got {type(radius).__name__} {radius!r}") from None
    if not 0.0 <= value < 0.5:
        raise ValueError(f"`{name}` must be in [0, 0.5) (a fraction of the image side), got {radius!r}")
    return value


def highpass_mask(height: int, width: int, radius: float = DEFAULT_RADIUS, device: torch.device | None = None) -> torch.Tensor:
    """The mask ``M_h`` of eq. 7 in unshifted FFT layout: True where ``|f| >= radius * min(H, W)`` bins.

    Raises:
        ValueError: ``radius`` not in [0, 0.5).
    """
    check_radius("radius", radius)
    fy = torch.fft.fftfreq(height, device=device) * height
    fx = torch.fft.fftfreq(width, device=device) * width
    dist = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    mask = dist >= float(radius) * min(height, width)
    mask[0, 0] = False  # DC never counts as high frequency
    return mask


def highpass_amplitude(x: torch.Tensor, radius: float = DEFAULT_RADIUS) -> torch.Tensor:
    """Mean high-pass FFT magnitude of each image (eq. 7-8), on ``x``'s device, in float32.

    ``A = mean over M_h of |FFT2(gray(x))|`` with an orthonormal FFT, so the value does not grow with
    the image size: white noise whose luma has variance ``v`` gives ``sqrt(pi v / 4)`` at any size (the
    Rayleigh mean), a flat image 0. For iid ``N(0, 1)`` RGB noise the BT.601 luma has
    ``v = 0.299^2 + 0.587^2 + 0.114^2 = 0.447``, so about 0.59; for the same unit noise in all three
    channels ``v = 1``, about 0.89. Runs with autocast disabled whatever the caller's context.

    Args:
        x: ``(*, 3, H, W)`` images (any range; the model range is [-1, 1]).
        radius: High-pass cut-off as a fraction of the side (see :data:`DEFAULT_RADIUS`).

    Returns:
        ``(*)`` float32 amplitudes.
    """
    if x.ndim < 3 or x.shape[-3] != 3:
        raise ValueError(f"`x` must have shape (*, 3, H, W), got {tuple(x.shape)}")
    mask = highpass_mask(x.shape[-2], x.shape[-1], radius, device=x.device)
    with torch.autocast(x.device.type, enabled=False):  # the luma einsum would run in bf16 under autocast
        gray = to_grayscale(x.detach().float())
        magnitude = torch.fft.fft2(gray, norm="ortho").abs()
        return magnitude[..., mask].mean(dim=-1)


def soft_labels(amplitudes: torch.Tensor) -> torch.Tensor:
    """Soft label of each point of an inversion trajectory (eq. 9), clipped to [0, 1].

    ``L_i = (A_src - A_i) / (A_src - A_latent)`` with ``A_src = amplitudes[..., 0]`` (the source image)
    and ``A_latent = amplitudes[..., -1]`` (the deepest point). The first point gets 0 and the last 1.
    Where ``A_src == A_latent`` (no measurable change), labels fall back to the depth fraction
    ``k / S``, as the reference code falls back to uniform depths.

    Args:
        amplitudes: ``(..., S + 1)`` amplitudes along the trajectory (states ``0..S``).

    Returns:
        ``(..., S + 1)`` float32 labels in [0, 1].
    """
    a = amplitudes.float()
    if a.shape[-1] < 2:
        raise ValueError(f"`amplitudes` needs at least 2 points on its last axis, got shape {tuple(a.shape)}")
    num = a[..., :1] - a
    den = a[..., :1] - a[..., -1:]
    degenerate = den.abs() <= 1e-6 * a[..., :1].abs().clamp_min(1e-12)
    fraction = torch.linspace(0, 1, a.shape[-1], device=a.device).expand_as(a)
    labels = torch.where(degenerate, fraction, num / torch.where(degenerate, torch.ones_like(den), den))
    labels = labels.clamp(0.0, 1.0)
    labels[..., 0], labels[..., -1] = 0.0, 1.0
    return labels


def default_levels(count: int = 10) -> torch.Tensor:
    """``count`` soft-label levels evenly spaced in (0, 1]: ``1/count, 2/count, ..., 1``.

    Raises:
        TypeError: ``count`` is not an int.
        ValueError: ``count`` < 1.
    """
    check_int("count", count, low=1)
    return torch.arange(1, count + 1, dtype=torch.float64) / count


def adaptive_depths(labels: torch.Tensor, levels: torch.Tensor | list[float]) -> torch.Tensor:
    """For each requested level, the depth whose measured label is nearest, strictly increasing.

    Greedy forward search as in the reference code's ``get_adaptive_list``: level ``j`` takes the
    depth in ``(d_{j-1}, S - (L - 1 - j)]`` whose label is nearest (the first on ties), so depths stay
    strictly increasing and every level gets one even where the curve is flat or not monotone. A level
    of exactly 1.0 always takes depth ``S``, the full translation, whatever the labels (the levels
    below it keep at most ``S - 1``).

    Args:
        labels: ``(B, S + 1)`` soft labels along each trajectory (:func:`soft_labels`).
        levels: ``(L,)`` or ``(B, L)`` levels in (0, 1], strictly increasing, ``L <= S``.

    Returns:
        ``(B, L)`` int64 depths in ``[1, S]``, strictly increasing along each row; ``S`` for level 1.0.
    """
    if labels.ndim != 2:
        raise ValueError(f"`labels` must have shape (B, S + 1), got {tuple(labels.shape)}")
    b, n = labels.shape
    s = n - 1
    lv = check_levels("levels", levels, max_count=s).to(labels.device, torch.float32)
    lv = lv.expand(b, -1) if lv.ndim == 1 else lv
    if lv.shape[0] != b:
        raise ValueError(f"`levels` has {lv.shape[0]} rows for {b} images")
    count = lv.shape[1]
    k = torch.arange(n, device=labels.device)
    prev = torch.zeros(b, dtype=torch.long, device=labels.device)
    depths = []
    for j in range(count):
        allowed = (k[None] > prev[:, None]) & (k[None] <= s - (count - 1 - j))
        cost = (labels.float() - lv[:, j : j + 1]).abs().masked_fill(~allowed, float("inf"))
        prev = cost.argmin(dim=1)
        depths.append(prev)
    depths[-1] = torch.where(lv[:, -1] == 1.0, torch.full_like(prev, s), prev)  # level 1.0: the full translation
    return torch.stack(depths, dim=1)


def depth_for_label(labels: torch.Tensor, label: float | torch.Tensor) -> torch.Tensor:
    """The inverse use of eq. 9: the first depth whose measured label is nearest ``label``.

    Args:
        labels: ``(B, S + 1)`` soft labels along each trajectory.
        label: A target in [0, 1], or ``(B,)`` targets.

    Returns:
        ``(B,)`` int64 depths in ``[0, S]``.
    """
    target = torch.as_tensor(label, dtype=torch.float32, device=labels.device)
    if not bool(((target >= 0) & (target <= 1)).all()):
        raise ValueError(f"`label` must lie in [0, 1], got {target.tolist()}")
    target = target.reshape(-1, 1) if target.ndim == 1 else target
    return (labels.float() - target).abs().argmin(dim=-1)
