"""``progaug precompute``: a folder of progressive, soft-labelled samples made ahead of training.

The folder's format (``run.json``, ``images/``, ``records/``, ``labels.csv``, ``manifest.json``,
``preview.png``) is described, written and read in :mod:`progaug.cache`; this module generates.

Each file is written to a temporary name and renamed, and a group's record only after its images, so a
run killed at any moment (even ``kill -9``) is completed by ``--resume`` without recomputing or
trusting half-written files. Sample ``i`` depends only on the pair, the sources, the settings and the
seed — not on ``--batch-size`` nor on the number of ``torchrun`` processes (every U-Net call has
exactly ``max_batch`` rows; bit-identical on CPU at the same number of threads per process).
``--batch-size`` may therefore change on ``--resume``; ``--max-batch`` may not (left out, the
resumed run keeps the stored one). A folder written before ``measure`` existed resumes as ``"paper"``.
The generation settings are a :class:`progaug.generator.GenerationConfig` (:attr:`PrecomputeConfig.generation`)
run by one :class:`progaug.generator.ProgressiveGenerator`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from progaug.cache import (
    CSV_FIELDS, RUN_FILE, finished_manifest, image_name, not_resumable, read_record, read_run_settings, record_path, write_labels,
    write_manifest, write_record, write_run_settings,
)
from progaug.fileio import LOCK_NAME, atomic_write_bytes, lock_folder, remove_temporary_files
from progaug.config import JsonConfig, describe_differences
from progaug.data.tiles import dihedral
from progaug.errors import check_int, device_setting
from progaug.frequency import DEFAULT_RADIUS, default_levels
from progaug.generator import DECODE_FINE_HELP, DECODE_STRIDE_HELP, LABELS_HELP, GenerationConfig, ProgressiveGenerator, margin_calibration_for, resolve_labels
from progaug.labels import DEFAULT_MEASURE, MEASURE_HELP, Measure
from progaug.pair import Pair
from progaug.runtime import RuntimeConfig, barrier, command_line, torchrun_setup

__all__ = ["CSV_FIELDS", "PrecomputeConfig", "precompute"]

MAX_SAMPLES = 10_000_000
"""The most samples one folder holds (one PNG each in ``images/``)."""


@dataclasses.dataclass(frozen=True)
class PrecomputeConfig(JsonConfig):
    """Settings of a precomputed set.

    Attributes:
        n: Number of progressive samples (``n / num_levels`` source groups, rounded up).
        num_levels: Soft-label levels per source image, evenly spaced in (0, 1] (adaptive depth).
        steps: DDIM steps ``S``.
        batch_size: Source images per generator call (default: ``max_batch``, so the inversion
            fills its calls; no effect on the results).
        max_batch: Rows per U-Net call, fixed so that results do not depend on ``batch_size``
            (default: :func:`progaug.runtime.auto_max_batch`, 32 on CPUs, memory-sized on CUDA).
        measure: Label measure (:data:`progaug.labels.MEASURES`): ``"paper"`` (eq. 7-9),
            ``"reference"`` (the authors' code's band) or ``"preview"`` (the target model's one-step
            preview of each state; ``steps`` more U-Net evaluations per source group).
        radius: High-pass cut-off of the ``"paper"`` measure.
        bf16: Run the U-Nets under bf16 autocast; None (default): where the device computes bf16
            natively (:func:`progaug.runtime.native_bf16`). A run stores the value it used.
        seed: Seed of the source order and of the flips/rotations of repeated sources.
        decode_stride: States per DDIM move of the decodes (:attr:`GenerationConfig.decode_stride`): 1, the
            paper's, decodes depth ``d`` in ``d`` moves; ``s > 1`` in ``ceil(d / s)`` (other images, same
            labels). A run made before the setting existed reads as 1.
        decode_fine: States decoded one per move whatever the stride (:attr:`GenerationConfig.decode_fine`);
            a run made before the setting existed reads as 0.
        labels: Where the soft labels come from (:attr:`GenerationConfig.labels`): ``"auto"`` (default:
            ``"margin"`` where the pair carries a ``margin_calibration.json``, else ``"measure"``; the run records
            the one it used), ``"measure"`` or ``"margin"`` (each image's calibrated denoising margin; needs the pair's
            ``margin_calibration.json``, which the run's settings then record). A run made before the setting
            existed reads as ``"measure"``.
        device: Where the U-Nets run: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ... (default: CUDA when available;
            under ``torchrun`` each rank takes its local GPU). Not part of a run's identity: a resume may
            move to another device.
    """

    n: int = dataclasses.field(
        default=5000,
        metadata={
            "help": "Number of progressive samples (n / num_levels source groups, rounded up); under torchrun write "
            "--num-samples (torchrun's own parser reads --n as an abbreviation of its flags and stops)",
            "aliases": ("--num-samples",),
        },
    )
    num_levels: int = dataclasses.field(
        default=10, metadata={"help": "Soft-label levels per source image, evenly spaced in (0, 1] (adaptive depth)"}
    )
    steps: int | None = dataclasses.field(
        default=None, metadata={"help": "DDIM steps S (default: the pair's diffusion.sampling_steps)"}
    )
    batch_size: int | None = dataclasses.field(
        default=None,
        metadata={"help": "Source images per generator call (default: max_batch, so the inversion fills its calls; "
                          "no effect on the results)"},
    )
    max_batch: int | None = dataclasses.field(
        default=None,
        metadata={"help": "Rows per U-Net call, fixed so that results do not depend on batch_size (default: automatic, "
                          "32 on CPUs, memory-sized on CUDA)"},
    )
    measure: Measure = dataclasses.field(
        default=DEFAULT_MEASURE,
        metadata={"help": MEASURE_HELP},
    )
    radius: float = dataclasses.field(default=DEFAULT_RADIUS, metadata={"help": "High-pass cut-off of the paper measure"})
    bf16: bool | None = dataclasses.field(
        default=None,
        metadata={"help": "Run the U-Nets under bf16 autocast (default: where the device computes bf16 natively: CUDA with "
                          "bf16, CPUs with AVX512-BF16 or AMX; the run's manifest records what was used)"},
    )
    seed: int = dataclasses.field(
        default=0, metadata={"help": "Seed of the source order and of the flips/rotations of repeated sources"}
    )
    decode_stride: int = dataclasses.field(default=1, metadata={"help": DECODE_STRIDE_HELP})
    decode_fine: int = dataclasses.field(default=0, metadata={"help": DECODE_FINE_HELP})
    labels: str = dataclasses.field(default="auto", metadata={"help": LABELS_HELP})
    device: str | None = dataclasses.field(
        default=None, metadata={"help": "cpu, cuda, cuda:1 ... (default: cuda when available; under torchrun the local GPU)"}
    )

    def __post_init__(self) -> None:
        check_int("n", self.n, high=MAX_SAMPLES)
        check_int("num_levels", self.num_levels)
        check_int("batch_size", self.batch_size, allow_none=True)
        object.__setattr__(self, "device", device_setting("device", self.device))
        self.generation  # the generation settings are checked by GenerationConfig, once, as everywhere
        if self.steps is not None and self.num_levels > self.steps:
            raise ValueError(f"`num_levels` {self.num_levels} exceeds `steps` {self.steps}: each level needs its own depth")

    @property
    def generation(self) -> GenerationConfig:
        """The generation settings of this set (``steps``, ``measure``, ``radius``, ``max_batch``, ``bf16``, ``decode_stride``, ``decode_fine``, ``labels``),
        the same object the transform and ``progaug progressive`` take; they stay flat fields here because
        they are the ``progaug precompute`` flags and the keys of ``run.json``."""
        return GenerationConfig(steps=self.steps, measure=self.measure, radius=self.radius, max_batch=self.max_batch, bf16=self.bf16,
                                decode_stride=self.decode_stride, decode_fine=self.decode_fine, labels=self.labels)

    @property
    def groups(self) -> int:
        """Number of source groups (one inversion each)."""
        return -(-self.n // self.num_levels)


@dataclasses.dataclass(frozen=True)
class _Context:
    """What every group of one precompute run shares."""

    pair: Pair
    sources: torch.Tensor  # (N, 3, S, S) uint8
    names: tuple[str, ...]
    plan: list[tuple[int, int]]  # (source index, dihedral op) per group
    config: PrecomputeConfig
    out: Path


def _group_plan(config: PrecomputeConfig, n_sources: int) -> list[tuple[int, int]]:
    """``(source index, dihedral op)`` per group: a seeded order of the sources, then again with a
    flip/rotation (tissue has no orientation) when more groups than sources are asked for."""
    order = torch.randperm(n_sources, generator=torch.Generator().manual_seed(config.seed)).tolist()
    return [(order[g % n_sources], (g // n_sources) % 8) for g in range(config.groups)]


def _png_bytes(image: torch.Tensor) -> bytes:
    from PIL import Image

    from progaug.data.tiles import to_uint8

    arr = to_uint8(image).permute(1, 2, 0).cpu().numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def precompute(
    pair: Pair,
    sources: torch.Tensor,
    source_names: list[str] | tuple[str, ...],
    out: str | os.PathLike[str],
    config: PrecomputeConfig | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    runtime: RuntimeConfig | None = None,
) -> Path:
    """Generate ``config.n`` progressive samples from source-class tiles into ``out``.

    Args:
        pair: The trained pair (models may be on any device; they are moved to ``device``).
        sources: ``(N, 3, S, S)`` uint8 source-class tiles at the pair's size.
        source_names: ``N`` names recorded in ``labels.csv``.
        out: Output folder.
        config: Settings, the device included.
        resume: Complete an interrupted run in ``out`` (its settings must match).
        progress: Show a tqdm bar (samples/s) on rank 0.
        runtime: Channels-last / ``torch.compile`` for the U-Nets (threads and allocator are set by
            the caller, see :func:`progaug.runtime.apply_runtime`).

    Returns:
        The output folder.

    Raises:
        TypeError: ``sources`` is not a tensor.
        ValueError: Empty or wrongly shaped sources, or ``--resume`` with other settings.
        FileExistsError: ``out`` holds a run and ``resume`` is False.
    """
    config = config or PrecomputeConfig()
    _check_sources(sources, source_names, pair.image_size)
    if pair.classes[0] == pair.classes[1]:
        raise ValueError(f"the pair's source and target classes are both {pair.classes[0]!r}: a pair translates between two classes")
    out = Path(out)
    rank, world, device = torchrun_setup(config.device)
    pair.to(device)
    config = _resolve_batches(config, out, pair, device, resume)
    config = dataclasses.replace(config, labels=resolve_labels(config.labels, pair))  # run.json records what labelled
    settings = {
        "config": {k: v for k, v in config.to_dict().items() if k not in ("batch_size", "device")},
        "pair": {role: pair.card[role].get("sha256") for role in ("source", "target")},
        "classes": list(pair.classes),
        "sources_sha256": _tensor_digest(sources),
        "n_sources": int(sources.shape[0]),
    }
    calibration = margin_calibration_for(pair, config.generation)  # raises before anything is written when it is missing
    if calibration is not None:  # the labels depend on it: a resume with another calibration is another run
        settings["margin_calibration"] = calibration.identity()
    plan = _group_plan(config, sources.shape[0])
    context = _Context(pair, sources, tuple(source_names), plan, config, out)
    with contextlib.ExitStack() as stack:
        if rank == 0:
            stack.enter_context(lock_folder(out, "progaug precompute"))
            _prepare(out, settings, resume)
            if resume:
                _drop_bad_records(context)
        barrier(world)
        missing = [g for g in range(config.groups) if not record_path(out, g).is_file()]
        _generate(context, [g for g in missing if g % world == rank], rank, world, device, progress, runtime,
                  settings, redo=bool(missing))
    return out


def _generate(ctx: _Context, todo: list[int], rank: int, world: int, device, progress: bool, runtime: RuntimeConfig | None,
              settings: dict[str, Any], redo: bool) -> None:
    """Generate this rank's missing groups, then (rank 0) write ``labels.csv``, the preview and the manifest."""
    from tqdm import tqdm

    config, out, pair = ctx.config, ctx.out, ctx.pair
    generator = ProgressiveGenerator(pair, config.generation, runtime=runtime or RuntimeConfig(), fixed_batch=True)
    levels = default_levels(config.num_levels)
    bar = tqdm(total=_samples_in(todo, config), unit="img", disable=not progress or rank != 0, desc="precompute",
               dynamic_ncols=True)
    began = time.perf_counter()
    try:
        for start in range(0, len(todo), config.batch_size):
            groups = todo[start : start + config.batch_size]
            _run_groups(ctx, generator, groups, levels, device)
            bar.update(sum(len(_sample_ids(g, config)) for g in groups))
    finally:
        bar.close()  # ends the bar's line, also when a group fails
    seconds = time.perf_counter() - began
    barrier(world)
    if rank == 0:
        execution = {"device": str(device), "batch_size": config.batch_size, "max_batch": config.max_batch,
                     "threads": torch.get_num_threads(), "processes": world, "runtime": (runtime or RuntimeConfig()).to_dict(),
                     "samples_this_run_rank0": _samples_in(todo, config), "seconds_this_run_rank0": round(seconds, 2)}
        previous = finished_manifest(out)
        if not redo and previous is not None:  # a resume of a finished, intact set: keep the run that made it
            execution = previous.get("execution", execution)
        _finish(ctx, settings, execution)


def _resolve_batches(config: PrecomputeConfig, out: Path, pair: Pair, device, resume: bool) -> PrecomputeConfig:
    """Fill in the pair's ``steps``, the automatic ``max_batch`` and ``bf16`` (the stored ones on
    ``--resume``) and ``batch_size``; the filled-in config passes the same checks as a given one."""
    max_batch, bf16 = config.max_batch, config.bf16
    run_file = out / RUN_FILE
    if (max_batch is None or bf16 is None) and resume and run_file.is_file():
        stored = read_run_settings(run_file)
        try:
            max_batch = stored.get("config", {}).get("max_batch") if max_batch is None else max_batch
            bf16 = stored.get("config", {}).get("bf16") if bf16 is None else bf16
        except AttributeError as exc:
            raise ValueError(not_resumable(run_file, exc)) from exc
    generation = dataclasses.replace(config.generation, max_batch=max_batch, bf16=bf16 if isinstance(bf16, bool) else None)
    made = generation.resolved(pair, device)  # the one rule for steps, bf16 and the automatic max_batch
    return dataclasses.replace(config, steps=made.steps, bf16=made.bf16, max_batch=made.max_batch,
                               batch_size=config.batch_size or made.max_batch)


def _check_sources(sources: torch.Tensor, names, size: int) -> None:
    if not isinstance(sources, torch.Tensor):
        raise TypeError(f"`sources` must be a torch.Tensor of (N, 3, S, S) uint8 tiles, got {type(sources).__name__}")
    if sources.dtype != torch.uint8 or sources.ndim != 4 or sources.shape[1] != 3:
        raise ValueError(f"`sources` must be (N, 3, S, S) uint8 tiles, got {tuple(sources.shape)} {sources.dtype}")
    if sources.shape[0] == 0:
        raise ValueError("`sources` is empty: no source-class image to start from")
    if tuple(sources.shape[-2:]) != (size, size):
        raise ValueError(f"`sources` must be {size}x{size} tiles (the pair's size), got {tuple(sources.shape[-2:])}")
    if len(names) != sources.shape[0]:
        raise ValueError(f"`source_names` has {len(names)} entries for {sources.shape[0]} sources")


def _tensor_digest(x: torch.Tensor) -> str:
    return hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest()


def _prepare(out: Path, settings: dict[str, Any], resume: bool) -> None:
    run_file = out / RUN_FILE
    if run_file.is_file():
        if not resume:
            raise FileExistsError(f"{out} already holds a precomputed run: pass --resume to complete it, or choose another --out")
        differences = describe_differences(read_run_settings(run_file), json.loads(json.dumps(settings)))
        if differences:
            raise ValueError(f"--resume: {out} was made with other settings: " + "; ".join(differences))
    elif out.exists() and any(p.name != LOCK_NAME for p in out.iterdir()):
        raise FileExistsError(f"{out} exists and is not a precomputed run; choose an empty or new --out")
    for folder in (out, out / "images", out / "records"):  # left by a process killed mid-write; the lock is ours
        remove_temporary_files(folder)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "records").mkdir(exist_ok=True)
    write_run_settings(out, settings)


