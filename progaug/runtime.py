"""How the U-Nets run: device, threads, allocator, memory format, compilation, batch size, autocast.

None of the :class:`RuntimeConfig` settings changes what is computed beyond float tolerance (see
``docs/performance.md`` for the tolerances, the tests that hold them and the measured speed-ups); they
change speed and memory only. What *does* change results (steps, levels, bf16 autocast, the seed)
lives in the configs of the commands; :func:`autocast_dtype` turns their ``bf16`` flag into the
autocast dtype that :func:`autocast` and the generator take.
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

from progaug.config import JsonConfig, setting
from progaug.errors import check_int

__all__ = [
    "CPU_MAX_BATCH",
    "RuntimeConfig",
    "apply_runtime",
    "autocast",
    "auto_max_batch",
    "autocast_dtype",
    "check_bf16",
    "default_device",
    "default_threads",
    "env_int",
    "machine_description",
    "native_bf16",
    "resolve_bf16",
    "prepare_model",
    "rows_that_fit",
    "tune_malloc",
    "usable_cpus",
]

CPU_MAX_BATCH = 32
"""Rows per U-Net call on CPUs (see ``docs/performance.md`` for the measurements behind it)."""


@dataclasses.dataclass(frozen=True)
class RuntimeConfig(JsonConfig):
    """Execution settings shared by ``progaug precompute``, ``progaug progressive`` and the benchmarks.

    Attributes:
        threads: CPU threads per process (default: the CPUs this process may use divided by the
            number of ``torchrun`` processes on this node (``LOCAL_WORLD_SIZE``), at least 1, so that
            processes never oversubscribe the cores).
        channels_last: Keep the U-Net weights and activations in channels-last memory format (default on:
            measured faster, results within the tolerance of ``docs/performance.md``).
        compile: ``torch.compile`` the U-Nets (each new input shape is compiled first, which takes
            time; see ``docs/performance.md`` for when it pays off).
        malloc_tuning: On Linux with glibc and a CPU device, keep freed memory in the process instead
            of handing it back to the system after every large tensor (``mallopt``).
    """

    threads: int | None = setting(
        None,
        "CPU threads per process (default: the CPUs this process may use divided by the number of torchrun "
        "processes on this node (LOCAL_WORLD_SIZE), at least 1, so that processes never oversubscribe the cores)",
    )
    channels_last: bool = setting(
        True, "Keep the U-Net weights and activations in channels-last memory format (12 % faster for progaug precompute on a "
        "2-core CPU; --no-channels-last for the contiguous layout)"
    )
    compile: bool = setting(
        False, "torch.compile the U-Nets (each new input shape is compiled first; see docs/performance.md)"
    )
    malloc_tuning: bool = setting(
        True,
        "On Linux with glibc and a CPU device, keep freed memory in the process instead of handing it back to "
        "the system after every large tensor (mallopt)",
    )

    def __post_init__(self) -> None:
        check_int("threads", self.threads, allow_none=True)


def command_line(argv: list[str] | None = None) -> str:
    """The command a run records in its provenance: the program's file name and its arguments
    (default: ``sys.argv``), shell-quoted so that it can be pasted back, e.g. ``"progaug precompute --n 10
    --out cache"`` or ``"progaug evaluate --arms '+ADD-Pro[preview] margin labels'"``."""
    args = sys.argv if argv is None else argv
    return shlex.join([Path(args[0]).name, *args[1:]]) if args else ""


