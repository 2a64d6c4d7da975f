"""Helpers shared by the benchmarks: data splits, generated image sets (cached on disk), bar plots.

Generated sets are the expensive part of ``generation.py`` and ``downstream.py`` (hundreds of DDIM
decodes on a CPU), and both use the same ones, so they are kept in ``benchmarks/cache/`` under a name
that holds everything they depend on (pair sha256, count, steps, bf16, seed, sources sha256).
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import torch

from progaug.data.splits import load_splits
from progaug.data.tiles import TileSet
from progaug.evaluation import generated
from progaug.evaluation.generated import dihedral_cycle
from progaug.evaluation.pipeline import pair_sha256, pair_training

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("PROGAUG_BENCH_CACHE", ROOT / "benchmarks" / "cache"))
"""Where generated sets are kept (``$PROGAUG_BENCH_CACHE`` overrides; the tests use a temporary folder)."""

__all__ = ["CACHE", "ROOT", "bar_panels", "bar_plot", "command_line", "dihedral_cycle", "final_stage", "finish_args", "heldout", "load_splits", "margin_calibration_of", "open_benchmark", "pair_sha256", "pair_training", "read_report", "save_figure",
           "repo_relative", "require_positive", "unconditional", "write_report"]


def command_line(script: str, argv) -> str:
    """The command that produced a result, for the reports (shell-quoted: it can be pasted back)."""
    return shlex.join(["python", f"benchmarks/{script}", *(sys.argv[1:] if argv is None else argv)])


def repo_relative(value):
    """An absolute path inside the repository as a path relative to it (``progaug/pairs/hgsc-demo``), so
    results name no folder of the machine that made them; any other value as it is."""
    if not isinstance(value, (str, os.PathLike)) or not os.path.isabs(value):
        return value
    try:
        return Path(value).resolve().relative_to(ROOT).as_posix()
    except ValueError:  # outside the repository
        return str(value)


def heldout(splits: dict[str, TileSet], cls: str) -> torch.Tensor | None:
    """uint8 tiles of ``cls`` from the validation and test splits, or None when there are none."""
    parts = [splits[s].of_class(cls).images for s in ("val", "test") if s in splits]
    return torch.cat(parts) if parts else None


def spread_heldout(splits: dict[str, TileSet], cls: str, n: int, device: str) -> torch.Tensor:
    """``min(n, available)`` held-out tiles of ``cls`` (:func:`heldout`), evenly spaced through them, as float
    images in ``[-1, 1]`` on ``device``: the sources of the benchmarks that compare two ways of generating."""
    from progaug.data.tiles import to_model_range

    tiles = heldout(splits, cls)
    pick = torch.linspace(0, len(tiles) - 1, min(n, len(tiles))).round().long()
    return to_model_range(tiles[pick]).to(device)


def final_stage(pair, sources: torch.Tensor, n: int, *, steps: int, device: str, bf16: bool, batch_size: int = 64,
                decode_stride: int = 1, decode_fine: int = 0) -> torch.Tensor:
    """:func:`progaug.evaluation.generated.final_stage` kept in :data:`CACHE`."""
    return generated.final_stage(pair, sources, n, steps=steps, device=device, bf16=bf16, batch_size=batch_size, cache_dir=CACHE,
                                 decode_stride=decode_stride, decode_fine=decode_fine)


def parse_schedule(text: str) -> tuple[int, int]:
    """:func:`progaug.generator.parse_schedule` as an argparse ``type``: ``"2:10"`` -> ``(2, 10)``.

    Raises:
        argparse.ArgumentTypeError: What :func:`progaug.generator.parse_schedule` refuses, with its message.
    """
    import argparse

    from progaug.generator import parse_schedule as parse

    try:
        return parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def unconditional(pair, n: int, *, steps: int, device: str, bf16: bool, seed: int = 1234, batch_size: int = 64) -> torch.Tensor:
    """:func:`progaug.evaluation.generated.unconditional` kept in :data:`CACHE`."""
    return generated.unconditional(pair, n, steps=steps, device=device, bf16=bf16, seed=seed, batch_size=batch_size, cache_dir=CACHE)


def margin_calibration_of(pair):
    """``pair``'s margin calibration (:func:`progaug.generator.margin_calibration_for`), or SystemExit with its
    message when the pair has none or one of other weights."""
    from progaug.generator import GenerationConfig, margin_calibration_for

    try:
        return margin_calibration_for(pair, GenerationConfig(labels="margin"))
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


def save_figure(fig, path: Path, dpi: int = 120) -> None:
    """Lay out ``fig``, write it to ``path`` as PNG and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def bar_plot(path: Path, names: list[str], series: dict[str, tuple[list[float], list[float] | None]], *, ylabel: str, title: str,
             ylim: tuple[float, float] | None = None) -> None:
    """Grouped bars (one group per name, one bar per series, optional error bars) saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(names)), 3.8))
    for i, (label, (values, errors)) in enumerate(series.items()):
        ax.bar(np.arange(len(names)) + i * width, values, width, yerr=errors, label=label, capsize=3)
    ax.set_xticks(np.arange(len(names)) + width * (len(series) - 1) / 2, names, rotation=15)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(axis="y", alpha=0.3)
    if len(series) > 1:
        ax.legend()
    save_figure(fig, path, dpi=100)


def bar_panels(path: Path, names: list[str], panels: dict[str, list[float]]) -> None:
    """One bar chart per metric, side by side, saved as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6), squeeze=False)
    for ax, (title, values) in zip(axes[0], panels.items()):
        ax.bar(names, values, color="tab:blue")
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=20)
    save_figure(fig, path, dpi=100)


