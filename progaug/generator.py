"""The ADD core: progressive images between two domains with one inversion per source image.

For a batch of source images of class A:

1. invert each image once with the source model through all ``S`` states, keeping the trajectory
   (eq. 3 / 5);
2. measure every state and turn the values into soft labels with the chosen label measure
   (:mod:`progaug.labels`): ``"paper"`` is the high-pass amplitude of eq. 7-8 and the labels of eq. 9,
   batched on the device; ``"preview"`` asks the target model for a one-step preview of each state;
3. pick, per image, the depth nearest to each requested level (adaptive depth control);
4. decode every chosen state of every image with the target model, all branches sharing model calls
   (:func:`progaug.diffusion.sample_from_depths`).

U-Net evaluations per source image: ``S`` for the inversion, ``S`` more for the previews of the
``"preview"`` measure, plus ``sum(depths)`` for the decodes. Autocast (bf16) applies to the decodes
only: the inversion and the label measure run in float32, so the depths and soft labels are exactly
those of a float32 run and only the decoded pixels move (``docs/performance.md``, "Tolerances").
"""

from __future__ import annotations

import dataclasses

import torch

from progaug.config import DiffusionConfig
from progaug.diffusion import DDIMSchedule, EpsModel, ddim_move, invert, sample_from_depths
from progaug.errors import check_image_batch, check_int, check_levels
from progaug.frequency import DEFAULT_RADIUS, adaptive_depths, default_levels
from progaug.labels import (
    DEFAULT_MEASURE,
    check_measure,
    interpolate_grid,
    inversion_evaluations,
    labels_from_values,
    measure_states,
    preview_distance,
    preview_x0,
    sketch_grid,
    sketch_path,
)
from progaug.runtime import autocast

__all__ = ["ProgressiveResult", "fixed_batch_model", "generate_progressive"]


@dataclasses.dataclass(frozen=True)
class ProgressiveResult:
    """Output of :func:`generate_progressive` for ``B`` source images and ``L`` levels.

    Attributes:
        images: ``(B, L, 3, H, W)`` float32 progressive images in [-1, 1], least to most translated.
        soft_labels: ``(B, L)`` float32 soft labels actually reached (the labels at the chosen depths).
        depths: ``(B, L)`` int64 chosen depths in ``[1, S]``, strictly increasing per row.
        levels: ``(L,)`` or ``(B, L)`` float64 requested levels.
        amplitudes: ``(B, S + 1)`` float32 measured value of every state under ``measure``: the
            high-pass amplitude (eq. 8) for ``"paper"``, the band amplitude for ``"reference"``, the
            preview distance ``d(k)`` for ``"preview"``.
        trajectory_labels: ``(B, S + 1)`` float32 soft labels of every state.
        num_steps: ``S``.
        measure: The label measure (:data:`progaug.labels.MEASURES`).
    """

    images: torch.Tensor
    soft_labels: torch.Tensor
    depths: torch.Tensor
    levels: torch.Tensor
    amplitudes: torch.Tensor
    trajectory_labels: torch.Tensor
    num_steps: int
    measure: str = DEFAULT_MEASURE

    @property
    def model_evaluations(self) -> int:
        """U-Net evaluations spent: ``S`` per source image (``2 S`` with ``"preview"``: the inversion and
        the previews) plus the sum of all decode depths."""
        return inversion_evaluations(self.measure, self.num_steps) * self.images.shape[0] + int(self.depths.sum())


def _model_size(model: EpsModel) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "image_size", None)


