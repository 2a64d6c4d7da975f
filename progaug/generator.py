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

The settings (steps, measure, radius, rows per call, precision, device) travel together as one frozen
:class:`GenerationConfig`, checked once when it is made; :class:`ProgressiveGenerator` holds a pair and
one config and is what the transform, ``progaug precompute``, ``progaug progressive`` and the benchmarks
call. :func:`generate_progressive` is the algorithm itself, on two epsilon models.

U-Net evaluations per source image: ``S`` for the inversion, ``S`` more for the previews of the
``"preview"`` measure, plus ``sum(depths)`` for the decodes. Autocast (bf16) applies to the decodes
only: the inversion and the label measure run in float32, so the depths and soft labels are exactly
those of a float32 run and only the decoded pixels move (``docs/performance.md``, "Tolerances").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from progaug.config import DiffusionConfig, JsonConfig, setting
from progaug.diffusion import DDIMSchedule, EpsModel, ddim_move, invert, sample_from_depths
from progaug.diffusion.schedule import training_alpha_bar
from progaug.errors import check_image_batch, check_int, check_levels, device_setting
from progaug.frequency import DEFAULT_RADIUS, adaptive_depths, check_radius, default_levels
from progaug.labels import (
    DEFAULT_MEASURE,
    MEASURE_HELP,
    MEASURES,
    Measure,
    check_measure,
    decode_evaluations,
    interpolate_grid,
    inversion_evaluations,
    labels_from_values,
    measure_states,
    preview_distance,
    preview_x0,
    sketch_grid,
    sketch_path,
)
from progaug.margin import MarginCalibration, margin_labels
from progaug.runtime import RuntimeConfig, auto_max_batch, autocast, autocast_dtype, check_bf16, prepare_model, resolve_bf16

if TYPE_CHECKING:
    from progaug.pair import Pair

__all__ = ["LABEL_SOURCES", "GenerationConfig", "ProgressiveGenerator", "ProgressiveResult", "Variant", "fixed_batch_model",
           "generate_progressive", "margin_calibration_for", "parse_schedule", "parse_variant"]


DECODE_STRIDE_HELP = ("States per DDIM move of the decodes: 1 = every state (the paper); s > 1 decodes a depth-d state in "
                      "ceil(d / s) moves (cheaper, other images, same labels)")
"""The command-line help of every ``--decode-stride`` flag (``progaug precompute`` and ``progaug progressive``)."""
DECODE_FINE_HELP = ("The last F states before the image decoded one per move whatever --decode-stride (0: none): "
                    "--decode-stride 2 --decode-fine 10 decodes depth 50 in 30 moves (docs/performance.md: how close to stride 1)")
"""The command-line help of every ``--decode-fine`` flag."""


class Variant(NamedTuple):
    """A generation variant: label measure and decode schedule (:func:`parse_variant`)."""

    measure: str
    decode_stride: int = 1
    decode_fine: int = 0

    @property
    def name(self) -> str:
        """The variant as :func:`parse_variant` reads it: ``"preview"``, ``"preview/2"``, ``"preview/2:10"``."""
        if self.decode_fine:
            return f"{self.measure}/{self.decode_stride}:{self.decode_fine}"
        return self.measure if self.decode_stride == 1 else f"{self.measure}/{self.decode_stride}"


def parse_schedule(text: str) -> tuple[int, int]:
    """A decode schedule ``"STRIDE"`` or ``"STRIDE:FINE"`` as ``(decode_stride, decode_fine)``: ``"2:10"`` ->
    ``(2, 10)``, ``"2"`` -> ``(2, 0)`` (:attr:`GenerationConfig.decode_stride` and ``decode_fine``).

    Raises:
        ValueError: Not that form, a stride < 1 or a negative fine (the message names ``text``).
    """
    stride, colon, fine = str(text).partition(":")
    if not (stride.isdigit() and int(stride) >= 1) or (colon and not fine.isdigit()):
        raise ValueError(f"a decode schedule is STRIDE or STRIDE:FINE with STRIDE an integer >= 1 and FINE an integer >= 0, "
                         f"got {text!r}")
    return int(stride), int(fine) if colon else 0


