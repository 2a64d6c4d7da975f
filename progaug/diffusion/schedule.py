"""Noise schedules in float64 (paper eq. 1) and their respacing to ``S`` DDIM steps.

Notation (paper -> code):

- ``alpha_t`` in eq. 1-2 is the *cumulative* product of ``1 - beta``: ``alpha_bar`` here.
- A respaced schedule has ``S + 1`` states ``k = 0..S``. State 0 is the clean image
  (``alpha_bar = 1``); state ``k >= 1`` sits at training timestep ``timesteps[k]``.
  Depth ``i`` of the paper (``i = t / T``) is ``k / S``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from progaug.config import DiffusionConfig

__all__ = ["DDIMSchedule", "linear_betas", "respaced_timesteps", "training_alpha_bar"]


def linear_betas(num_train_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """Linear beta schedule of DDPM / guided-diffusion, in float64.

    The end points are given for 1000 steps and scaled by ``1000 / num_train_steps`` so that other
    step counts keep the same total noise.

    Returns:
        ``(num_train_steps,)`` float64 array of betas in (0, 1).
    """
    scale = 1000.0 / num_train_steps
    return np.linspace(scale * beta_start, scale * beta_end, num_train_steps, dtype=np.float64)


def training_alpha_bar(config: DiffusionConfig | None = None) -> np.ndarray:
    """Cumulative ``alpha_bar_t = prod_{s<=t} (1 - beta_s)`` of the training schedule (eq. 1).

    Returns:
        ``(T,)`` float64 array, strictly decreasing in (0, 1).
    """
    config = config or DiffusionConfig()
    return np.cumprod(1.0 - linear_betas(config.num_train_steps, config.beta_start, config.beta_end))


def respaced_timesteps(num_train_steps: int, steps: int) -> np.ndarray:
    """Training timesteps of the ``steps`` noisy states of a respaced schedule.

    State ``k`` (1-based) sits at ``floor(k * T / S) - 1``, so the last state is always ``T - 1``
    and ``S = T`` gives every timestep ``0..T-1``.

    Returns:
        ``(steps,)`` int64 array, strictly increasing.

    Raises:
        TypeError: ``steps`` is not an int.
        ValueError: ``steps`` is not in ``[1, num_train_steps]``.
    """
    _check_state("steps", steps, 1, num_train_steps)
    k = np.arange(1, steps + 1, dtype=np.int64)
    return k * num_train_steps // steps - 1


@dataclasses.dataclass(frozen=True)
class DDIMSchedule:
    """A respaced DDIM schedule: ``S + 1`` states from the clean image (0) to the latent (S).

    Attributes:
        timesteps: ``(S + 1,)`` int64; the training timestep the model sees at each state. State 0
            (the clean image) is shown to the model as timestep 0.
        alpha_bar: ``(S + 1,)`` float64; cumulative signal fraction, ``alpha_bar[0] = 1``,
            strictly decreasing.
    """

    timesteps: torch.Tensor
    alpha_bar: torch.Tensor

    @classmethod
    def from_config(cls, config: DiffusionConfig | None = None, steps: int | None = None) -> DDIMSchedule:
        """Build the schedule of ``config`` respaced to ``steps`` (default ``config.sampling_steps``)."""
        config = config or DiffusionConfig()
        steps = config.sampling_steps if steps is None else steps
        alpha_bar_train = training_alpha_bar(config)
        ts = respaced_timesteps(config.num_train_steps, steps)
        timesteps = np.concatenate([[0], ts])
        alpha_bar = np.concatenate([[1.0], alpha_bar_train[ts]])
        return cls(torch.from_numpy(timesteps), torch.from_numpy(alpha_bar))

    @property
    def num_steps(self) -> int:
        """``S``, the number of DDIM moves from the clean image to the latent."""
        return int(self.timesteps.numel()) - 1

    def check_depth(self, name: str, depth: int) -> int:
        """Return ``depth`` as an int after checking that it is a state of this schedule.

        Raises:
            TypeError: ``depth`` is not an int.
            ValueError: ``depth`` is not in ``[0, S]``.
        """
        return _check_state(name, depth, 0, self.num_steps)


def _check_state(name: str, value: object, low: int, high: int) -> int:
    """``value`` as an int if it is an int (numpy's too, not a bool) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int in [{low}, {high}], got {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise ValueError(f"`{name}` must be an int in [{low}, {high}], got {value!r}")
    return int(value)