def generate_progressive(
    source_model: EpsModel,
    target_model: EpsModel,
    images: torch.Tensor,
    *,
    levels: torch.Tensor | list[float] | None = None,
    steps: int | None = None,
    diffusion: DiffusionConfig | None = None,
    measure: str = DEFAULT_MEASURE,
    radius: float = DEFAULT_RADIUS,
    max_batch: int | None = None,
    fixed_batch: bool = False,
    autocast_dtype: torch.dtype | None = None,
    trajectory_device: torch.device | str | None = None,
) -> ProgressiveResult:
    """Generate progressive images from source-class images (the ADD method, paper 2.1-2.3).

    Args:
        source_model: Epsilon model of the source class (global-priority attention in ADD).
        target_model: Epsilon model of the target class (local-priority attention in ADD).
        images: ``(B, 3, H, W)`` float images of the source class in [-1, 1], at the models' size.
        levels: ``(L,)`` or ``(B, L)`` requested soft labels in (0, 1], strictly increasing;
            default 10 levels ``0.1, 0.2, ..., 1.0``. ``L <= steps``. Level 1.0 is always depth ``S``.
        steps: DDIM steps ``S`` (default ``diffusion.sampling_steps``).
        diffusion: Training schedule of the pair (default: linear, 1000 steps).
        measure: Label measure, one of :data:`progaug.labels.MEASURES` (default
            :data:`progaug.labels.DEFAULT_MEASURE`): ``"paper"`` (eq. 7-9), ``"reference"`` (the
            authors' code's band) or ``"preview"`` (``S`` more target-model calls per source image).
        radius: High-pass cut-off of the ``"paper"`` measure (fraction of the side).
        max_batch: Most images per U-Net call in the inversion, the previews and the decodes
            (default: all).
        fixed_batch: Pad every U-Net call to exactly ``max_batch`` rows, so that each image's result
            does not depend on which other images share its batch (bit-identical on CPU whatever the
            number of source images per call; used by ``progaug precompute``).
        autocast_dtype: Run the decoding U-Net calls under ``torch.autocast`` with this dtype (e.g.
            bfloat16, see :func:`progaug.runtime.autocast_dtype` for a ``bf16`` flag). The inversion and
            the label measure's model calls stay float32 (under bf16 they moved two depths in three with
            the ``"preview"`` measure, ``benchmarks/precision.py``), so depths and labels do not depend
            on it; the DDIM arithmetic stays in the
            images' dtype and the measures in float32.
        trajectory_device: Where to keep the ``S + 1`` inversion states (default: the images' device).

    Returns:
        A :class:`ProgressiveResult`.

    Raises:
        TypeError, ValueError: Bad images, levels, steps, measure or batch size (the message names which).
    """
    diffusion = diffusion or DiffusionConfig()
    steps = diffusion.sampling_steps if steps is None else steps
    schedule = DDIMSchedule.from_config(diffusion, steps)
    measure = check_measure("measure", measure)
    check_image_batch("images", images, size=_model_size(source_model))
    levels = check_levels("levels", default_levels() if levels is None else levels, max_count=schedule.num_steps)
    max_batch = check_int("max_batch", max_batch, allow_none=True)
    clip = diffusion.clip_denoised
    chunk = max_batch or images.shape[0]
    if fixed_batch:
        if max_batch is None:
            raise ValueError("`fixed_batch` needs `max_batch`, the fixed number of rows per U-Net call")
        source_model, target_model = fixed_batch_model(source_model, max_batch), fixed_batch_model(target_model, max_batch)

    states, values = [], []
    for x in images.split(chunk):  # float32 whatever the caller's autocast: depths and labels never move with it
        with autocast(images.device, None):
            traj = invert(source_model, x, schedule, clip=clip, return_trajectory=True)  # (S + 1, b, C, H, W)
            if measure == "preview":  # measured on the images' device, batched
                values.append(_preview_distances(target_model, traj, schedule, chunk))
            elif measure == "decoded":
                values.append(_sketch_distances(target_model, traj, schedule, chunk, clip))
            else:
                values.append(measure_states(measure, traj, radius=radius))
        states.append(traj.to(trajectory_device) if trajectory_device is not None else traj)
    trajectory = torch.cat(states, dim=1)
    measured = torch.cat(values).contiguous()  # (B, S + 1)
    labels = labels_from_values(measure, measured)
    depths = adaptive_depths(labels, levels)  # (B, L)
    b, n_levels = depths.shape
    rows = torch.arange(b, device=depths.device)[:, None].expand(b, n_levels)
    latents = trajectory[depths.flatten().to(trajectory.device), rows.flatten().to(trajectory.device)]
    del trajectory
    with autocast(images.device, autocast_dtype):
        decoded = sample_from_depths(
            target_model, latents.to(images.device), depths.flatten(), schedule, clip=clip, max_batch=max_batch
        )
    return ProgressiveResult(
        images=decoded.reshape(b, n_levels, *images.shape[1:]).float(),
        soft_labels=labels.gather(1, depths),
        depths=depths,
        levels=levels,
        amplitudes=measured,
        trajectory_labels=labels,
        num_steps=schedule.num_steps,
        measure=measure,
    )


