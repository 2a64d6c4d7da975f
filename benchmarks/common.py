"""Helpers shared by the benchmarks: data splits, generated image sets (cached on disk), bar plots.

Generated sets are the expensive part of ``generation.py`` and ``downstream.py`` (hundreds of DDIM
decodes on a CPU), and both use the same ones, so they are kept in ``benchmarks/cache/`` under a name
that holds everything they depend on (pair sha256, count, steps, bf16, seed, sources sha256).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import torch

from progaug.data import TileSpec, folder_tiles, hgsc_tiles
from progaug.data.tiles import TileSet, dihedral, to_model_range, to_uint8
from progaug.diffusion import DDIMSchedule, bridge, sample
from progaug.runtime import autocast, autocast_dtype

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("PROGAUG_BENCH_CACHE", ROOT / "benchmarks" / "cache"))
"""Where generated sets are kept (``$PROGAUG_BENCH_CACHE`` overrides; the tests use a temporary folder)."""

__all__ = ["CACHE", "ROOT", "bar_panels", "bar_plot", "command_line", "dihedral_cycle", "final_stage", "heldout", "load_splits", "open_benchmark", "pair_sha256", "pair_training",
           "progressive_bank", "repo_relative", "require_positive", "unconditional", "write_report"]


def command_line(script: str, argv) -> str:
    """The command that produced a result, for the reports."""
    return " ".join(["python", f"benchmarks/{script}", *(sys.argv[1:] if argv is None else argv)])


def repo_relative(value):
    """An absolute path inside the repository as a path relative to it (``progaug/pairs/hgsc-demo``), so
    results name no folder of the machine that made them; any other value as it is."""
    if not isinstance(value, (str, os.PathLike)) or not os.path.isabs(value):
        return value
    try:
        return Path(value).resolve().relative_to(ROOT).as_posix()
    except ValueError:  # outside the repository
        return str(value)


def load_splits(data: str, size: int) -> dict[str, TileSet]:
    """Tiles per split: ``'hgsc'`` (the bundled demo: train / val / test by spatial block), a root with
    ``train/``, ``val/``, ``test/`` class folders, or a plain ``root/<class>/`` folder (train only)."""
    if data == "hgsc":
        spec = TileSpec(tile_size=size, stride=size // 2)
        return {s: hgsc_tiles(s, spec) for s in ("train", "val", "test")}
    root = Path(data)
    if (root / "train").is_dir():
        return {s: folder_tiles(root / s, tile_size=size) for s in ("train", "val", "test") if (root / s).is_dir()}
    return {"train": folder_tiles(root, tile_size=size)}


def heldout(splits: dict[str, TileSet], cls: str) -> torch.Tensor | None:
    """uint8 tiles of ``cls`` from the validation and test splits, or None when there are none."""
    parts = [splits[s].of_class(cls).images for s in ("val", "test") if s in splits]
    return torch.cat(parts) if parts else None


def dihedral_cycle(x: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` images from ``x``: ``x`` in order, then again flipped / rotated when ``n > len(x)``."""
    return torch.stack([dihedral(x[i % len(x)], (i // len(x)) % 8) for i in range(n)])


def pair_sha256(pair) -> dict:
    """``{"source": ..., "target": ...}``: the sha256 of the pair's weight files as its card records them, the
    key every result JSON carries so that a figure of an older pair can be found by a script."""
    return {role: pair.card[role].get("sha256") for role in ("source", "target")}


def pair_training(pair) -> dict:
    """The pair card's training budget (steps, wall time, device), so figures name the weights they used."""
    training = pair.card.get("training", {})
    return {k: training.get(k) for k in ("steps_done", "wall_time_s", "device")}


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.contiguous().numpy().tobytes() if isinstance(p, torch.Tensor) else repr(p).encode())
    return h.hexdigest()[:16]


def _cached(name: str, key: str, make) -> torch.Tensor:
    from safetensors.torch import load_file, save

    from progaug.fileio import atomic_write_bytes

    path = CACHE / f"{name}-{key}.safetensors"
    if path.is_file():
        print(f"reusing {path}", flush=True)
        return load_file(path)["images"]
    images = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save({"images": images.contiguous()}))
    return images


def final_stage(pair, sources: torch.Tensor, n: int, *, steps: int, device: str, bf16: bool, batch_size: int = 64) -> torch.Tensor:
    """``n`` full-depth ADD translations (eq. 4) of uint8 source tiles (cycled with flips / rotations):
    ``(n, 3, S, S)`` uint8."""

    @torch.no_grad()
    def make() -> torch.Tensor:
        sched = DDIMSchedule.from_config(pair.diffusion, steps)
        x = to_model_range(dihedral_cycle(sources, n))
        out = []
        for i, chunk in enumerate(x.split(batch_size)):
            with autocast(device, autocast_dtype(bf16)):
                out.append(to_uint8(bridge(pair.source, pair.target, chunk.to(device), sched, clip=pair.diffusion.clip_denoised).cpu()))
            print(f"final-stage ADD: {min((i + 1) * batch_size, n)}/{n}", flush=True)
        return torch.cat(out)

    key = _digest(pair.card["source"].get("sha256"), pair.card["target"].get("sha256"), n, steps, bf16, sources)
    return _cached("final", key, make)


def progressive_bank(pair, sources: torch.Tensor, measure: str, *, steps: int, levels: int, bf16: bool, device: str, max_batch: int,
                     chunk: int = 32) -> dict:
    """Progressive images (paper 2.1-2.3) of every uint8 source tile under one label measure, made in chunks
    of ``chunk`` tiles and kept per chunk (a stopped run keeps what it made).

    Returns:
        ``{"images": (M, L, 3, S, S) uint8, "labels": (M, L) float32, "depths": (M, L) int64,
        "evals_per_image": U-Net evaluations per output image (of the chunks made in this call, else of
        all)}``; level ``L`` (1.0) is always the full eq. 4 translation.
    """
    from safetensors.torch import load_file, save

    from progaug.fileio import atomic_write_bytes
    from progaug.frequency import default_levels
    from progaug.generator import generate_progressive

    parts, made, evals = [], 0, 0
    for start in range(0, len(sources), chunk):
        part = sources[start:start + chunk]
        key = _digest(pair.card["source"].get("sha256"), pair.card["target"].get("sha256"), measure, steps, levels, bf16, part)
        path = CACHE / f"progressive-{measure}-{key}.safetensors"
        if path.is_file():
            parts.append(load_file(path))
            continue
        with torch.no_grad():
            r = generate_progressive(pair.source, pair.target, to_model_range(part).to(device), levels=default_levels(levels), steps=steps,
                                     diffusion=pair.diffusion, measure=measure, max_batch=max_batch, autocast_dtype=autocast_dtype(bf16))
        entry = {"images": to_uint8(r.images).cpu().contiguous(), "labels": r.soft_labels.float().cpu().contiguous(),
                 "depths": r.depths.cpu().contiguous(), "evals": torch.tensor([r.model_evaluations])}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, save(entry))
        parts.append(entry)
        made, evals = made + r.images.shape[0] * r.images.shape[1], evals + r.model_evaluations
        print(f"progressive [{measure}]: {min(start + chunk, len(sources))}/{len(sources)} sources", flush=True)
    out = {name: torch.cat([p[name] for p in parts]) for name in ("images", "labels", "depths")}
    total = sum(int(p["evals"]) for p in parts)
    out["evals_per_image"] = evals / made if made else total / max(1, out["labels"].numel())
    return out


def unconditional(pair, n: int, *, steps: int, device: str, bf16: bool, seed: int = 1234, batch_size: int = 64) -> torch.Tensor:
    """``n`` unconditional DDIM samples of the target model (an IDDPM-style generator): uint8."""

    @torch.no_grad()
    def make() -> torch.Tensor:
        sched = DDIMSchedule.from_config(pair.diffusion, steps)
        gen = torch.Generator().manual_seed(seed)
        s = pair.image_size
        out = []
        for start in range(0, n, batch_size):
            noise = torch.randn(min(batch_size, n - start), 3, s, s, generator=gen).to(device)
            with autocast(device, autocast_dtype(bf16)):
                out.append(to_uint8(sample(pair.target, noise, sched, clip=pair.diffusion.clip_denoised).cpu()))
            print(f"unconditional: {min(start + batch_size, n)}/{n}", flush=True)
        return torch.cat(out)

    key = _digest(pair.card["target"].get("sha256"), n, steps, bf16, seed)
    return _cached("unconditional", key, make)


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
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def require_positive(parser, args, names) -> None:
    """``parser.error`` (exit 2, the flag named) for the first of ``names`` on ``args`` that is below 1."""
    for name in names:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")


def write_report(res: dict, out: Path, markdown, plot) -> None:
    """Write a result as ``out.json``, ``out.md`` (``markdown(res)``) and ``out.png`` (``plot(res, path)``),
    creating the folder, and print the Markdown."""
    import json

    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    text = markdown(res)
    out.with_suffix(".md").write_text(text)
    plot(res, out.with_suffix(".png"))
    print(text)


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
