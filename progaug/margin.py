"""The pair as a two-class classifier: which of its two models denoises an image better.

A diffusion model of class ``c`` predicts the noise of a noised image of its own class better than a
model of another class does; comparing the two models' errors on the *same* noise is a zero-shot
classifier (Li et al., "Your Diffusion Model is Secretly a Zero-Shot Classifier", ICCV 2023; Clark &
Jaini, NeurIPS 2023). For an image ``x0`` in ``[-1, 1]`` and a training timestep ``t``,

    x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps,   margin_t(x0) = mean (eps_A(x_t, t) - eps)^2 - mean (eps_B(x_t, t) - eps)^2

(means over pixels and channels); the *denoising margin* is the mean of ``margin_t`` over the given
timesteps. It is > 0 where the target model B explains the image better, < 0 where the source model A
does. It reads the decoded image itself, not the inversion path, which is why the label issue measures
it against the judge (``benchmarks/denoising_margin.py``, docs/method.md "The pair's denoising margin").
It is not a probability: :class:`MarginCalibration` (Platt scaling, ``p(B) = sigmoid(slope * margin +
intercept)``) maps it to one, fitted with :func:`fit_margin_calibration` on real tiles of both classes that
the pair never saw (its margin separates its own training tiles far better than new ones).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from progaug.config import JsonConfig, setting
from progaug.diffusion.schedule import training_alpha_bar
from progaug.fileio import atomic_write_bytes, parse_format_json

__all__ = ["CALIBRATION_FILE", "CALIBRATION_FORMAT", "DEFAULT_MARGIN_TIMESTEPS", "MarginCalibration", "denoising_margin",
           "fit_margin_calibration", "fit_pair_calibration", "margin_auc", "margin_labels", "pair_margin", "parse_calibration", "read_calibration", "weights_sha256",
           "write_calibration"]

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

DEFAULT_MARGIN_TIMESTEPS = (600, 700, 800, 900)
"""Training timesteps of the margin (of 1000). High noise: there the margin followed the judge best on
a first look at 12 demo sources (docs/method.md)."""


@torch.no_grad()
def denoising_margin(source: EpsModel, target: EpsModel, alpha_bar: np.ndarray, images: torch.Tensor,
                     timesteps: Sequence[int] = DEFAULT_MARGIN_TIMESTEPS, *, seed: int = 0, max_batch: int = 128,
                     shared_noise: bool = False) -> torch.Tensor:
    """Mean squared noise-prediction error of ``source`` minus that of ``target``, on the same noise.

    Args:
        source: Epsilon model of class A, called as ``model(x_t (B, C, H, W), t (B,) int64)``.
        target: Epsilon model of class B.
        alpha_bar: Cumulative products of the training schedule ``(T,)`` (float64).
        images: ``(N, C, H, W)`` float images in ``[-1, 1]``, on the models' device.
        timesteps: Training timesteps in ``[0, T)``, each once.
        seed: Seeds the noise: one draw of ``(N, C, H, W)`` per timestep, the same whatever ``max_batch``.
        max_batch: Rows per model call.
        shared_noise: One draw of ``(1, C, H, W)`` per timestep for every image instead, so that an image's
            margin does not depend on the other images of the call or its place among them (the labels of
            :func:`margin_labels`).

    Returns:
        ``(N,)`` float32 on the CPU: > 0 where ``target`` denoises the image better.

    Raises:
        ValueError: Empty or repeated ``timesteps``, a timestep outside the schedule, images not 4-D, or
            ``max_batch < 1``.
    """
    steps = [int(t) for t in timesteps]
    if not steps or len(set(steps)) != len(steps):
        raise ValueError(f"`timesteps` must hold at least one timestep, each once, got {tuple(timesteps)}")
    if any(not 0 <= t < len(alpha_bar) for t in steps):
        raise ValueError(f"`timesteps` must lie in [0, {len(alpha_bar)}), got {tuple(timesteps)}")
    if images.ndim != 4:
        raise ValueError(f"`images` must be (N, C, H, W), got shape {tuple(images.shape)}")
    if max_batch < 1:
        raise ValueError(f"`max_batch` must be >= 1, got {max_batch}")
    gen = torch.Generator().manual_seed(seed)
    total = torch.zeros(len(images), dtype=torch.float64)
    for t in steps:
        noise = torch.randn((1, *images.shape[1:]) if shared_noise else images.shape, generator=gen).to(images.device)
        noise = noise.expand(images.shape)
        a = float(alpha_bar[t])
        for start in range(0, len(images), max_batch):
            x0, eps = images[start:start + max_batch].float(), noise[start:start + max_batch]
            x_t = a ** 0.5 * x0 + (1 - a) ** 0.5 * eps
            tt = torch.full((len(x0),), t, dtype=torch.long, device=images.device)
            err_a = (source(x_t, tt).float() - eps).pow(2).flatten(1).mean(1)
            err_b = (target(x_t, tt).float() - eps).pow(2).flatten(1).mean(1)
            total[start:start + max_batch] += (err_a - err_b).double().cpu()
    return (total / len(steps)).float()


def margin_auc(negative: torch.Tensor, positive: torch.Tensor) -> float:
    """P(a positive's margin is above a negative's), ties counted half: how well the margin tells B from A."""
    diff = torch.as_tensor(positive).double()[None, :] - torch.as_tensor(negative).double()[:, None]
    return float((diff > 0).double().mean() + 0.5 * (diff == 0).double().mean())


CALIBRATION_FORMAT = "progaug.margin_calibration/1"
CALIBRATION_FILE = "margin_calibration.json"
"""Name of a pair's calibration beside its ``card.json``."""