@torch.no_grad()
def _preview_distances(
    target_model: EpsModel, trajectory: torch.Tensor, schedule: DDIMSchedule, chunk: int
) -> torch.Tensor:
    """The ``"preview"`` measure's ``d(k)`` for every state of ``(S + 1, b, 3, H, W)`` trajectories.

    States ``1..S`` of all ``b`` images go through the target model in calls of at most ``chunk`` rows
    (:func:`progaug.labels.preview_x0`, then :func:`progaug.labels.preview_distance` to the source);
    state 0 is the source itself, ``d(0) = 0``.

    Returns:
        ``(b, S + 1)`` float32 distances on the trajectory's device.
    """
    n, b = trajectory.shape[:2]
    noisy = trajectory[1:].flatten(0, 1)  # (S * b, C, H, W), state-major
    state = torch.arange(1, n).repeat_interleave(b)
    image = torch.arange(b).repeat(n - 1)
    distances = torch.zeros(b, n, dtype=torch.float32, device=trajectory.device)
    for idx in torch.arange(noisy.shape[0]).split(chunk):
        x, k = noisy[idx.to(noisy.device)], state[idx]
        t = schedule.timesteps[k].to(device=x.device, dtype=torch.long)
        eps = target_model(x, t)
        x0_hat = preview_x0(x, eps, schedule.alpha_bar[k])
        rows = image[idx].to(trajectory.device)
        distances[rows, k.to(trajectory.device)] = preview_distance(x0_hat, trajectory[0][rows])
    return distances


@torch.no_grad()
def _sketch_distances(
    target_model: EpsModel, trajectory: torch.Tensor, schedule: DDIMSchedule, chunk: int, clip: bool
) -> torch.Tensor:
    """The ``"decoded"`` measure's ``d(k)`` for every state of ``(S + 1, b, 3, H, W)`` trajectories.

    Each grid state (:func:`progaug.labels.sketch_grid`) of every image is decoded by the target model
    along :func:`progaug.labels.sketch_path` (DDIM moves between non-adjacent states of the schedule),
    in calls of at most ``chunk`` rows; its :func:`progaug.labels.preview_distance` to the source is
    interpolated to every state (:func:`progaug.labels.interpolate_grid`).

    Returns:
        ``(b, S + 1)`` float32 distances on the trajectory's device.
    """
    steps, b = trajectory.shape[0] - 1, trajectory.shape[1]
    grid = sketch_grid(steps)
    source = trajectory[0]
    at_grid = torch.zeros(b, len(grid), dtype=torch.float32, device=trajectory.device)
    for g, depth in enumerate(grid.tolist()):
        path = sketch_path(depth)
        for rows in torch.arange(b).split(chunk):
            x = trajectory[depth][rows.to(trajectory.device)]
            for k_from, k_to in zip(path, path[1:]):
                x = ddim_move(target_model, x, schedule, k_from, k_to, clip=clip)
            at_grid[rows.to(trajectory.device), g] = preview_distance(x, source[rows.to(source.device)])
    return interpolate_grid(grid, at_grid, steps)


def fixed_batch_model(model: EpsModel, size: int) -> EpsModel:
    """Wrap ``model`` so that it is always called with exactly ``size`` rows (the last call padded with
    copies of its first row), making each row's output independent of how rows are grouped."""

    def call(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        outs = []
        for xs, ts in zip(x.split(size), t.split(size)):
            n = xs.shape[0]
            if n < size:
                xs = torch.cat([xs, xs[:1].expand(size - n, *xs.shape[1:])])
                ts = torch.cat([ts, ts[:1].expand(size - n)])
            outs.append(model(xs, ts)[:n])
        return torch.cat(outs)

    call.config = getattr(model, "config", None)  # type: ignore[attr-defined]
    return call

