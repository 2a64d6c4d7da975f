"""Generated image sets of a pair for the evaluation protocol, optionally kept on disk.

Each set is named by everything it depends on (the pair's weight sha256, measure, steps, levels, bf16,
seed, the source tiles' bytes), so a second run with other seeds or another N only trains classifiers.
``cache_dir=None`` keeps nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch

from progaug.generator import GenerationConfig
from progaug.data.tiles import dihedral, to_model_range, to_uint8
from progaug.diffusion import DDIMSchedule, bridge, sample
from progaug.runtime import autocast, autocast_dtype

__all__ = ["dihedral_cycle", "final_stage", "margin_relabelled", "progressive_bank", "progressive_cached", "unconditional",
           "unconditional_cached"]


def dihedral_cycle(x: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` images from ``x``: ``x`` in order, then again flipped / rotated when ``n > len(x)``."""
    return torch.stack([dihedral(x[i % len(x)], (i // len(x)) % 8) for i in range(n)])


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.contiguous().numpy().tobytes() if isinstance(p, torch.Tensor) else repr(p).encode())
    return h.hexdigest()[:16]


def _load(path: Path | None) -> dict | None:
    from safetensors.torch import load_file

    if path is None or not path.is_file():
        return None
    return load_file(path)


def _store(path: Path | None, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    from progaug.fileio import atomic_write_bytes

    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save({k: v.contiguous() for k, v in tensors.items()}))


def _cache_path(cache_dir: Path | None, name: str, key: str) -> Path | None:
    """Where the set ``name`` of digest ``key`` is kept in ``cache_dir`` (None: nowhere)."""
    return None if cache_dir is None else Path(cache_dir) / f"{name}-{key}.safetensors"


def _cached(cache_dir: Path | None, name: str, key: str, make: Callable[[], torch.Tensor], field: str = "images") -> torch.Tensor:
    """``make()``, or what an earlier call kept in ``cache_dir`` under ``name`` and ``key`` (stored as ``field``)."""
    path = _cache_path(cache_dir, name, key)
    stored = _load(path)
    if stored is not None:
        print(f"reusing {path}", flush=True)
        return stored[field]
    made = make()
    _store(path, {field: made})
    return made


def final_stage(pair, sources: torch.Tensor, n: int, *, steps: int, device: str, bf16: bool, batch_size: int = 64,
                cache_dir: Path | None = None, decode_stride: int = 1, decode_fine: int = 0) -> torch.Tensor:
    """``n`` full-depth ADD translations (eq. 4) of uint8 source tiles (cycled with flips / rotations):
    ``(n, 3, S, S)`` uint8. ``decode_stride`` > 1 decodes ``decode_stride`` states per target-model call, the last
    ``decode_fine`` one per call (:func:`progaug.diffusion.sample`); the set's name records them (stride 1 and
    fine 0 keep the name it always had)."""

    @torch.no_grad()
    def make() -> torch.Tensor:
        sched = DDIMSchedule.from_config(pair.diffusion, steps)
        x = to_model_range(dihedral_cycle(sources, n))
        out = []
        for i, chunk in enumerate(x.split(batch_size)):
            with autocast(device, autocast_dtype(bf16)):
                out.append(to_uint8(bridge(pair.source, pair.target, chunk.to(device), sched, clip=pair.diffusion.clip_denoised,
                                           stride=decode_stride, fine=decode_fine).cpu()))
            print(f"final-stage ADD: {min((i + 1) * batch_size, n)}/{n}", flush=True)
        return torch.cat(out)

    strided = () if decode_stride == 1 else (("decode_stride", decode_stride),)
    strided += () if decode_fine == 0 else (("decode_fine", decode_fine),)
    key = _digest(pair.card["source"].get("sha256"), pair.card["target"].get("sha256"), n, steps, bf16, sources, *strided)
    return _cached(cache_dir, "final", key, make)


def progressive_bank(pair, sources: torch.Tensor, generation: GenerationConfig, num_levels: int, *, chunk: int = 32,
                     cache_dir: Path | None = None, progress: Callable[[int], None] | None = None) -> dict:
    """Progressive images (paper 2.1-2.3) of every uint8 source tile, made in chunks of ``chunk`` tiles by
    one :class:`progaug.generator.ProgressiveGenerator` and kept per chunk (a stopped run keeps what it made).

    Args:
        pair: The pair.
        sources: ``(M, 3, S, S)`` uint8 source-class tiles.
        generation: Steps, measure, rows per call, bf16 and device (``bf16=None`` is resolved for the
            device: the chunk's name records the precision used).
        num_levels: Levels per tile, evenly spaced in (0, 1].
        chunk: Source tiles per chunk (the unit kept in ``cache_dir``).
        cache_dir: Where the chunks are kept (None: nowhere).
        progress: Called with the number of source tiles of each finished (or reused) chunk.

    Returns:
        ``{"images": (M, L, 3, S, S) uint8, "labels": (M, L) float32, "depths": (M, L) int64,
        "evals_per_image": U-Net evaluations per output image (of the chunks made in this call, else of
        all)}``; level ``L`` (1.0) is always the full eq. 4 translation.
    """
    from progaug.frequency import default_levels
    from progaug.generator import ProgressiveGenerator, Variant

    device = generation.device or "cpu"
    generator = ProgressiveGenerator(pair, generation)
    resolved = generator.resolved(device)
    measure = resolved.measure
    parts, made, evals = [], 0, 0
    for start in range(0, len(sources), chunk):
        part = sources[start:start + chunk]
        path = _chunk_path(pair, resolved, num_levels, part, cache_dir)
        entry = _load(path)
        if entry is None:
            r = generator(to_model_range(part).to(device), default_levels(num_levels))
            entry = {"images": to_uint8(r.images).cpu(), "labels": r.soft_labels.float().cpu(), "depths": r.depths.cpu(),
                     "evals": torch.tensor([r.model_evaluations])}
            _store(path, entry)
            made, evals = made + r.images.shape[0] * r.images.shape[1], evals + r.model_evaluations
            variant = Variant(measure, resolved.decode_stride, resolved.decode_fine).name
            print(f"progressive [{variant}]: {min(start + chunk, len(sources))}/{len(sources)} sources", flush=True)
        parts.append(entry)
        if progress is not None:
            progress(len(part))
    out = {name: torch.cat([p[name] for p in parts]) for name in ("images", "labels", "depths")}
    total = sum(int(p["evals"]) for p in parts)
    out["evals_per_image"] = evals / made if made else total / max(1, out["labels"].numel())
    return out


def _chunk_path(pair, resolved: GenerationConfig, num_levels: int, part: torch.Tensor, cache_dir: Path | None) -> Path | None:
    """Where the chunk of source tiles ``part`` is kept under the resolved ``generation`` (None: nowhere)."""
    precision = "bf16 decodes" if resolved.bf16 else False  # bf16 reaches the decodes only (the inversion and labels stay float32)
    stride = [("decode_stride", resolved.decode_stride)] if resolved.decode_stride != 1 else []  # keys of stride 1 unchanged
    stride += [("decode_fine", resolved.decode_fine)] if resolved.decode_fine else []  # and of fine 0
    key = _digest(pair.card["source"].get("sha256"), pair.card["target"].get("sha256"), resolved.measure, resolved.steps, num_levels,
                  precision, *stride, part)
    return _cache_path(cache_dir, f"progressive-{resolved.measure}", key)


def progressive_cached(pair, sources: torch.Tensor, generation: GenerationConfig, num_levels: int, *, chunk: int = 32,
                       cache_dir: Path | None = None) -> bool:
    """Whether :func:`progressive_bank` of the same arguments would only read ``cache_dir`` (every chunk is kept)."""
    from progaug.generator import ProgressiveGenerator

    if cache_dir is None:
        return False
    resolved = ProgressiveGenerator(pair, generation).resolved(generation.device or "cpu")
    return all(_chunk_path(pair, resolved, num_levels, sources[start:start + chunk], cache_dir).is_file()
               for start in range(0, len(sources), chunk))


def margin_relabelled(pair, images: torch.Tensor, *, device: str, max_batch: int = 64, cache_dir: Path | None = None) -> torch.Tensor:
    """Calibrated margin labels p(B) (:func:`progaug.margin.margin_labels`) of generated uint8 images: the labels
    ``labels="margin"`` gives the same images, read from the stored 8-bit images (the generator reads them before
    rounding; the difference is the rounding's). Kept in ``cache_dir`` under the images' and calibration's digest.

    Args:
        pair: The pair; its ``margin_calibration`` labels.
        images: ``(..., 3, S, S)`` uint8.
        device: Where the models run.
        max_batch: Rows per U-Net call.

    Returns:
        ``images.shape[:-3]`` float32 in (0, 1).

    Raises:
        ValueError: The pair has no margin calibration (the message says how to fit one).
    """
    from progaug.diffusion import training_alpha_bar
    from progaug.generator import GenerationConfig, margin_calibration_for
    from progaug.margin import margin_labels

    calibration = margin_calibration_for(pair, GenerationConfig(labels="margin"))
    flat = images.reshape(-1, *images.shape[-3:])

    @torch.no_grad()
    def make() -> torch.Tensor:
        out = []
        for i, part in enumerate(flat.split(max_batch * 8)):
            out.append(margin_labels(pair.source, pair.target, training_alpha_bar(pair.diffusion), to_model_range(part).to(device),
                                     calibration, max_batch=max_batch))
            print(f"margin labels: {min((i + 1) * max_batch * 8, len(flat))}/{len(flat)}", flush=True)
        return torch.cat(out)

    key = _digest(pair.card["source"].get("sha256"), pair.card["target"].get("sha256"), calibration.identity(), flat)
    return _cached(cache_dir, "margin-labels", key, make, field="labels").view(images.shape[:-3])


def _unconditional_key(pair, n: int, steps: int, bf16: bool, seed: int) -> str:
    return _digest(pair.card["target"].get("sha256"), n, steps, bf16, seed)


def unconditional_cached(pair, n: int, *, steps: int, bf16: bool, seed: int = 1234, cache_dir: Path | None = None) -> bool:
    """Whether :func:`unconditional` of the same arguments would only read ``cache_dir``."""
    path = _cache_path(cache_dir, "unconditional", _unconditional_key(pair, n, steps, bf16, seed))
    return path is not None and path.is_file()


def unconditional(pair, n: int, *, steps: int, device: str, bf16: bool, seed: int = 1234, batch_size: int = 64,
                  cache_dir: Path | None = None) -> torch.Tensor:
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

    return _cached(cache_dir, "unconditional", _unconditional_key(pair, n, steps, bf16, seed), make)