@dataclasses.dataclass(frozen=True)
class MarginCalibration(JsonConfig):
    """Platt scaling of the denoising margin: ``p(B) = sigmoid(slope * margin + intercept)``.

    Attributes: see each field's help text. ``timesteps`` and ``seed`` are part of the calibration: the
    margin of other timesteps or noise is on another scale.
    """

    slope: float = setting(1.0, "multiplies the margin (> 0: a larger margin means more of class B)")
    intercept: float = setting(0.0, "added before the sigmoid; the margin where p(B) = 0.5 is -intercept / slope")
    timesteps: tuple[int, ...] = setting(DEFAULT_MARGIN_TIMESTEPS, "training timesteps of the margin")
    seed: int = setting(0, "seed of the margin's noise")
    tiles: tuple[int, int] = setting((0, 0), "real tiles of class A and of class B it was fitted on")
    auc: float | None = setting(None, "the margin's AUC for A vs B on those tiles")
    fitted_on: str = setting("", "which tiles (they must be tiles the pair never saw)")
    weights_sha256: tuple[str, str] | None = setting(None, "sha256 of the source and target weights it was fitted with "
                                                           "(None: not recorded, as in calibrations made before session 21)")

    def __post_init__(self) -> None:
        if self.weights_sha256 is not None:
            shas = tuple(self.weights_sha256)
            if len(shas) != 2 or not all(isinstance(h, str) and len(h) == 64 for h in shas):
                raise ValueError(f"`weights_sha256` must be two sha256 hex strings (source, target), got {self.weights_sha256!r}")
            object.__setattr__(self, "weights_sha256", shas)
        if not (math.isfinite(self.slope) and self.slope > 0):
            raise ValueError(f"`slope` must be a finite number > 0 (the margin grows towards class B), got {self.slope}")
        if not math.isfinite(self.intercept):
            raise ValueError(f"`intercept` must be finite, got {self.intercept}")
        if not self.timesteps or len(set(self.timesteps)) != len(self.timesteps):
            raise ValueError(f"`timesteps` must hold at least one timestep, each once, got {tuple(self.timesteps)}")

    def identity(self) -> dict:
        """:meth:`to_dict` without ``weights_sha256``: what decides the labels, for cache keys and run settings (the
        weights are keyed apart, and a calibration that only gained the record of its weights stays the same)."""
        return {k: v for k, v in self.to_dict().items() if k != "weights_sha256"}

    @property
    def evaluations_per_image(self) -> int:
        """U-Net evaluations :func:`margin_labels` spends per image: both models at each timestep."""
        return 2 * len(self.timesteps)

    def probability(self, margins: torch.Tensor) -> torch.Tensor:
        """``(N,)`` margins to ``(N,)`` float32 p(B) in ``(0, 1)``."""
        return torch.sigmoid(self.slope * margins.double() + self.intercept).float()