def parse_variant(name: str, measures: Sequence[str] = MEASURES) -> Variant:
    """A generation variant named ``MEASURE``, ``MEASURE/S`` or ``MEASURE/S:F`` (the benchmarks' and evaluation
    arms' notation): ``"decoded/2"`` -> ``Variant("decoded", 2, 0)``, ``"preview/2:10"`` -> ``Variant("preview",
    2, 10)`` (decode stride 2, the last 10 states one per move), ``"paper"`` -> ``Variant("paper", 1, 0)``.
    ``measures``: the measure names accepted (default: :data:`progaug.labels.MEASURES`).

    Raises:
        ValueError: Not one of ``measures``, or a schedule that :func:`parse_schedule` refuses (the message
            names ``name``).
    """
    measure, slash, schedule = str(name).partition("/")
    try:
        stride, fine = parse_schedule(schedule) if slash else (1, 0)
        valid = measure in measures
    except ValueError:
        valid = False
    if not valid:
        raise ValueError(f"a generation variant is MEASURE, MEASURE/STRIDE or MEASURE/STRIDE:FINE with MEASURE in "
                         f"{list(measures)}, STRIDE an integer >= 1 and FINE an integer >= 0, got {name!r}")
    return Variant(measure, stride, fine)


LABEL_SOURCES = ("auto", "measure", "margin")
"""Values of :attr:`GenerationConfig.labels`."""
LABELS_HELP = ("where the soft labels come from: auto (margin where the pair carries a margin_calibration.json, as the embedded "
               "pair does, else measure), measure (the label measure at the chosen depths) or margin (each decoded image's "
               "calibrated denoising margin, p(B); needs the pair's margin_calibration.json, from `progaug calibrate`)")


def resolve_labels(labels: str, pair_or_model: Any) -> str:
    """``labels`` made concrete: ``"auto"`` is ``"margin"`` where ``pair_or_model`` carries a margin calibration
    (a :class:`progaug.pair.Pair` with a ``margin_calibration.json``), else ``"measure"``; the others stay."""
    if labels != "auto":
        return labels
    return "margin" if getattr(pair_or_model, "margin_calibration", None) is not None else "measure"