def default_device() -> str:
    """``"cuda"`` when CUDA is available, else ``"cpu"``: where commands run when no device is given."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def autocast_dtype(bf16: bool) -> torch.dtype | None:
    """The autocast dtype of a ``bf16`` setting: ``torch.bfloat16`` when set, None (plain float32) otherwise."""
    return torch.bfloat16 if bf16 else None


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bfloat16 natively: CUDA devices that support it, CPUs with AVX512-BF16
    or AMX (where bf16 autocast ran the demo U-Nets 1.6x faster than float32, ``docs/performance.md``).
    Elsewhere bf16 would be emulated, slower than float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return _cpu_has("avx512_bf16") or _cpu_has("amx_tile")
    return False


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model name (``model name`` of ``cpuinfo`` on Linux), else what :mod:`platform` knows."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_description(device: torch.device | str = "cpu", *, cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """What a timed result must name to be compared: OS, CPU model, usable CPUs, torch's CPU instruction set,
    whether the device computes bf16 natively, and the GPU's name when ``device`` is CUDA.

    Timings of the same command differed 2-3x between two 2-core development CPUs (``docs/performance.md``),
    so every benchmark records this string as ``machine``.
    """
    device = torch.device(device)
    cpus = usable_cpus()
    capability = torch.backends.cpu.get_cpu_capability()
    text = f"{platform.platform()}, {cpu_model(cpuinfo)}, {cpus} CPUs ({capability}"
    text += f"{', AMX' if _cpu_has('amx_tile') else ''}{', native bf16' if native_bf16('cpu') else ''})"
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        text += f", {torch.cuda.get_device_name(index)}{' (native bf16)' if native_bf16(device) else ''}"
    return text


def _cpu_has(feature: str) -> bool:
    """torch's probe ``torch.cpu._is_<feature>_supported()`` (False on a torch without it: stay in float32)."""
    try:
        return bool(getattr(torch.cpu, f"_is_{feature}_supported")())
    except AttributeError:
        return False


def check_bf16(bf16: object) -> bool | None:
    """Return a ``bf16`` setting if it is True, False or None (automatic).

    Raises:
        TypeError: Anything else.
    """
    if bf16 is not None and not isinstance(bf16, bool):
        raise TypeError(f"`bf16` must be True, False or None (automatic), got {type(bf16).__name__} {bf16!r}")
    return bf16


def resolve_bf16(bf16: bool | None, device: torch.device | str) -> bool:
    """A ``bf16`` setting made concrete for ``device``: None (automatic) means :func:`native_bf16`."""
    return native_bf16(device) if check_bf16(bf16) is None else bf16


def torchrun_setup(device: torch.device | str | None) -> tuple[int, int, torch.device]:
    """``(rank, world size, device)`` of this process: one process on ``device`` (default:
    :func:`default_device`), or a ``torchrun`` rank, which joins the process group once (NCCL on CUDA,
    Gloo otherwise) and, on CUDA, runs on its local GPU (``LOCAL_RANK``). The one torchrun setup of
    ``progaug train`` and ``progaug precompute``."""
    world = env_int("WORLD_SIZE", 1, low=1)
    if world <= 1:
        return 0, 1, torch.device(device or default_device())
    import torch.distributed as dist

    use_cuda = torch.cuda.is_available() and torch.device(device or default_device()).type == "cuda"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if not use_cuda:
        return dist.get_rank(), world, torch.device("cpu")
    local = env_int("LOCAL_RANK", 0)
    torch.cuda.set_device(local)
    return dist.get_rank(), world, torch.device("cuda", local)


def barrier(world: int) -> None:
    """Wait for every ``torchrun`` rank (nothing with one process)."""
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """``torch.autocast`` on ``device``'s type with ``dtype``, or a no-op context when ``dtype`` is None."""
    return torch.autocast(torch.device(device).type, dtype=dtype or torch.float32, enabled=dtype is not None)


