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
It is not a calibrated probability.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

__all__ = ["DEFAULT_MARGIN_TIMESTEPS", "denoising_margin"]

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

DEFAULT_MARGIN_TIMESTEPS = (600, 700, 800, 900)
"""Training timesteps of the margin (of 1000). High noise: there the margin followed the judge best on
a first look at 12 demo sources (docs/method.md)."""


@torch.no_grad()
def denoising_margin(source: EpsModel, target: EpsModel, alpha_bar: np.ndarray, images: torch.Tensor,
                     timesteps: Sequence[int] = DEFAULT_MARGIN_TIMESTEPS, *, seed: int = 0, max_batch: int = 128) -> torch.Tensor:
    """Mean squared noise-prediction error of ``source`` minus that of ``target``, on the same noise.

    Args:
        source: Epsilon model of class A, called as ``model(x_t (B, C, H, W), t (B,) int64)``.
        target: Epsilon model of class B.
        alpha_bar: Cumulative products of the training schedule ``(T,)`` (float64).
        images: ``(N, C, H, W)`` float images in ``[-1, 1]``, on the models' device.
        timesteps: Training timesteps in ``[0, T)``, each once.
        seed: Seeds the noise: one draw of ``(N, C, H, W)`` per timestep, the same whatever ``max_batch``.
        max_batch: Rows per model call.

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
        noise = torch.randn(images.shape, generator=gen).to(images.device)
        a = float(alpha_bar[t])
        for start in range(0, len(images), max_batch):
            x0, eps = images[start:start + max_batch].float(), noise[start:start + max_batch]
            x_t = a ** 0.5 * x0 + (1 - a) ** 0.5 * eps
            tt = torch.full((len(x0),), t, dtype=torch.long, device=images.device)
            err_a = (source(x_t, tt).float() - eps).pow(2).flatten(1).mean(1)
            err_b = (target(x_t, tt).float() - eps).pow(2).flatten(1).mean(1)
            total[start:start + max_batch] += (err_a - err_b).double().cpu()
    return (total / len(steps)).float()