def _sample_ids(group: int, config: PrecomputeConfig) -> range:
    return range(group * config.num_levels, min((group + 1) * config.num_levels, config.n))


def _samples_in(groups: list[int], config: PrecomputeConfig) -> int:
    return sum(len(_sample_ids(g, config)) for g in groups)


def _run_groups(ctx: _Context, generator: ProgressiveGenerator, groups: list[int], levels, device) -> None:
    """Generate source groups ``groups`` and write their images, then each group's record."""
    from progaug.data.tiles import to_model_range

    pair, sources, names, plan, config, out = ctx.pair, ctx.sources, ctx.names, ctx.plan, ctx.config, ctx.out
    x = torch.stack([dihedral(to_model_range(sources[plan[g][0]]), plan[g][1]) for g in groups]).to(device)
    result = generator(x, levels)
    _check_finite_result(result, groups)
    for row, g in enumerate(groups):
        records, digests = [], {}
        for j, i in enumerate(_sample_ids(g, config)):
            name = image_name(i)
            data = _png_bytes(result.images[row, j])
            atomic_write_bytes(out / name, data)
            digests[name] = hashlib.sha256(data).hexdigest()
            depth = int(result.depths[row, j])
            records.append({
                "file": name, "source": names[plan[g][0]], "source_class": pair.classes[0], "target_class": pair.classes[1],
                "level": round(float(result.levels[j]), 6), "soft_label": round(float(result.soft_labels[row, j]), 6),
                "depth": depth, "steps": config.steps,
                "measured_source": round(float(result.measured[row, 0]), 6),
                "measured_state": round(float(result.measured[row, depth]), 6),
                "measured_latent": round(float(result.measured[row, -1]), 6),
                "dihedral": plan[g][1], "seed": config.seed, "measure": config.measure,
            })
        write_record(out, g, records, digests)


