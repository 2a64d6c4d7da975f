"""Label measures: what turns an inversion trajectory into soft labels, selected by name.

Each state ``k = 0..S`` of a DDIM inversion gets a measured value ``m(k)``, and the values become soft
labels in [0, 1] with ``L(0) = 0`` and ``L(S) = 1`` (paper eq. 6). Three measures:

``"paper"``
    Eq. 7-9 as progaug has always computed them: the high-pass FFT amplitude of each noisy state
    (:func:`progaug.frequency.highpass_amplitude`), labels by eq. 9
    (:func:`progaug.frequency.soft_labels`). The added noise dominates the amplitude, so the labels
    are nearly a function of the noise level.
``"reference"``
    The authors' code's measure: the mean centred-FFT magnitude over bins ``1..10`` right of DC on the
    centre row (:func:`band_amplitude`), then eq. 9.
``"preview"``
    What the decoded image would show: the target model's one-step ``x0`` prediction of every state
    (:func:`preview_x0`, the model call is the generator's), its blurred RMS distance to the blurred
    source (:func:`preview_distance`) and running-max labels (:func:`preview_labels`). Costs ``S``
    extra target-model evaluations per source image.
``"decoded"``
    What the decoded images show, read on a coarse grid: the states at :data:`SKETCH_POINTS` evenly
    spaced depths ``g_1 < ... < g_G = S`` are each decoded by the target model in
    :data:`SKETCH_STEPS` strided DDIM moves (:func:`sketch_path`), their blurred RMS distance to the
    source is measured (:func:`preview_distance`), interpolated linearly in depth with ``d(0) = 0``
    (:func:`interpolate_grid`) and turned into running-max labels (:func:`preview_labels`). Unlike the
    one-step preview, a few-step decode of a deep state is an image of the target class, not a blurred
    class mean, so ``d(S)`` is close to the real full translation's distance. Costs
    ``SKETCH_POINTS * SKETCH_STEPS`` extra target-model evaluations per source image once
    ``S >= 3 * SKETCH_POINTS`` (fewer below: a shallow grid state takes fewer moves;
    :func:`inversion_evaluations` counts them).

All maths here runs in float32 with autocast disabled, whatever context the caller is in.
"""

from __future__ import annotations

import typing
from typing import Literal

import torch

from progaug.diffusion import decode_moves
from progaug.errors import check_int
from progaug.frequency import DEFAULT_RADIUS, highpass_amplitude, soft_labels, to_grayscale

__all__ = [
    "DEFAULT_MEASURE",
    "LEGACY_MEASURE",
    "MEASURE_HELP",
    "MEASURES",
    "Measure",
    "band_amplitude",
    "check_measure",
    "decode_evaluations",
    "gaussian_blur",
    "inversion_evaluations",
    "labels_from_values",
    "measure_states",
    "preview_distance",
    "preview_labels",
    "preview_x0",
    "SKETCH_POINTS",
    "SKETCH_STEPS",
    "interpolate_grid",
    "sketch_grid",
    "sketch_path",
]

Measure = Literal["paper", "reference", "preview", "decoded"]
MEASURES: tuple[str, ...] = typing.get_args(Measure)

DEFAULT_MEASURE: Measure = "preview"
"""The measure used when none is given: the one place this default lives. ``"preview"``, on the
evidence of ``benchmarks/label_fidelity.py`` and ``benchmarks/downstream.py`` (``docs/method.md``, "Which
measure is the default"); ``"paper"`` reproduces the paper's eq. 7-9 at less than half the cost."""

MEASURE_HELP = ("Label measure: paper (eq. 7-9 on the noisy states), reference (the authors' code's FFT band), "
                "preview (the target model's one-step preview of each state: fewest high labels on images the judge of "
                "benchmarks/label_fidelity.py still calls the source class; about 2.2x the U-Net calls of paper at 50 steps) "
                "or decoded (3-move decodes of 10 grid states: closest to that judge's ranking, 1.9x paper's calls)")
