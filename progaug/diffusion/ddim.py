"""Deterministic DDIM moves in both directions, and the two-model bridge (paper eq. 2-5).

The model is always an argument: any callable ``model(x, t) -> eps`` with ``x`` of shape
``(B, C, H, W)`` and ``t`` a ``(B,)`` int64 tensor of training timesteps.

Notation (paper -> code): ``alpha_t`` -> ``alpha_bar``; ``eps_theta(x_t)`` -> ``eps``;
the predicted clean image ``(x_t - sqrt(1 - alpha_t) eps) / sqrt(alpha_t)`` -> ``x0``.
``invert`` moves towards noise (state ``k`` to ``k + 1``, eq. 3 integrated forward); ``sample`` moves
towards the image (``k`` to ``k - 1``, eq. 2 with ``sigma_t = 0``). Both call :func:`ddim_step`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from progaug.diffusion.schedule import DDIMSchedule
from progaug.errors import check_int

__all__ = ["EpsModel", "bridge", "ddim_move", "ddim_step", "decode_moves", "invert", "sample", "sample_from_depths"]

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ddim_step(
    model: EpsModel,
    x: torch.Tensor,
    *,
    timestep: int,
    alpha_bar_from: float,
    alpha_bar_to: float,
    clip: bool = True,
) -> torch.Tensor:
    """One deterministic DDIM move from noise level ``alpha_bar_from`` to ``alpha_bar_to``.

    Serves both directions: ``alpha_bar_to < alpha_bar_from`` inverts (adds noise along the ODE of
    eq. 3), ``alpha_bar_to > alpha_bar_from`` denoises (eq. 2 with ``sigma_t = 0``):

    1. ``eps = model(x, t)``
    2. ``x0 = (x - sqrt(1 - alpha_bar_from) * eps) / sqrt(alpha_bar_from)``; if ``clip``, clamp
       ``x0`` to [-1, 1] and recompute ``eps`` from it, so both directions see the same x0.
    3. ``x_to = sqrt(alpha_bar_to) * x0 + sqrt(1 - alpha_bar_to) * eps``

    Args:
        model: Epsilon model ``(B, C, H, W), (B,) -> (B, C, H, W)``.
        x: ``(B, C, H, W)`` float tensor at noise level ``alpha_bar_from``.
        timestep: Training timestep shown to the model.
        alpha_bar_from: Cumulative signal fraction of ``x``, in (0, 1]. At 1 (the clean image),
            ``x0 = x`` and the model's ``eps`` is used as is.
        alpha_bar_to: Cumulative signal fraction of the result, in [0, 1].
        clip: Clamp the predicted ``x0`` to the image range [-1, 1].

    Returns:
        ``(B, C, H, W)`` tensor of ``x``'s dtype at noise level ``alpha_bar_to``.
    """
    t = torch.full((x.shape[0],), int(timestep), dtype=torch.long, device=x.device)
    eps = model(x, t).to(x.dtype)
    a_from, a_to = float(alpha_bar_from), float(alpha_bar_to)
    noise_from = math.sqrt(max(1.0 - a_from, 0.0))
    if noise_from == 0.0:  # the clean image: x is x0
        x0 = x.clamp(-1.0, 1.0) if clip else x
    else:
        x0 = (x - noise_from * eps) / math.sqrt(a_from)
        if clip:
            x0 = x0.clamp(-1.0, 1.0)
            eps = (x - math.sqrt(a_from) * x0) / noise_from
    return math.sqrt(a_to) * x0 + math.sqrt(max(1.0 - a_to, 0.0)) * eps


@torch.no_grad()
def invert(
    model: EpsModel,
    x0: torch.Tensor,
    schedule: DDIMSchedule,
    *,
    depth: int | None = None,
    clip: bool = True,
    return_trajectory: bool = False,
    trajectory_device: torch.device | str | None = None,
) -> torch.Tensor:
    """DDIM inversion ``x0 -> x_depth`` (towards noise), the forward ODE of eq. 3 / eq. 5.

    Args:
        model: Epsilon model of the image's domain (the source model in ADD).
        x0: ``(B, C, H, W)`` float images in [-1, 1].
        schedule: Respaced schedule with ``S`` steps.
        depth: Last state, ``0..S`` (default ``S``, the latent).
        clip: Clamp the predicted x0 in every step (use the same value as for :func:`sample`).
        return_trajectory: Return every state ``0..depth`` instead of the last one.
        trajectory_device: Where to keep the trajectory (default: ``x0``'s device).

    Returns:
        ``(B, C, H, W)`` state ``depth``, or ``(depth + 1, B, C, H, W)`` states ``0..depth`` with
        ``[0]`` equal to ``x0``.
    """
    depth = schedule.num_steps if depth is None else schedule.check_depth("depth", depth)
    x = x0
    states = None
    if return_trajectory:  # filled in place: one copy of the trajectory in memory, not a list and its stack
        states = torch.empty((depth + 1, *x0.shape), dtype=x0.dtype, device=trajectory_device or x0.device)
        states[0] = x0
    for k in range(depth):
        x = ddim_move(model, x, schedule, k, k + 1, clip=clip)
        if states is not None:
            states[k + 1] = x
    return states if states is not None else x


@torch.no_grad()
def sample(
    model: EpsModel,
    x: torch.Tensor,
    schedule: DDIMSchedule,
    *,
    start: int | None = None,
    clip: bool = True,
    stride: int = 1,
    fine: int = 0,
) -> torch.Tensor:
    """Deterministic DDIM sampling ``x_start -> x0`` (towards the image), eq. 2 with ``sigma_t = 0``.

    Args:
        model: Epsilon model of the domain to decode into (the target model in ADD).
        x: ``(B, C, H, W)`` float tensor at state ``start``.
        schedule: Respaced schedule with ``S`` steps.
        start: State of ``x``, ``0..S`` (default ``S``: pure-noise latent). ``0`` returns ``x``.
        clip: Clamp the predicted x0 in every step.
        stride: States per move after the first, as in :func:`sample_from_depths` (``1``: every state;
            ``s``: to the multiple of ``s`` below ``start``, then ``s`` states per move, ``ceil(start / s)``
            model calls).
        fine: States ``1..fine`` are decoded one per move whatever ``stride`` (:func:`sample_from_depths`).

    Returns:
        ``(B, C, H, W)`` images, in [-1, 1] when ``clip``.
    """
    start = schedule.num_steps if start is None else schedule.check_depth("start", start)
    check_int("stride", stride)
    check_int("fine", fine, low=0)
    k = start
    while k > 0:
        below = _state_below(k, stride, fine)
        x = ddim_move(model, x, schedule, k, below, clip=clip)
        k = below
    return x


def _state_below(k: int, stride: int, fine: int = 0) -> int:
    """The state a decode at stride ``stride`` moves to from state ``k >= 1``: ``stride * floor((k - 1) / stride)``
    (``k - 1`` at stride 1), but never below ``fine``, and ``k - 1`` from states ``k <= fine``."""
    return k - 1 if k <= fine else max(fine, stride * ((k - 1) // stride))


def decode_moves(depth: int, stride: int = 1, fine: int = 0) -> int:
    """Model calls of a decode ``depth -> 0`` at ``stride`` with the last ``fine`` states one per move
    (:func:`sample_from_depths`): ``ceil(depth / stride)`` when ``fine = 0``, ``depth`` when ``stride = 1``."""
    moves, k = 0, int(depth)
    while k > 0:
        k, moves = _state_below(k, stride, fine), moves + 1
    return moves


def ddim_move(model: EpsModel, x: torch.Tensor, schedule: DDIMSchedule, k_from: int, k_to: int, *, clip: bool = True) -> torch.Tensor:
    """:func:`ddim_step` from state ``k_from`` to state ``k_to`` of ``schedule`` (any two states: ``k + 1``
    inverts, ``k - 1`` denoises, non-adjacent states take a strided move), with the model shown the
    timestep of ``k_from``."""
    return ddim_step(
        model,
        x,
        timestep=int(schedule.timesteps[k_from]),
        alpha_bar_from=float(schedule.alpha_bar[k_from]),
        alpha_bar_to=float(schedule.alpha_bar[k_to]),
        clip=clip,
    )


@torch.no_grad()
def sample_from_depths(
    model: EpsModel,
    latents: torch.Tensor,
    depths: torch.Tensor,
    schedule: DDIMSchedule,
    *,
    clip: bool = True,
    max_batch: int | None = None,
    stride: int = 1,
    fine: int = 0,
) -> torch.Tensor:
    """Decode many latents that sit at different depths, sharing model calls across them.

    All rows at state ``k`` make their move ``k -> k'`` together, in chunks of at most ``max_batch``
    rows, so the number of model calls is about ``max(depths) / stride`` times the number of chunks
    instead of one call per row and step. With ``stride = 1`` each row gets exactly the moves
    :func:`sample` would give it (``k' = k - 1``). With ``stride = s > 1`` a row at depth ``d`` first moves
    to the multiple of ``s`` below it, then ``s`` states per move (``k' = s * floor((k - 1) / s)``: 37 -> 36
    -> 34 -> ... -> 0 at ``s = 2``), ``ceil(d / s)`` model calls: DDIM's strided sampling on the same
    schedule, cheaper and not the same image.

    Args:
        model: Epsilon model of the domain to decode into.
        latents: ``(N, C, H, W)``; row ``n`` is at state ``depths[n]``.
        depths: ``(N,)`` ints in ``[0, S]``.
        schedule: Respaced schedule with ``S`` steps.
        clip: Clamp the predicted x0 in every step.
        max_batch: Largest number of rows per model call (default: all).
        stride: States per move after the first (>= 1).
        fine: The last ``fine`` states (``fine .. 1``) are decoded one per move whatever ``stride``: a row above
            ``fine`` moves at ``stride`` down to ``fine`` at most (``50 -> 48 -> ... -> 12 -> 10 -> 9 -> ... -> 0`` at
            ``stride = 2, fine = 10``), so the coarse moves fall where the state is mostly noise and the last,
            detail-forming moves are the exact ones (:func:`decode_moves` counts the calls). 0: none.

    Returns:
        ``(N, C, H, W)`` decoded images.
    """
    depths = torch.as_tensor(depths, dtype=torch.long).cpu()
    if depths.shape != latents.shape[:1]:
        raise ValueError(f"`depths` must have shape ({latents.shape[0]},), got {tuple(depths.shape)}")
    if depths.numel() and (int(depths.min()) < 0 or int(depths.max()) > schedule.num_steps):
        raise ValueError(f"`depths` must lie in [0, {schedule.num_steps}], got {depths.tolist()}")
    check_int("max_batch", max_batch, allow_none=True)
    check_int("stride", stride)
    check_int("fine", fine, low=0)
    x = latents.clone()
    state = depths.clone()
    top = int(depths.max()) if depths.numel() else 0
    for k in range(top, 0, -1):
        active = torch.nonzero(state == k).flatten()
        if not active.numel():
            continue
        below = _state_below(k, stride, fine)
        chunk = max_batch or active.numel()
        for rows in active.to(x.device).split(chunk):
            x[rows] = ddim_move(model, x[rows], schedule, k, below, clip=clip)
        state[active] = below
    return x


@torch.no_grad()
def bridge(
    source_model: EpsModel,
    target_model: EpsModel,
    x0: torch.Tensor,
    schedule: DDIMSchedule,
    *,
    depth: int | None = None,
    clip: bool = True,
    stride: int = 1,
    fine: int = 0,
) -> torch.Tensor:
    """Translate images of domain A towards domain B through a shared latent (eq. 4-5).

    ``x_A -> invert with source_model to state depth -> sample with target_model to 0``.
    Depth 0 returns a copy of the source; depth ``S`` is the full translation of eq. 4.

    Args:
        source_model: Epsilon model of domain A.
        target_model: Epsilon model of domain B.
        x0: ``(B, C, H, W)`` images of domain A in [-1, 1].
        schedule: Respaced schedule with ``S`` steps.
        depth: Bridge depth ``0..S`` (default ``S``).
        clip: Clamp the predicted x0 in every step of both directions.
        stride: Decode stride of the target model (:func:`sample`); the inversion keeps every state.
        fine: States decoded one per move whatever ``stride`` (:func:`sample_from_depths`).

    Returns:
        ``(B, C, H, W)`` images.
    """
    depth = schedule.num_steps if depth is None else schedule.check_depth("depth", depth)
    check_int("stride", stride)
    check_int("fine", fine, low=0)
    latent = invert(source_model, x0, schedule, depth=depth, clip=clip)
    return sample(target_model, latent.clone(), schedule, start=depth, clip=clip, stride=stride, fine=fine)