def _check_finite_result(result, groups: list[int]) -> None:
    """Refuse NaN or infinite images or soft labels before anything of ``groups`` is written."""
    for name in ("images", "soft_labels"):
        if not bool(torch.isfinite(getattr(result, name)).all()):
            raise ValueError(f"the pair gives NaN or infinite {name.replace('_', ' ')} for source group(s) {groups}: "
                             f"its weights are broken; nothing was written for them")


def _read_record(ctx: _Context, group: int) -> list[dict[str, Any]]:
    """The rows of a group's record, checked against this run and its images (:func:`progaug.cache.read_record`)."""
    source, op = ctx.plan[group]
    files = [image_name(i) for i in _sample_ids(group, ctx.config)]
    return read_record(ctx.out, group, files, (ctx.names[source], op, ctx.config.steps, ctx.config.seed))


def _drop_bad_records(ctx: _Context) -> None:
    """Remove the records that fail :func:`_read_record`, so their groups are generated again."""
    import sys

    for g in range(ctx.config.groups):
        if not record_path(ctx.out, g).is_file():
            continue
        try:
            _read_record(ctx, g)
        except ValueError as exc:
            print(f"progaug precompute: group {g} will be generated again: {exc}", file=sys.stderr)
            record_path(ctx.out, g).unlink()