@dataclasses.dataclass(frozen=True)
class GenerationConfig(JsonConfig):
    """How progressive images are made, the same spelling and meaning in every layer.

    Attributes:
        steps: DDIM steps ``S`` of the inversion and the decodes; None: the pair's
            ``diffusion.sampling_steps``.
        measure: Label measure (:data:`progaug.labels.MEASURES`).
        radius: High-pass cut-off of the ``"paper"`` measure (fraction of the side).
        max_batch: Most rows per U-Net call; None: automatic (:func:`progaug.runtime.auto_max_batch`: 32 on
            CPUs, memory-sized on CUDA).
        bf16: bf16 autocast of the decoding U-Net calls (the inversion and the measure stay float32); None:
            where the device computes bf16 natively (:func:`progaug.runtime.native_bf16`).
        device: Where :class:`ProgressiveGenerator` runs the U-Nets; None: where the images are.
        decode_stride: States per DDIM move of the decodes (the inversion and the measure keep every
            state): 1 decodes a depth-``d`` state in ``d`` moves, the paper's; ``s > 1`` in ``ceil(d / s)``
            (:func:`progaug.diffusion.sample_from_depths`): cheaper, other images, the same depths and labels.
        decode_fine: States ``1..decode_fine`` decoded one per move whatever ``decode_stride`` (the stride
            applies above them, where the state is mostly noise): ``decode_stride=2, decode_fine=10`` decodes depth
            50 in 30 moves instead of 50. 0: the stride applies everywhere.
        labels: Where the soft labels come from. ``"measure"``: the label measure at the chosen depths
            (eq. 7-9 for ``"paper"``). ``"margin"``: each decoded image's own p(B), the pair's denoising
            margin through its calibration (:func:`progaug.margin.margin_labels`; needs the pair's
            ``margin_calibration.json``, costs 2 U-Net evaluations per margin timestep per image). ``"auto"``
            (default): ``"margin"`` where the pair carries a calibration (the embedded pair does), else
            ``"measure"`` (:func:`resolve_labels`; docs/method.md "Which labels are the default"). The
            depths, and so the images, come from the measure either way.
    """

    steps: int | None = setting(None, "DDIM steps S (default: the pair's diffusion.sampling_steps)")
    measure: Measure = setting(DEFAULT_MEASURE, MEASURE_HELP)
    radius: float = setting(DEFAULT_RADIUS, "High-pass cut-off of the paper measure (fraction of the side)")
    max_batch: int | None = setting(None, "Most rows per U-Net call (default: automatic, 32 on CPUs, memory-sized on CUDA)")
    bf16: bool | None = setting(
        None, "bf16 autocast of the decodes (default: where the device computes bf16 natively: CUDA with bf16, CPUs with "
              "AVX512-BF16 or AMX)")
    device: str | None = setting(None, "Where the U-Nets run (default: where the images are)")
    decode_stride: int = setting(1, DECODE_STRIDE_HELP)
    decode_fine: int = setting(0, DECODE_FINE_HELP)
    labels: str = setting("auto", LABELS_HELP)

    def __post_init__(self) -> None:
        check_int("steps", self.steps, allow_none=True)
        check_measure("measure", self.measure)
        check_radius("radius", self.radius)
        check_int("max_batch", self.max_batch, allow_none=True)
        check_bf16(self.bf16)
        check_int("decode_stride", self.decode_stride)
        check_int("decode_fine", self.decode_fine, low=0)
        if self.labels not in LABEL_SOURCES:
            raise ValueError(f"`labels` must be one of {LABEL_SOURCES}, got {self.labels!r}")
        object.__setattr__(self, "radius", float(self.radius))
        object.__setattr__(self, "device", device_setting("device", self.device))

    def resolved(self, pair_or_model: Any, device: torch.device | str, diffusion: DiffusionConfig | None = None) -> GenerationConfig:
        """The config with every automatic setting made concrete for ``device``: ``steps`` from
        ``diffusion`` (default: the pair's), ``bf16`` from the device, ``max_batch`` from the source model
        (a :class:`progaug.pair.Pair` or an epsilon model with a ``config``), ``labels`` from the pair's
        calibration (:func:`resolve_labels`; ``"measure"`` for a bare model)."""
        source = getattr(pair_or_model, "source", pair_or_model)
        diffusion = diffusion or getattr(pair_or_model, "diffusion", None) or DiffusionConfig()
        bf16 = resolve_bf16(self.bf16, device)
        max_batch = self.max_batch
        if max_batch is None:
            size = _model_size(source) or 64
            max_batch = auto_max_batch(source, size, device, autocast_dtype=autocast_dtype(bf16))
        steps = diffusion.sampling_steps if self.steps is None else self.steps
        return dataclasses.replace(self, steps=steps, bf16=bf16, max_batch=int(max_batch), labels=resolve_labels(self.labels, pair_or_model))


@dataclasses.dataclass(frozen=True)
class ProgressiveResult:
    """Output of :func:`generate_progressive` for ``B`` source images and ``L`` levels.

    Attributes:
        images: ``(B, L, 3, H, W)`` float32 progressive images in [-1, 1], least to most translated.
        soft_labels: ``(B, L)`` float32 soft labels actually reached (the labels at the chosen depths).
        depths: ``(B, L)`` int64 chosen depths in ``[1, S]``, strictly increasing per row.
        levels: ``(L,)`` or ``(B, L)`` float64 requested levels.
        measured: ``(B, S + 1)`` float32 measured value of every state under ``measure``: the
            high-pass amplitude (eq. 8) for ``"paper"``, the band amplitude for ``"reference"``, the
            preview distance ``d(k)`` for ``"preview"``.
        trajectory_labels: ``(B, S + 1)`` float32 soft labels of every state.
        num_steps: ``S``.
        measure: The label measure (:data:`progaug.labels.MEASURES`).
        decode_stride: States per DDIM move of the decodes (:attr:`GenerationConfig.decode_stride`).
        decode_fine: States decoded one per move whatever the stride (:attr:`GenerationConfig.decode_fine`).
        label_evaluations: U-Net evaluations spent on the labels after the decodes (``labels="margin"``).
    """

    images: torch.Tensor
    soft_labels: torch.Tensor
    depths: torch.Tensor
    levels: torch.Tensor
    measured: torch.Tensor
    trajectory_labels: torch.Tensor
    num_steps: int
    measure: str = DEFAULT_MEASURE
    decode_stride: int = 1
    decode_fine: int = 0
    label_evaluations: int = 0

    @property
    def model_evaluations(self) -> int:
        """U-Net evaluations spent: the inversion and the measure's calls per source image
        (:func:`progaug.labels.inversion_evaluations`) plus the decodes' moves (``ceil(depth / decode_stride)``
        per progressive image without ``decode_fine``, :func:`progaug.diffusion.decode_moves`), plus
        :attr:`label_evaluations`."""
        return (inversion_evaluations(self.measure, self.num_steps) * self.images.shape[0]
                + decode_evaluations(self.depths.cpu(), self.decode_stride, self.decode_fine) + self.label_evaluations)