def require_positive(parser, args, names) -> None:
    """``parser.error`` (exit 2, the flag named) for the first of ``names`` on ``args`` that is below 1."""
    for name in names:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")


def finish_args(parser, argv, name: str, positive: tuple[str, ...]):
    """The flags every generating benchmark ends with (``--device``, ``--out`` defaulting to
    ``benchmarks/results/<name>``, the ``RuntimeConfig`` flags), then parse ``argv`` and check that
    ``positive`` flags are >= 1."""
    from progaug.cli_args import add_config_arguments
    from progaug.runtime import RuntimeConfig

    parser.add_argument("--device", default="cpu", help="(default: cpu)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / name), help="path stem of the outputs")
    add_config_arguments(parser, RuntimeConfig, exclude=("channels_last", "compile"))
    args = parser.parse_args(argv)
    require_positive(parser, args, positive)
    return args


def read_report(path: str | os.PathLike[str], name: str | None = None) -> dict:
    """A result JSON that a reading script was given (a downstream report, mostly): the object it holds.

    Args:
        path: the file.
        name: how the command line named it, when not by the path alone (``--report a=PATH``); put before the path.

    Raises:
        SystemExit: the file cannot be read, is not JSON or holds no JSON object; the message names the file.
    """
    import json

    where = f"{name}={path}" if name else str(path)
    try:
        res = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:  # ValueError: JSONDecodeError and undecodable bytes
        raise SystemExit(f"{where}: cannot read a report JSON there ({err})") from None
    if not isinstance(res, dict):
        raise SystemExit(f"{where}: cannot read a report JSON there (it holds a {type(res).__name__}, not an object)")
    return res


def write_report(res: dict, out: str | os.PathLike[str] | None, markdown, plot) -> None:
    """Write a result as ``out.json``, ``out.md`` (``markdown(res)``) and ``out.png`` (``plot(res, path)``),
    creating the folder, and print the Markdown (:func:`progaug.evaluation.report.write_report`); with ``out``
    None or empty (a script run without ``--out``) only print the Markdown."""
    from progaug.evaluation.report import write_report as write

    if not out:
        print(markdown(res))
    else:
        write(res, Path(out), markdown, plot)


def open_benchmark(args):
    """What every generating benchmark starts with: apply ``--threads`` & co (``RuntimeConfig`` flags on
    ``args``), load ``args.pair`` on ``args.device`` and the splits of ``args.data`` at the pair's size.

    Returns:
        ``(applied runtime, pair, splits)``.
    """
    from progaug.cli_args import config_from_args
    from progaug.hub import load_pair
    from progaug.runtime import RuntimeConfig, apply_runtime

    applied = apply_runtime(config_from_args(RuntimeConfig, args), args.device)
    pair = load_pair(args.pair, device=args.device)
    return applied, pair, load_splits(args.data, pair.image_size)
