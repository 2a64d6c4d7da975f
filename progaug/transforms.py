"""``ProgressiveDiffusionAugment``: ADD as a torchvision-v2-style transform that claims the labels.

Per sample: ``(image, label) -> (image, soft_row)``. With probability ``p`` an image of the source
class becomes a progressive image towards the target class and gets the row ``[1 - L, L]`` (source,
target) with ``L`` its soft label (the pair's calibrated margin where it carries one, ``labels="auto"``;
else the measure's level reached, eq. 9); other images pass through with their one-hot row.
Batch form (like timm's ``Mixup`` and torchvision's ``MixUp``): ``(B, C, H, W), (B,) or (B, K) ->
(B, C, H, W), (B, K)``, one generator call for all chosen images of the batch.

Image scale follows the dtype, as in torchvision v2: ``uint8`` means 0..255, a floating dtype means
[0, 1] (or normalised with ``normalize=(mean, std)``); the output has the input's dtype and layout.

Where it runs best: the batch form on the GPU inside the training loop (in place of timm's
``mixup_fn``). Inside CPU DataLoader workers each sample costs a full inversion and decode on one
thread — precompute instead (``progaug precompute``). The pair is loaded lazily in each process and
is not part of the pickled state, so the transform pickles in microseconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from progaug.errors import check_int, check_number
from progaug.generator import GenerationConfig, ProgressiveGenerator
from progaug.losses import label_rows, soft_label_to_row

__all__ = ["ProgressiveDiffusionAugment"]


def _mean_std(mean: Sequence[float], std: Sequence[float], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean`` and ``std`` as ``(1, 3, 1, 1)`` float32 tensors on ``device``."""
    return torch.tensor(mean, device=device).view(1, 3, 1, 1), torch.tensor(std, device=device).view(1, 3, 1, 1)