def _model_size(model: EpsModel) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "image_size", None)


def generate_progressive(
    source_model: EpsModel,
    target_model: EpsModel,
    images: torch.Tensor,
    levels: torch.Tensor | list[float] | None = None,
    config: GenerationConfig | None = None,
    *,
    diffusion: DiffusionConfig | None = None,
    fixed_batch: bool = False,
    trajectory_device: torch.device | str | None = None,
) -> ProgressiveResult:
    """Generate progressive images from source-class images (the ADD method, paper 2.1-2.3).

    Args:
        source_model: Epsilon model of the source class (global-priority attention in ADD).
        target_model: Epsilon model of the target class (local-priority attention in ADD).
        images: ``(B, 3, H, W)`` float images of the source class in [-1, 1], at the models' size.
        levels: ``(L,)`` or ``(B, L)`` requested soft labels in (0, 1], strictly increasing;
            default 10 levels ``0.1, 0.2, ..., 1.0``. ``L <= steps``. Level 1.0 is always depth ``S``.
        config: Steps (default ``diffusion.sampling_steps``), label measure, radius, rows per U-Net call
            and precision (:class:`GenerationConfig`; its ``device`` is not used here: the models run
            where the images are). ``bf16`` reaches the decoding U-Net calls only: the inversion and the
            label measure's calls stay float32 (under bf16 they moved two depths in three with the
            ``"preview"`` measure, ``benchmarks/precision.py``), so depths and labels do not depend on
            it; the DDIM arithmetic stays in the images' dtype and the measures in float32.
        diffusion: Training schedule of the pair (default: linear, 1000 steps).
        fixed_batch: Pad every U-Net call to exactly ``config.max_batch`` rows, so that each image's result
            does not depend on which other images share its batch (bit-identical on CPU whatever the
            number of source images per call; used by ``progaug precompute``).
        trajectory_device: Where to keep the ``S + 1`` inversion states (default: the images' device).

    Returns:
        A :class:`ProgressiveResult`.

    Raises:
        TypeError, ValueError: Bad images, levels or config (the message names which).
    """
    config, diffusion, images, schedule, levels = _checked_inputs(source_model, images, levels, config, diffusion, fixed_batch)
    measure, max_batch, clip = config.measure, config.max_batch, diffusion.clip_denoised
    if fixed_batch:
        source_model, target_model = fixed_batch_model(source_model, max_batch), fixed_batch_model(target_model, max_batch)

    trajectory, measured = _invert_and_measure(source_model, target_model, images, schedule, config, clip, trajectory_device)
    labels = labels_from_values(measure, measured)
    depths = adaptive_depths(labels, levels)  # (B, L)
    b, n_levels = depths.shape
    rows = torch.arange(b, device=depths.device)[:, None].expand(b, n_levels)
    latents = trajectory[depths.flatten().to(trajectory.device), rows.flatten().to(trajectory.device)]
    del trajectory  # S + 1 states per image: freed before the decodes
    with autocast(images.device, autocast_dtype(config.bf16)):
        decoded = sample_from_depths(target_model, latents.to(images.device), depths.flatten(), schedule, clip=clip, max_batch=max_batch,
                                     stride=config.decode_stride, fine=config.decode_fine)
    return ProgressiveResult(images=decoded.reshape(b, n_levels, *images.shape[1:]).float(), soft_labels=labels.gather(1, depths),
                             depths=depths, levels=levels, measured=measured, trajectory_labels=labels, num_steps=schedule.num_steps,
                             measure=measure, decode_stride=config.decode_stride, decode_fine=config.decode_fine)