"""The command-line help of every ``--measure`` flag (``progaug precompute`` and ``progaug progressive``)."""

LEGACY_MEASURE: Measure = "paper"
"""The measure of everything made before the setting existed (a cache whose ``run.json`` or
``labels.csv`` has no ``measure``). Unlike :data:`DEFAULT_MEASURE` this never changes."""

REFERENCE_BAND = 10
"""Bins right of DC on the centre row averaged by the ``"reference"`` measure (the authors' code)."""

SKETCH_POINTS, SKETCH_STEPS = 10, 3
"""The ``"decoded"`` measure's grid: 10 depths (every ``S / 10`` states), each decoded in 3 DDIM moves."""

BLUR_SIGMA, BLUR_TAPS = 1.0, 5
"""The ``"preview"`` measure's Gaussian blur: 5 taps, sigma 1 px, reflect padding (drops DDIM grain)."""


def check_measure(name: str, value: object) -> str:
    """Return ``value`` if it names a label measure.

    Raises:
        TypeError: Not a string.
        ValueError: Not one of :data:`MEASURES` (the message lists them).
    """
    if not isinstance(value, str):
        raise TypeError(f"`{name}` must be a str, one of {', '.join(map(repr, MEASURES))}; got {type(value).__name__} {value!r}")
    if value not in MEASURES:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, MEASURES))}; got {value!r}")
    return value


def _float32(x: torch.Tensor) -> torch.Tensor:
    return x.detach().float()


def band_amplitude(x: torch.Tensor, band: int = REFERENCE_BAND) -> torch.Tensor:
    """The ``"reference"`` measure: mean centred FFT magnitude over the centre row's bins ``1..band``
    right of DC, as the authors' code measures (grayscale BT.601, ``fftshift(fft2(norm="ortho"))``).

    Only horizontal frequencies ``f_x = 1..band`` at ``f_y = 0`` count; on an image too narrow for the
    band (``W // 2 + band > W - 1``: under 21 px at ``band = 10``) it stops at the image edge.

    Args:
        x: ``(*, 3, H, W)`` images.
        band: Bins right of DC, ``>= 1``.

    Returns:
        ``(*)`` float32 amplitudes.

    Raises:
        ValueError: Wrong shape, or the image has no bin right of DC (``W < 2``).
    """
    if x.ndim < 3 or x.shape[-3] != 3:
        raise ValueError(f"`x` must have shape (*, 3, H, W), got {tuple(x.shape)}")
    height, width = x.shape[-2:]
    centre_y, centre_x = height // 2, width // 2
    last = min(centre_x + band, width - 1)
    if last <= centre_x:
        raise ValueError(f"`x` is {width} px wide: no frequency bin right of DC to measure")
    with torch.autocast(x.device.type, enabled=False):
        spectrum = torch.fft.fftshift(torch.fft.fft2(to_grayscale(_float32(x)), norm="ortho"), dim=(-2, -1))
        return spectrum[..., centre_y, centre_x + 1 : last + 1].abs().mean(dim=-1)