def env_int(name: str, default: int, *, low: int = 0) -> int:
    """An integer environment variable (``WORLD_SIZE``, ``LOCAL_RANK``, ... set by ``torchrun``).

    Raises:
        ValueError: Set, but not an integer >= ``low``; the message names the variable.
    """
    text = os.environ.get(name, "").strip() or str(default)
    if not text.lstrip("+-").isdigit() or int(text) < low:
        raise ValueError(f"the environment variable {name} must be an integer >= {low}, got {text!r}")
    return int(text)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity on Linux, else all)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads() -> int:
    """CPU threads for one process: usable CPUs divided by the ``torchrun`` processes on this node."""
    cpus = usable_cpus()
    local = env_int("LOCAL_WORLD_SIZE", 1, low=1)
    return max(1, cpus // max(1, local))


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MALLOC_THRESHOLD = 256 * 2**20


def tune_malloc(threshold: int = _MALLOC_THRESHOLD) -> bool:
    """Ask glibc to serve tensors up to ``threshold`` bytes from the heap and not to trim it.

    The same as starting Python with ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` set;
    memory is still freed, only kept by the process for reuse.

    Returns:
        True when both settings were taken; False on other C libraries and systems.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold))) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 4 * int(threshold)))
    except (OSError, AttributeError):
        return False


def apply_runtime(config: RuntimeConfig | None = None, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Apply the process-wide settings of ``config`` (threads, allocator) for work on ``device``.

    Returns:
        What was applied, for manifests and benchmark reports: ``{"threads", "malloc_tuning"}``.
    """
    config = config or RuntimeConfig()
    threads = config.threads or default_threads()
    torch.set_num_threads(threads)
    tuned = bool(config.malloc_tuning and torch.device(device).type == "cpu" and tune_malloc())
    return {"threads": threads, "malloc_tuning": tuned}


def prepare_model(model: torch.nn.Module, config: RuntimeConfig | None = None, *, compile_backend: str = "inductor"):
    """Return ``model`` set up as ``config`` asks (channels-last, ``torch.compile``); ``.config`` stays.

    Args:
        model: An epsilon U-Net (``(B, 3, H, W), (B,) -> (B, 3, H, W)``), in eval mode.
        config: Runtime settings.
        compile_backend: ``torch.compile`` backend (tests use ``"aot_eager"``, which needs no compiler).
    """
    config = config or RuntimeConfig()
    if config.channels_last:
        model = _ChannelsLast(model.to(memory_format=torch.channels_last))
    if config.compile:
        model = torch.compile(model, backend=compile_backend)
    return model


class _ChannelsLast(torch.nn.Module):
    """Feeds a channels-last model channels-last inputs and hands back contiguous outputs."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = getattr(model, "config", None)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last), t).contiguous()


def rows_that_fit(free_bytes: int, fixed_bytes: int, per_row_bytes: int, *, fraction: float = 0.7, cap: int = 1024) -> int:
    """Largest batch whose measured memory fits in ``fraction`` of the free memory.

    ``fixed_bytes + rows * per_row_bytes <= fraction * free_bytes``; at least 1, at most ``cap``, and
    rounded down to a multiple of 8 from 8 rows on (tensor-core friendly shapes).
    """
    if per_row_bytes <= 0:
        return cap
    rows = int((fraction * free_bytes - max(fixed_bytes, 0)) // per_row_bytes)
    rows = max(1, min(cap, rows))
    return rows - rows % 8 if rows >= 8 else rows


@torch.no_grad()
def auto_max_batch(
    model,
    image_size: int,
    device: torch.device | str,
    *,
    autocast_dtype: torch.dtype | None = None,
    fraction: float = 0.7,
    cap: int = 1024,
) -> int:
    """Rows per U-Net call that fill memory safely.

    On CUDA, two probe calls (1 and 4 rows) measure the fixed and per-row peak memory of ``model`` at
    ``image_size``, and :func:`rows_that_fit` sizes the batch to ``fraction`` of the free memory
    (leaving room for the inversion trajectory, which the generator keeps off the peak by chunking).
    On other devices: :data:`CPU_MAX_BATCH`.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_MAX_BATCH
    peaks = []
    for rows in (1, 4):
        x = torch.zeros(rows, 3, image_size, image_size, device=device)
        t = torch.full((rows,), 500, dtype=torch.long, device=device)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with autocast(device, autocast_dtype):
            model(x, t)
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device) - base)
    per_row = max(1, math.ceil((peaks[1] - peaks[0]) / 3))
    free, _ = torch.cuda.mem_get_info(device)
    return rows_that_fit(free, peaks[0] - per_row, per_row, fraction=fraction, cap=cap)