def _checked_inputs(source_model: EpsModel, images: torch.Tensor, levels, config: GenerationConfig | None,
                    diffusion: DiffusionConfig | None, fixed_batch: bool):
    """:func:`generate_progressive`'s inputs checked and made concrete: ``(config, diffusion, images, schedule,
    levels)`` with the config resolved for the images' device and the images contiguous.

    Raises:
        TypeError, ValueError: Naming the bad input.
    """
    config = config or GenerationConfig()
    if not isinstance(config, GenerationConfig):
        raise TypeError(f"`config` must be a GenerationConfig, got {type(config).__name__}")
    diffusion = diffusion or DiffusionConfig()
    check_image_batch("images", images, size=_model_size(source_model))
    images = images.contiguous()  # the values decide, not the layout: a channels-last view (a PIL or HWC
    # array) takes other convolution kernels on some CPUs (AVX2) and moved pixels by one grey level
    if fixed_batch and config.max_batch is None:
        raise ValueError("`fixed_batch` needs `config.max_batch`, the fixed number of rows per U-Net call")
    if config.labels == "margin":
        raise ValueError(f"`config.labels` {config.labels!r} needs the pair's calibration, which generate_progressive does not "
                         f"have: use ProgressiveGenerator(pair, config)")
    config = config.resolved(source_model, images.device, diffusion)
    schedule = DDIMSchedule.from_config(diffusion, config.steps)
    levels = check_levels("levels", default_levels() if levels is None else levels, max_count=schedule.num_steps)
    return config, diffusion, images, schedule, levels