def fit_margin_calibration(margins_a: torch.Tensor, margins_b: torch.Tensor, *, timesteps: Sequence[int] = DEFAULT_MARGIN_TIMESTEPS,
                           seed: int = 0, fitted_on: str = "", iterations: int = 100) -> MarginCalibration:
    """Fit :class:`MarginCalibration` to the margins of real tiles of class A and class B.

    Platt's method (1999): logistic regression of the class on the margin by Newton's method in float64,
    with Platt's smoothed targets ``1 / (n_A + 2)`` and ``(n_B + 1) / (n_B + 2)`` so that a few tiles
    cannot give probabilities of exactly 0 or 1. The two classes weigh the same whatever their tile
    counts, so p(B) is the probability under equal priors (a validation split with twice as many B
    tiles would otherwise lift every label), and p = 0.5 where the margin says neither.

    Args:
        margins_a: ``(n_A,)`` margins of class-A tiles (from :func:`denoising_margin`).
        margins_b: ``(n_B,)`` margins of class-B tiles, same timesteps and seed.
        timesteps: The timesteps the margins were taken at (recorded).
        seed: Their noise seed (recorded).
        fitted_on: Which tiles (recorded).
        iterations: Most Newton steps.

    Returns:
        The calibration, with the tile counts and the margin's AUC on them.

    Raises:
        ValueError: A class with no tiles, non-finite margins, margins that do not vary, or margins
            that do not rise towards class B (AUC <= 0.5: the fitted slope would not be > 0).
    """
    a, b = (torch.as_tensor(m, dtype=torch.float64).flatten() for m in (margins_a, margins_b))
    for name, m in (("margins_a", a), ("margins_b", b)):
        if not len(m):
            raise ValueError(f"`{name}` is empty: the calibration needs real tiles of both classes")
        if not torch.isfinite(m).all():
            raise ValueError(f"`{name}` holds non-finite margins")
    x = torch.cat([a, b])
    scale = float(x.std())
    if scale == 0.0:
        raise ValueError(f"the margins do not vary (all {float(x[0]):.4g}): nothing to fit")
    auc = margin_auc(a, b)
    if auc <= 0.5:
        raise ValueError(f"the margin does not rise towards class B on these tiles (AUC {auc:.3f}): the pair does not tell them apart")
    y = torch.cat([torch.full_like(a, 1 / (len(a) + 2)), torch.full_like(b, (len(b) + 1) / (len(b) + 2))])
    z = x / scale  # Newton on a standardised margin, then back
    w = torch.zeros(2, dtype=torch.float64)
    design = torch.stack([z, torch.ones_like(z)], 1)
    weight = torch.cat([torch.full_like(a, 0.5 / len(a)), torch.full_like(b, 0.5 / len(b))])
    for _ in range(iterations):
        p = torch.sigmoid(design @ w)
        grad = design.T @ (weight * (p - y))
        hess = design.T @ (design * (weight * p * (1 - p))[:, None]) + 1e-12 * torch.eye(2, dtype=torch.float64)
        step = torch.linalg.solve(hess, grad)
        w -= step
        if float(step.abs().max()) < 1e-10:
            break
    return MarginCalibration(slope=float(w[0]) / scale, intercept=float(w[1]), timesteps=tuple(int(t) for t in timesteps), seed=int(seed),
                             tiles=(len(a), len(b)), auc=auc, fitted_on=fitted_on)


def write_calibration(folder: str | os.PathLike[str], calibration: MarginCalibration) -> Path:
    """Write ``margin_calibration.json`` into a pair folder (atomically) and return its path."""
    path = Path(folder) / CALIBRATION_FILE
    body = {"format": CALIBRATION_FORMAT, **calibration.to_dict()}
    atomic_write_bytes(path, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode())
    return path


def read_calibration(folder: str | os.PathLike[str]) -> MarginCalibration | None:
    """The pair folder's :class:`MarginCalibration`, or None when it has none.

    Raises:
        ValueError: The file is not JSON, not a calibration, or holds bad values; the message names it.
    """
    path = Path(folder) / CALIBRATION_FILE
    return parse_calibration(path.read_bytes(), str(path)) if path.is_file() else None