def _batch_to_model_range(x: torch.Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> torch.Tensor:
    """A user's ``(B, 3, H, W)`` batch of any dtype -> [-1, 1] float32, the scale read from the dtype (as
    torchvision v2 does); :func:`progaug.data.tiles.to_model_range` is the plain uint8 tile conversion.

    ``uint8``: 0..255 (never normalised, ``mean``/``std`` do not apply). Floating: [0, 1], or
    normalised with ``mean``/``std`` when given.

    Raises:
        ValueError: Not 3 channels; floating values that are not finite or outside [0, 1].
    """
    if x.shape[1] != 3:
        raise ValueError(f"images must have 3 channels, got {x.shape[1]}")
    if x.dtype == torch.uint8:
        return x.float() / 255 * 2 - 1
    x = x.float()
    if mean is not None:
        mean_t, std_t = _mean_std(mean, std, x.device)
        x = x * std_t + mean_t
    if not bool(torch.isfinite(x).all()):
        raise ValueError("images must be finite, got NaN or infinite values")
    if float(x.min()) < -1e-3 or float(x.max()) > 1 + 1e-3:
        raise ValueError(
            f"images must be in [0, 1] (or normalised with the given mean/std), got min {float(x.min()):.3g} "
            f"max {float(x.max()):.3g}; pass mean=... std=... for normalised batches"
        )
    return x.clamp(0, 1) * 2 - 1


def _batch_from_model_range(x: torch.Tensor, dtype: torch.dtype, mean: Sequence[float] | None = None,
                            std: Sequence[float] | None = None) -> torch.Tensor:
    """[-1, 1] -> ``dtype``'s scale: ``uint8`` 0..255 (rounded), floating [0, 1] (normalised with
    ``mean``/``std`` when given); the inverse of :func:`_batch_to_model_range`."""
    x = (x.float() + 1) / 2
    if dtype == torch.uint8:
        return (x.clamp(0, 1) * 255).round().to(torch.uint8)
    if mean is not None:
        mean_t, std_t = _mean_std(mean, std, x.device)
        x = (x - mean_t) / std_t
    return x.to(dtype)


class ProgressiveDiffusionAugment(v2.Transform):
    """Progressive diffusion augmentation with soft labels (ADD).

    As in torchvision v2, :meth:`make_params` draws the randomness of a call (which rows are
    transformed, the level each asks for) and :meth:`transform` does the work; :meth:`forward` is
    overridden because the transform claims the labels (like ``MixUp``).

    Args:
        pair: Registry name, pair folder or URL (loaded lazily), or a loaded :class:`progaug.pair.Pair`.
        p: Probability that a source-class image is transformed.
        level_range: ``(low, high)`` in (0, 1]: each transformed image asks for a level drawn uniformly
            from it (the depth is then chosen adaptively and the label *reached* is returned).
        levels: Fixed levels to draw from instead of ``level_range`` (a list, tuple, 1-D tensor or array).
        num_classes: ``K``, the width of the label rows.
        direction: ``(source, target)``: the indices of class A (the pair's source class) and class B in
            the classifier's classes.
        normalize: ``(mean, std)``, 3 values each (lists, tuples, tensors or arrays), of floating batches
            that arrive normalised (undone before and redone after); uint8 images are 0..255 and never
            normalised.
        generation: Steps (default: the pair's ``diffusion.sampling_steps``), label measure, radius, rows
            per U-Net call (default automatic), bf16 (default: where the device computes it natively),
            the device the U-Nets run on (default: the batch's) and where the soft labels come from (default
            ``labels="auto"``: the pair's calibrated margin where it carries one, as the embedded pair does,
            else the measure), as a :class:`progaug.generator.GenerationConfig`.

    Raises:
        TypeError, ValueError: A bad argument (the message names it).
    """

    def __init__(
        self,
        pair: Any = "hgsc-demo",
        *,
        p: float = 0.5,
        level_range: tuple[float, float] = (0.1, 1.0),
        levels: Sequence[float] | None = None,
        num_classes: int = 2,
        direction: tuple[int, int] = (0, 1),
        normalize: tuple[Sequence[float], Sequence[float]] | None = None,
        generation: GenerationConfig | None = None,
    ) -> None:
        super().__init__()
        from progaug.pair import Pair

        if not isinstance(pair, (str, Pair)) and not hasattr(pair, "__fspath__"):
            raise TypeError(f"`pair` must be a name, folder, URL or Pair, got {type(pair).__name__}")
        if not 0.0 <= check_number("p", p) <= 1.0:
            raise ValueError(f"`p` must be a probability in [0, 1], got {p!r}")
        self.level_range, self.levels = _check_level_choice(level_range, levels)
        check_int("num_classes", num_classes)
        self.source_class, self.target_class = _check_direction(direction, num_classes)
        self.mean, self.std = _check_normalize(normalize)
        generation = generation or GenerationConfig()
        if not isinstance(generation, GenerationConfig):
            raise TypeError(f"`generation` must be a progaug.generator.GenerationConfig, got {type(generation).__name__}")
        self._pair_spec = pair if not isinstance(pair, Pair) else None
        self._pair = pair if isinstance(pair, Pair) else None
        self.p, self.num_classes, self.generation = float(p), num_classes, generation
        self.mixup_enabled = True

    @property
    def measure(self) -> str:
        """The label measure of the generated images (``generation.measure``)."""
        return self.generation.measure

    # pickling: never the models -----------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_generator", None)
        if state.get("_pair_spec") is not None:
            state["_pair"] = None
        return state

    @property
    def pair(self):
        """The pair, loaded on first use in this process."""
        if self._pair is None:
            from progaug.hub import load_pair

            self._pair = load_pair(self._pair_spec)
        return self._pair

    @property
    def generator(self) -> ProgressiveGenerator:
        """The pair with ``generation``, made on first use in this process (and again if ``generation``
        was replaced)."""
        made = self.__dict__.get("_generator")
        if made is None or made.config is not self.generation:
            made = self.__dict__["_generator"] = ProgressiveGenerator(self.pair, self.generation)
        return made

    # the two call forms ---------------------------------------------------------------------------

    def forward(self, *inputs: Any) -> Any:
        """``transform(image, label)`` for one sample, or ``transform(images, labels)`` for a batch."""
        if len(inputs) == 1 and isinstance(inputs[0], (tuple, list)):
            inputs = tuple(inputs[0])
        if len(inputs) != 2:
            raise TypeError("call the transform with (image, label) or (images, labels)")
        image, label = inputs
        if isinstance(image, torch.Tensor) and image.ndim == 4:
            return self._batch(image, label)
        return self._single(image, label)

    def _batch(self, x: torch.Tensor, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dtype != torch.uint8 and not x.is_floating_point():
            raise TypeError(f"`images` must be uint8 (0..255) or floating point ([0, 1]), got dtype {x.dtype}")
        rows = self._rows(labels, x.shape[0]).to(x.device)
        if not self.mixup_enabled or self.p == 0.0:
            return x, rows
        params = self.make_params([x, rows])
        if params["chosen"].numel() == 0:
            return x, rows
        return self.transform((x, rows), params)

    def _single(self, image: Any, label: Any) -> tuple[Any, torch.Tensor]:
        from PIL import Image

        if isinstance(label, bool) or not isinstance(label, (int, torch.Tensor)):
            raise TypeError(f"label must be an int class index, got {type(label).__name__}")
        label = int(label)
        if not 0 <= label < self.num_classes:
            raise ValueError(f"label {label} is outside the {self.num_classes} classes")
        if isinstance(image, Image.Image):
            if image.mode != "RGB":
                raise ValueError(f"PIL image has mode {image.mode!r}; the pair takes RGB (use image.convert('RGB'))")
            out, rows = self._batch(F.pil_to_tensor(image)[None], torch.tensor([label]))
            return F.to_pil_image(out[0]), rows[0]
        if not isinstance(image, torch.Tensor) or image.ndim != 3:
            raise TypeError(f"image must be a PIL image or a (3, H, W) tensor, got {type(image).__name__}")
        out, rows = self._batch(image[None], torch.tensor([label]))
        return out[0], rows[0]

    def _rows(self, labels: Any, batch: int) -> torch.Tensor:
        """``(B,)`` class indices or ``(B, K)`` probability rows -> checked float32 ``(B, K)`` rows.

        Raises:
            TypeError, ValueError: See :func:`progaug.losses.label_rows` (the one shared check).
        """
        if not isinstance(labels, torch.Tensor):
            try:
                labels = torch.as_tensor(labels)
            except (TypeError, ValueError, RuntimeError) as err:
                raise TypeError(f"`labels` must be a tensor of class indices or rows, got {type(labels).__name__}") from err
        return label_rows(labels, self.num_classes, batch=batch, name="labels").float()

    # randomness, then work (torchvision v2's split) -----------------------------------------------

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        """Draw the randomness of one batch call from torch's global generator.

        Args:
            flat_inputs: ``[images, rows]``: the ``(B, 3, H, W)`` batch and its ``(B, K)`` label rows.

        Returns:
            ``{"chosen": (n,) int64, "levels": (n,) float64}`` on the CPU: the indices of the
            source-class rows to transform (each with probability ``p``) and the level each asks for
            (from ``levels``, or uniform in ``level_range``).
        """
        images, rows = flat_inputs
        is_source = rows.argmax(dim=1) == self.source_class
        chosen = torch.nonzero(is_source.cpu() & (torch.rand(images.shape[0]) < self.p)).flatten()
        if self.levels is not None:
            levels = torch.tensor(self.levels, dtype=torch.float64)[torch.randint(0, len(self.levels), (chosen.numel(),))]
        else:
            low, high = self.level_range
            levels = low + (high - low) * torch.rand(chosen.numel(), dtype=torch.float64)
        return {"chosen": chosen, "levels": levels}

    def transform(self, inpt: tuple[torch.Tensor, torch.Tensor], params: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Replace the chosen images by progressive images and their rows by the soft rows reached.

        Args:
            inpt: ``(images, rows)``: a ``(B, 3, H, W)`` uint8 or floating batch and its ``(B, K)`` rows.
            params: From :meth:`make_params`, with at least one chosen row.

        Returns:
            ``(images, rows)``: new tensors of the input's dtypes and device.

        Raises:
            ValueError: The images are not 3-channel, in range, or at the pair's size.
        """
        x, rows = inpt
        chosen = params["chosen"].to(x.device)
        images = _batch_to_model_range(x[chosen], self.mean, self.std)
        size = self.pair.image_size
        if images.shape[-1] != size or images.shape[-2] != size:
            raise ValueError(f"images are {tuple(images.shape[-2:])} but the pair was trained on {size}x{size} tiles")
        result = self.generator(images, params["levels"][:, None])
        out, new_rows = x.clone(), rows.clone()
        out[chosen] = _batch_from_model_range(result.images[:, 0].to(x.device), x.dtype, self.mean, self.std)
        soft = result.soft_labels[:, 0].cpu()
        new_rows[chosen] = soft_label_to_row(soft, self.source_class, self.target_class, self.num_classes).to(x.device)
        return out, new_rows

    def extra_repr(self) -> str:
        return (f"pair={self._pair_spec or 'Pair'!r}, p={self.p}, level_range={self.level_range}, levels={self.levels}, "
                f"generation={self.generation}, "
                f"classes=({self.source_class} -> {self.target_class} of {self.num_classes})")


def _check_pair(name: str, value: Any, what: str) -> tuple[Any, Any]:
    """``value`` as a 2-tuple.

    Raises:
        TypeError: ``value`` is not a tuple or list.
        ValueError: It does not hold two entries.
    """
    if not isinstance(value, (tuple, list)):
        raise TypeError(f"`{name}` must be a pair {what}, got {type(value).__name__} {value!r}")
    if len(value) != 2:
        raise ValueError(f"`{name}` must be a pair {what}, got {value!r}")
    return value[0], value[1]


def _as_list(name: str, value: Any, what: str) -> list[Any]:
    """A tuple, list, tensor or numpy array as a list of Python scalars.

    Raises:
        TypeError: ``value`` is none of those.
    """
    if hasattr(value, "tolist") and hasattr(value, "ndim"):  # a tensor or a numpy array
        value = value.tolist()
    if not isinstance(value, (tuple, list)):
        raise TypeError(f"`{name}` must be {what}, got {type(value).__name__} {value!r}")
    return list(value)


def _check_level_choice(level_range: Any, levels: Any) -> tuple[tuple[float, float], list[float] | None]:
    """``level_range`` as ``(low, high)`` with ``0 < low <= high <= 1`` and ``levels`` as a list of values in
    (0, 1] (or None).

    Raises:
        TypeError, ValueError: Naming the argument.
    """
    low, high = (check_number("level_range", v) for v in _check_pair("level_range", level_range, "(low, high)"))
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(f"`level_range` must satisfy 0 < low <= high <= 1, got {level_range!r}")
    if levels is not None:
        levels = [check_number("levels", v) for v in _as_list("levels", levels, "a list of values in (0, 1]")]
        if not levels or not all(0.0 < v <= 1.0 for v in levels):
            raise ValueError(f"`levels` must be non-empty values in (0, 1], got {levels!r}")
    return (low, high), levels


def _check_direction(direction: Any, num_classes: int) -> tuple[int, int]:
    """``(source, target)`` class indices, distinct, each in ``[0, num_classes)``.

    Raises:
        TypeError, ValueError: Naming ``direction``.
    """
    pair = _check_pair("direction", direction, "(source class index, target class index)")
    for idx in pair:
        if check_int("direction", idx, low=0) >= num_classes:
            raise ValueError(f"`direction` entries must be ints in [0, {num_classes}), got {direction!r}")
    if pair[0] == pair[1]:
        raise ValueError(f"`direction` must name two different classes, got {direction!r}")
    return int(pair[0]), int(pair[1])


def _check_normalize(normalize: Any) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """``(mean, std)`` of 3 finite values each, std positive, or None.

    Raises:
        TypeError: ``normalize`` or one of its parts is not a tuple or list, or holds a non-number.
        ValueError: Wrong lengths, non-finite values or a std that is not positive; naming ``normalize``.
    """
    if normalize is None:
        return None, None
    what = "(mean, std), 3 values each"
    parts = [_as_list("normalize", part, what) for part in _check_pair("normalize", normalize, what)]
    if any(len(part) != 3 for part in parts):
        raise ValueError(f"`normalize` must be {what}, got {normalize!r}")
    mean, std = (tuple(check_number("normalize", v) for v in part) for part in parts)
    if not all(math.isfinite(v) for v in (*mean, *std)):
        raise ValueError(f"`normalize` must hold finite numbers, got {normalize!r}")
    if any(v <= 0 for v in std):
        raise ValueError(f"`normalize` std must be positive, got {std!r}")
    return mean, std