def _invert_and_measure(source_model: EpsModel, target_model: EpsModel, images: torch.Tensor, schedule: DDIMSchedule,
                        config: GenerationConfig, clip: bool, trajectory_device) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 1-2 of :func:`generate_progressive`, in calls of at most ``config.max_batch`` images, in float32
    whatever the caller's autocast (depths and labels never move with it).

    Returns:
        ``(S + 1, B, 3, H, W)`` inversion states (on ``trajectory_device``, default the images' device) and
        ``(B, S + 1)`` float32 measured values of every state under ``config.measure``.
    """
    chunk, measure = config.max_batch, config.measure
    states, values = [], []
    for x in images.split(chunk):
        with autocast(images.device, None):
            traj = invert(source_model, x, schedule, clip=clip, return_trajectory=True)  # (S + 1, b, C, H, W)
            if measure == "preview":  # measured on the images' device, batched
                values.append(_preview_distances(target_model, traj, schedule, chunk))
            elif measure == "decoded":
                values.append(_sketch_distances(target_model, traj, schedule, chunk, clip))
            else:
                values.append(measure_states(measure, traj, radius=config.radius))
        states.append(traj.to(trajectory_device) if trajectory_device is not None else traj)
    return torch.cat(states, dim=1), torch.cat(values).contiguous()


class ProgressiveGenerator:
    """A pair and one :class:`GenerationConfig`: source-class images in, progressive images out.

    The one generator object of the package: the transform, ``progaug precompute``, ``progaug
    progressive`` and the benchmarks call it. The config's automatic settings are made concrete once per
    device (:meth:`GenerationConfig.resolved`), the U-Nets prepared once per device.

    Args:
        pair: A loaded :class:`progaug.pair.Pair`.
        config: The settings (default: :class:`GenerationConfig` defaults).
        runtime: Channels-last / ``torch.compile`` of the U-Nets (default: the models as they are).
        fixed_batch: Pad every U-Net call to ``max_batch`` rows so that each image's result does not
            depend on the other images of its call (``progaug precompute``).

    Raises:
        TypeError: ``config`` or ``runtime`` of the wrong type.
    """

    def __init__(self, pair: Pair, config: GenerationConfig | None = None, *, runtime: RuntimeConfig | None = None,
                 fixed_batch: bool = False) -> None:
        config = config or GenerationConfig()
        if not isinstance(config, GenerationConfig):
            raise TypeError(f"`config` must be a GenerationConfig, got {type(config).__name__}")
        if runtime is not None and not isinstance(runtime, RuntimeConfig):
            raise TypeError(f"`runtime` must be a RuntimeConfig, got {type(runtime).__name__}")
        self.pair, self.config, self.runtime, self.fixed_batch = pair, config, runtime, bool(fixed_batch)
        self.calibration = margin_calibration_for(pair, config)
        self._resolved: dict[str, GenerationConfig] = {}
        self._models: dict[str, tuple[EpsModel, EpsModel]] = {}

    def device_for(self, images: torch.Tensor) -> torch.device:
        """Where the U-Nets run for ``images``: the config's ``device``, else the images' own."""
        return torch.device(self.config.device) if self.config.device else images.device

    def resolved(self, device: torch.device | str) -> GenerationConfig:
        """The config made concrete for ``device`` (computed once per device)."""
        key = str(torch.device(device))
        if key not in self._resolved:
            self._resolved[key] = self.config.resolved(self.pair.to(device), device)
        return self._resolved[key]

    def models(self, device: torch.device | str) -> tuple[EpsModel, EpsModel]:
        """The pair's ``(source, target)`` U-Nets on ``device``, prepared as ``runtime`` asks."""
        key = str(torch.device(device))
        if key not in self._models:
            pair = self.pair.to(device)
            self._models[key] = (prepare_model(pair.source, self.runtime), prepare_model(pair.target, self.runtime)) \
                if self.runtime is not None else (pair.source, pair.target)
        return self._models[key]

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, levels: torch.Tensor | list[float] | None = None, *,
                 trajectory_device: torch.device | str | None = None) -> ProgressiveResult:
        """Progressive images of ``(B, 3, H, W)`` source-class images in [-1, 1] at the pair's size
        (:func:`generate_progressive`), labelled by the pair's calibrated margin where ``config.labels`` is
        ``"margin"``; the result is on the device the U-Nets ran on."""
        device = self.device_for(images)
        config = self.resolved(device)
        source, target = self.models(device)
        result = generate_progressive(source, target, images.to(device), levels, dataclasses.replace(config, labels="measure"),
                                      diffusion=self.pair.diffusion, fixed_batch=self.fixed_batch, trajectory_device=trajectory_device)
        return result if self.calibration is None else self._with_margin_labels(result, source, target, config)

    def _with_margin_labels(self, result: ProgressiveResult, source: EpsModel, target: EpsModel, config: GenerationConfig) -> ProgressiveResult:
        """``result`` with each output's soft label its calibrated margin (:func:`progaug.margin.margin_labels`)."""
        if self.fixed_batch:  # as the generation: a row's label must not depend on the rows it is called with
            source, target = fixed_batch_model(source, config.max_batch), fixed_batch_model(target, config.max_batch)
        outputs = result.images.flatten(0, 1)
        labels = margin_labels(source, target, training_alpha_bar(self.pair.diffusion), outputs, self.calibration, max_batch=config.max_batch)
        return dataclasses.replace(result, soft_labels=labels.view_as(result.soft_labels).to(result.soft_labels.device),
                                   label_evaluations=self.calibration.evaluations_per_image * outputs.shape[0])


def margin_calibration_for(pair: Pair, config: GenerationConfig) -> MarginCalibration | None:
    """The pair's margin calibration when ``config.labels`` is ``"margin"``, or ``"auto"`` and the pair carries one,
    else None (what :class:`ProgressiveGenerator` labels with; ``progaug precompute`` records it in the run's settings).

    Raises:
        ValueError: ``labels="margin"`` and the pair has no calibration (the message says how to fit one).
    """
    if resolve_labels(config.labels, pair) != "margin":
        return None
    calibration = pair.margin_calibration
    if calibration is None:
        where = f"{pair.path}" if pair.path is not None else "this pair (it has no folder)"
        raise ValueError(f"`labels='margin'` needs the pair's margin calibration, and {where} has no margin_calibration.json: "
                         f"fit one on real tiles the pair never saw with `progaug calibrate --pair PAIR --data ROOT`")
    return calibration


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