def parse_calibration(body: bytes, where: str) -> MarginCalibration:
    """A :class:`MarginCalibration` from the bytes of a ``margin_calibration.json`` that came from ``where``.

    Raises:
        ValueError: Not JSON, not a calibration, or bad values; the message names ``where``.
    """
    data = parse_format_json(body, where, CALIBRATION_FORMAT, "margin calibration")
    data.pop("format")
    try:
        return MarginCalibration.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from exc


def margin_labels(source: EpsModel, target: EpsModel, alpha_bar: np.ndarray, images: torch.Tensor, calibration: MarginCalibration, *,
                  max_batch: int = 128) -> torch.Tensor:
    """Calibrated soft labels p(B) of images, read from the images themselves by the pair's margin.

    Costs :attr:`MarginCalibration.evaluations_per_image` (``2 * len(calibration.timesteps)``) U-Net evaluations per image. Every image sees the same
    noise (``shared_noise``), so its label does not depend on the other images it is labelled with.

    Args:
        source: Epsilon model of class A.
        target: Epsilon model of class B.
        alpha_bar: Their training schedule's cumulative products ``(T,)`` (float64).
        images: ``(N, C, H, W)`` float images in ``[-1, 1]`` on the models' device.
        calibration: Fitted on real tiles the pair never saw (:func:`fit_margin_calibration`).
        max_batch: Rows per model call.

    Returns:
        ``(N,)`` float32 on the CPU in ``(0, 1)``.
    """
    margins = denoising_margin(source, target, alpha_bar, images, calibration.timesteps, seed=calibration.seed, max_batch=max_batch,
                               shared_noise=True)
    return calibration.probability(margins)


def pair_margin(pair, images: torch.Tensor, *, timesteps: Sequence[int] = DEFAULT_MARGIN_TIMESTEPS, seed: int = 0,
                max_batch: int = 128) -> torch.Tensor:
    """:func:`denoising_margin` of a :class:`progaug.pair.Pair` with shared noise, as :func:`margin_labels` reads
    images: ``(N, C, H, W)`` float images in ``[-1, 1]`` on the pair's device to ``(N,)`` float32 margins."""
    return denoising_margin(pair.source, pair.target, training_alpha_bar(pair.diffusion), images, timesteps, seed=seed,
                            max_batch=max_batch, shared_noise=True)


def fit_pair_calibration(pair, images_a: torch.Tensor, images_b: torch.Tensor, *, timesteps: Sequence[int] = DEFAULT_MARGIN_TIMESTEPS,
                         seed: int = 0, max_batch: int = 128, fitted_on: str = "") -> MarginCalibration:
    """Fit a pair's margin calibration on real tiles of its two classes that it never saw.

    Args:
        pair: A :class:`progaug.pair.Pair` (source model of class A, target model of class B).
        images_a: ``(n_A, C, H, W)`` float tiles of class A in ``[-1, 1]`` on the pair's device.
        images_b: ``(n_B, C, H, W)`` float tiles of class B, likewise.
        timesteps, seed: Of the margin (shared noise, as :func:`margin_labels` reads it).
        max_batch: Rows per model call.
        fitted_on: Which tiles (recorded).

    Raises:
        ValueError: See :func:`fit_margin_calibration`.
    """
    a, b = (pair_margin(pair, x, timesteps=timesteps, seed=seed, max_batch=max_batch) for x in (images_a, images_b))
    calibration = fit_margin_calibration(a, b, timesteps=timesteps, seed=seed, fitted_on=fitted_on)
    return dataclasses.replace(calibration, weights_sha256=weights_sha256(pair))


def weights_sha256(pair) -> tuple[str, str] | None:
    """The sha256 of a :class:`progaug.pair.Pair`'s source and target weights as its card records them (None
    when the card lacks one)."""
    shas = tuple((pair.card.get(role) or {}).get("sha256") for role in ("source", "target"))
    return shas if all(isinstance(h, str) and len(h) == 64 for h in shas) else None