def _finish(ctx: _Context, settings: dict[str, Any], execution: dict[str, Any]) -> None:
    """Write ``labels.csv``, ``preview.png`` and, last, ``manifest.json`` from the checked records."""
    out, pair, config = ctx.out, ctx.pair, ctx.config
    rows = []
    for g in range(config.groups):
        rows += _read_record(ctx, g)
    write_labels(out, rows)
    _write_preview(out, ctx.sources, ctx.plan, rows, config, pair)
    write_manifest(out, rows, settings=settings, pair_card={k: pair.card.get(k) for k in ("direction", "source", "target", "training")},
                   command=command_line(), execution=execution)


def _write_preview(out: Path, sources, plan, rows, config, pair, count: int = 4) -> None:
    """``preview.png``: the first source groups with their progressive images and labels (Fig. 1)."""
    import numpy as np
    from PIL import Image

    from progaug.data.tiles import to_model_range
    from progaug.strip import progressive_strip

    groups = min(count, config.groups)
    per = [rows[g * config.num_levels : (g + 1) * config.num_levels] for g in range(groups)]
    width = min(len(p) for p in per)

    def read(name: str) -> torch.Tensor:
        with Image.open(out / name) as im:
            return to_model_range(torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1))

    images = torch.stack([torch.stack([read(r["file"]) for r in p[:width]]) for p in per])
    labels = torch.tensor([[r["soft_label"] for r in p[:width]] for p in per])
    src = torch.stack([dihedral(to_model_range(sources[plan[g][0]]), plan[g][1]) for g in range(groups)])
    progressive_strip(src, images, labels, out / "preview.png", classes=pair.classes)