def gaussian_blur(x: torch.Tensor, sigma: float = BLUR_SIGMA, taps: int = BLUR_TAPS) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)`` float32 images with reflect padding."""
    half = taps // 2
    offsets = torch.arange(-half, half + 1, dtype=torch.float32, device=x.device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    n, c, h, w = x.shape
    y = x.reshape(n * c, 1, h, w)
    y = torch.nn.functional.conv2d(torch.nn.functional.pad(y, (half, half, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    y = torch.nn.functional.conv2d(torch.nn.functional.pad(y, (0, 0, half, half), mode="reflect"), kernel.view(1, 1, -1, 1))
    return y.reshape(n, c, h, w)


def preview_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """One-step prediction of the clean image, ``(x_t - sqrt(1 - a) eps) / sqrt(a)``, clipped to [-1, 1].

    Args:
        x_t: ``(N, C, H, W)`` noisy states.
        eps: ``(N, C, H, W)`` the target model's noise prediction for them (any float dtype).
        alpha_bar: ``(N,)`` cumulative signal fraction of each state, in (0, 1].

    Returns:
        ``(N, C, H, W)`` float32 predictions.
    """
    with torch.autocast(x_t.device.type, enabled=False):
        a = alpha_bar.to(device=x_t.device, dtype=torch.float32).view(-1, 1, 1, 1)
        return ((_float32(x_t) - torch.sqrt(1 - a) * _float32(eps)) / torch.sqrt(a)).clamp(-1.0, 1.0)


def preview_distance(x0_hat: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """``d = RMS over pixels and channels of blur(x0_hat) - blur(source)`` (see :func:`gaussian_blur`).

    Args:
        x0_hat: ``(N, 3, H, W)`` predicted clean images.
        source: ``(N, 3, H, W)`` the source image of each row.

    Returns:
        ``(N,)`` float32 distances.
    """
    with torch.autocast(x0_hat.device.type, enabled=False):
        diff = gaussian_blur(_float32(x0_hat)) - gaussian_blur(_float32(source))
        return diff.square().mean(dim=(1, 2, 3)).sqrt()


def preview_labels(distances: torch.Tensor) -> torch.Tensor:
    """``"preview"`` labels: ``L(k) = max_{j <= k} d(j) / d(S)``, clipped to [0, 1], non-decreasing.

    ``L(0) = 0`` and ``L(S) = 1``; where ``d(S) = 0`` (the target model sees nothing to change) the
    labels fall back to the depth fraction ``k / S``, as :func:`progaug.frequency.soft_labels` does.

    Args:
        distances: ``(..., S + 1)`` distances along the trajectory, ``d(0) = 0`` for the source.

    Returns:
        ``(..., S + 1)`` float32 labels.
    """
    d = _float32(distances)
    if d.shape[-1] < 2:
        raise ValueError(f"`distances` needs at least 2 points on its last axis, got shape {tuple(d.shape)}")
    top = d[..., -1:]
    degenerate = top <= 0
    fraction = torch.linspace(0, 1, d.shape[-1], device=d.device).expand_as(d)
    ratio = d.cummax(dim=-1).values / torch.where(degenerate, torch.ones_like(top), top)
    labels = torch.where(degenerate, fraction, ratio).clamp(0.0, 1.0)
    labels[..., 0], labels[..., -1] = 0.0, 1.0
    return labels


def sketch_grid(steps: int, points: int = SKETCH_POINTS) -> torch.Tensor:
    """The ``"decoded"`` measure's grid: ``min(points, steps)`` distinct depths spread evenly over
    ``1..steps``, the last one ``steps``.

    Returns:
        ``(G,)`` int64 depths, strictly increasing.
    """
    if steps < 1 or points < 1:
        raise ValueError(f"`steps` and `points` must be >= 1, got {steps} and {points}")
    count = min(points, steps)
    return torch.unique(torch.round(torch.linspace(steps / count, steps, count, dtype=torch.float64)).long())


def sketch_path(depth: int, moves: int = SKETCH_STEPS) -> list[int]:
    """States a sketch decode of state ``depth`` visits: ``depth``, then ``moves`` strided DDIM moves
    down to 0 (``round(depth * (moves - j) / moves)``, repeats dropped; fewer moves when ``depth <
    moves``)."""
    if depth < 1 or moves < 1:
        raise ValueError(f"`depth` and `moves` must be >= 1, got {depth} and {moves}")
    path = [round(depth * (moves - j) / moves) for j in range(moves + 1)]
    return sorted(set(path), reverse=True)


def interpolate_grid(grid: torch.Tensor, values: torch.Tensor, steps: int) -> torch.Tensor:
    """Values at every state ``0..steps`` from values at the grid depths, linear in depth, with value 0
    at state 0 (the source's distance to itself).

    Args:
        grid: ``(G,)`` strictly increasing depths in ``1..steps``, the last one ``steps``.
        values: ``(B, G)`` values at those depths.
        steps: ``S``.

    Returns:
        ``(B, S + 1)`` float32 values; exact at the grid depths.
    """
    grid = torch.as_tensor(grid, dtype=torch.long).cpu()
    if grid.ndim != 1 or int(grid[-1]) != steps or bool((grid.diff() <= 0).any()) or int(grid[0]) < 1:
        raise ValueError(f"`grid` must rise strictly from >= 1 to steps = {steps}, got {grid.tolist()}")
    v = _float32(values)
    knots = torch.cat([torch.zeros(1, dtype=torch.long), grid]).to(v.device)
    known = torch.cat([torch.zeros_like(v[:, :1]), v], dim=1)  # (B, G + 1)
    k = torch.arange(steps + 1, device=v.device)
    right = torch.searchsorted(knots, k, right=False).clamp(1, len(knots) - 1)
    left = right - 1
    w = ((k - knots[left]) / (knots[right] - knots[left]).float()).clamp(0, 1)
    return known[:, left] * (1 - w) + known[:, right] * w


def measure_states(measure: str, trajectory: torch.Tensor, *, radius: float = DEFAULT_RADIUS) -> torch.Tensor:
    """The measured value of every state of ``(S + 1, B, 3, H, W)`` trajectories, for the measures
    that need no model (``"paper"``: eq. 7-8; ``"reference"``: :func:`band_amplitude`).

    Returns:
        ``(B, S + 1)`` float32 values, computed on the trajectory's device with autocast disabled.

    Raises:
        ValueError: An unknown measure, or ``"preview"`` / ``"decoded"`` (they need the target model:
            the generator computes them).
    """
    measure = check_measure("measure", measure)
    with torch.autocast(trajectory.device.type, enabled=False):
        if measure == "paper":
            return highpass_amplitude(trajectory, radius).T.contiguous()
        if measure == "reference":
            return band_amplitude(trajectory).T.contiguous()
    raise ValueError(f"`measure` {measure!r} needs the target model: use progaug.generator.generate_progressive")


def inversion_evaluations(measure: str, steps: int) -> int:
    """U-Net evaluations per source image before any decode: the ``steps``-step inversion, plus ``steps``
    target-model previews for ``"preview"`` or the sketch decodes of ``"decoded"``. A progressive image
    set costs this per source plus the sum of its decode depths."""
    measure = check_measure("measure", measure)
    if measure == "preview":
        return 2 * steps
    if measure == "decoded":
        return steps + sum(len(sketch_path(int(g))) - 1 for g in sketch_grid(steps))
    return steps


def decode_evaluations(depths: torch.Tensor | list[int], stride: int = 1, fine: int = 0) -> int:
    """Target-model evaluations of decoding progressive images from ``depths`` (any shape of ints >= 0) at
    decode stride ``stride`` with the last ``fine`` states one per move: ``ceil(depth / stride)`` each when
    ``fine = 0`` (:func:`progaug.diffusion.sample_from_depths`, :func:`progaug.diffusion.decode_moves`)."""
    stride, fine = check_int("stride", stride), check_int("fine", fine, low=0)
    counts = torch.bincount(torch.as_tensor(depths, dtype=torch.long).flatten())
    return sum(int(c) * decode_moves(d, stride, fine) for d, c in enumerate(counts.tolist()) if c)


def labels_from_values(measure: str, values: torch.Tensor) -> torch.Tensor:
    """Soft labels ``(B, S + 1)`` from the measured values ``(B, S + 1)`` of ``measure``: eq. 9 for
    ``"paper"`` and ``"reference"``, :func:`preview_labels` for ``"preview"`` and ``"decoded"``."""
    measure = check_measure("measure", measure)
    with torch.autocast(values.device.type, enabled=False):
        return preview_labels(values) if measure in ("preview", "decoded") else soft_labels(values)

