"""Diffusion math: the noise schedule and the deterministic DDIM moves (paper eq. 1-5)."""

from progaug.diffusion.ddim import EpsModel, bridge, ddim_move, ddim_step, decode_moves, invert, sample, sample_from_depths
from progaug.diffusion.schedule import DDIMSchedule, linear_betas, respaced_timesteps, training_alpha_bar

__all__ = [
    "DDIMSchedule",
    "EpsModel",
    "bridge",
    "ddim_move",
    "ddim_step",
    "decode_moves",
    "invert",
    "linear_betas",
    "respaced_timesteps",
    "sample",
    "sample_from_depths",
    "training_alpha_bar",
]
