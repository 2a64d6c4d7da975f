"""Argument checks shared by the public functions; each error names the argument and the value."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["check_device", "device_setting", "check_image_batch", "check_int", "check_levels", "check_number"]

_RANGE_SLACK = 1e-3  # images that went through a float round trip may overshoot [-1, 1] slightly


def check_image_batch(name: str, x: object, *, channels: int = 3, size: int | None = None) -> torch.Tensor:
    """Check a batch of images in the model range and return it.

    Args:
        name: Argument name for the error message.
        x: Expected ``(B, channels, H, W)`` floating tensor with finite values in [-1, 1].
        channels: Required channel count.
        size: Required side ``H == W`` (the models' training size), or None for any.

    Raises:
        TypeError: ``x`` is not a tensor, or not floating point.
        ValueError: Wrong shape, channel count, size, non-finite values, or values outside [-1, 1].
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor in [-1, 1], got dtype {x.dtype}")
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(f"`{name}` must have shape (B, {channels}, H, W) with B >= 1, got {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"`{name}` must have {channels} channels (RGB), got {x.shape[1]} in shape {tuple(x.shape)}")
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        raise ValueError(f"`{name}` must be {size}x{size} pixels (the models' size), got {tuple(x.shape[-2:])}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"`{name}` holds NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1 - _RANGE_SLACK or hi > 1 + _RANGE_SLACK:
        raise ValueError(
            f"`{name}` values must lie in [-1, 1] (use x * 2 - 1 on [0, 1] images), got min {lo:.4g}, max {hi:.4g}"
        )
    return x


def check_levels(name: str, levels: Sequence[float] | torch.Tensor, *, max_count: int | None = None) -> torch.Tensor:
    """Check soft-label levels: strictly increasing along the last axis, each in (0, 1].

    Returns:
        The levels as a float64 tensor, ``(L,)`` or ``(B, L)``.

    Raises:
        ValueError: Empty, outside (0, 1], not strictly increasing, or more than ``max_count``.
    """
    t = torch.as_tensor(levels, dtype=torch.float64).cpu()
    if t.ndim not in (1, 2) or t.shape[-1] == 0:
        raise ValueError(f"`{name}` must be a non-empty (L,) or (B, L) sequence, got shape {tuple(t.shape)}")
    if not bool(((t > 0) & (t <= 1)).all()):
        raise ValueError(f"`{name}` must lie in (0, 1], got {t.tolist()}")
    if t.shape[-1] > 1 and not bool((t.diff(dim=-1) > 0).all()):
        raise ValueError(f"`{name}` must be strictly increasing, got {t.tolist()}")
    if max_count is not None and t.shape[-1] > max_count:
        raise ValueError(f"`{name}` has {t.shape[-1]} levels but at most {max_count} fit in the schedule's steps")
    return t


def check_int(name: str, value: object, *, low: int = 1, high: int | None = None, allow_none: bool = False) -> int | None:
    """Return ``value`` if it is an int in ``[low, high]`` (``high`` None: no upper bound), or None when allowed.

    Raises:
        TypeError: Not an int (a bool is not taken for one).
        ValueError: Outside the range.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__} {value!r}")
    if high is None and value < low:
        raise ValueError(f"`{name}` must be >= {low}, got {value!r}")
    if high is not None and not low <= value <= high:
        raise ValueError(f"`{name}` must be in [{low}, {high}], got {value!r}")
    return value




def check_number(name: str, value: object, *, low: float | None = None) -> float:
    """Return ``value`` as a float if it is a real number (int or float, not a bool), and, with ``low``
    given, a finite one ``>= low``.

    Raises:
        TypeError: Not a real number.
        ValueError: ``low`` given and the number is below it, NaN or infinite.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a number, got {type(value).__name__} {value!r}")
    if low is not None and not (math.isfinite(value) and value >= low):
        raise ValueError(f"`{name}` must be a number >= {low}, got {value!r}")
    return float(value)


def check_device(name: str, device: object) -> torch.device | None:
    """Parse a device argument at construction time, so that a bad one fails there and not in torch later.

    Args:
        name: Argument name for the error messages.
        device: None, a device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``) or a :class:`torch.device`.

    Returns:
        The parsed device, or None.

    Raises:
        TypeError: Neither None, a string nor a torch.device.
        ValueError: A string torch cannot parse; an accelerator type (CUDA, MPS, XPU, ...) this machine
            does not have; an index beyond the devices present.
    """
    if device is None:
        return None
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"`{name}` must be a str or torch.device, got {type(device).__name__} {device!r}")
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"`{name}` must name a torch device such as 'cpu', 'cuda' or 'cuda:1', got {device!r}") from err
    if parsed.type in ("cpu", "meta"):
        return parsed
    backend = torch.backends.mps if parsed.type == "mps" else getattr(torch, parsed.type, None)
    is_available = getattr(backend, "is_available", None)
    if callable(is_available) and not is_available():
        raise ValueError(f"`{name}` is {device!r} but {parsed.type.upper()} is not available on this machine (use 'cpu')")
    device_count = getattr(getattr(torch, parsed.type, None), "device_count", None)
    if parsed.index is not None and callable(device_count) and parsed.index >= device_count():
        count = device_count()
        raise ValueError(
            f"`{name}` is {device!r} but this machine has {count} {parsed.type.upper()} device(s) "
            f"(indices 0..{count - 1})"
        )
    return parsed


def device_setting(name: str, device: object, *, required: bool = False) -> str | None:
    """A config's device setting, checked by :func:`check_device` and stored as its canonical string.

    Args:
        name: Argument name for the error messages.
        device: None (automatic), a device string or a :class:`torch.device`.
        required: Refuse None.

    Returns:
        ``str(torch.device(device))`` (``"cpu"``, ``"cuda:1"`` ...), or None when ``device`` is None.

    Raises:
        TypeError, ValueError: As :func:`check_device`; ValueError also for None when ``required``.
    """
    parsed = check_device(name, device)
    if parsed is None:
        if required:
            raise ValueError(f"`{name}` must name a torch device such as 'cpu' or 'cuda', got None")
        return None
    return str(parsed)
