"""Train a pair for a direction A -> B: model A (global priority) on class A, model B (local) on class B.

Epsilon-prediction DDPM loss on the 1000-step linear schedule, AdamW with a linear warm-up, EMA weights
(saved and used for sampling), flips and 90-degree rotations, optional bf16 autocast, a tqdm bar with
the loss, a checkpoint every N steps with exact ``--resume`` and a sample grid PNG, and
DistributedDataParallel when started by ``torchrun`` (one process otherwise).

Every random draw of step ``n`` (batch indices, augmentations, timesteps, noise) comes from a generator
seeded by ``(seed, n, rank, model)``, so a resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from progaug.checkpoint import check_finite, save_unet
from progaug.fileio import atomic_write_bytes, lock_folder, remove_temporary_files, safetensors_bytes
from progaug.errors import check_int
from progaug.config import PAIR_ATTENTION, DiffusionConfig, JsonConfig, UNetConfig, config_from_dict, describe_differences, setting
from progaug.data.tiles import TileSet, dihedral, to_model_range
from progaug.diffusion import DDIMSchedule, sample, training_alpha_bar
from progaug.nn.unet import UNet
from progaug.pair import ROLES, write_card
from progaug.runtime import autocast, autocast_dtype, barrier, command_line, torchrun_setup

__all__ = ["PairSpec", "TrainConfig", "loss_weights", "train_pair"]

CHECKPOINT = "checkpoint.safetensors"


@dataclasses.dataclass(frozen=True)
class TrainConfig(JsonConfig):
    """Training recipe of both models (each model gets the same recipe).

    Attributes:
        train_steps: Optimiser steps per model (total, counting steps done before a resume).
        batch_size: Global batch per model (split over ``torchrun`` ranks).
        lr: AdamW peak learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: Linear learning-rate warm-up.
        ema_decay: EMA decay (ramped up as ``min(decay, (1 + n) / (10 + n))``).
        grad_clip: Gradient-norm clip.
        checkpoint_every: Steps between checkpoints, pair files and sample grids.
        sample_grid_steps: DDIM steps of the sample grid.
        loss_weighting: ``"uniform"`` (plain epsilon MSE, as DDPM/ADM) or ``"min_snr"`` (each timestep's
            epsilon MSE weighted by ``min(SNR, gamma) / SNR``, min-SNR-gamma of Hang et al., ICCV 2023); the model stays an
            epsilon predictor on the same schedule either way.
        min_snr_gamma: The ``gamma`` of ``"min_snr"`` weighting.
        bf16: Run forward and backward under bf16 autocast (CPU and CUDA).
        save_dtype: Dtype of the shipped EMA weights.
        seed: Seed of every random draw.
    """

    train_steps: int = setting(20000, "Optimiser steps per model (total, counting steps done before a resume)")
    batch_size: int = setting(16, "Global batch per model (split over torchrun ranks)")
    lr: float = setting(2e-4, "AdamW peak learning rate")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    warmup_steps: int = setting(500, "Linear learning-rate warm-up")
    ema_decay: float = setting(0.999, "EMA decay (ramped up as min(decay, (1 + n) / (10 + n)))")
    grad_clip: float = setting(1.0, "Gradient-norm clip")
    checkpoint_every: int = setting(1000, "Steps between checkpoints, pair files and sample grids")
    sample_grid_steps: int = setting(25, "DDIM steps of the sample grid")
    loss_weighting: Literal["uniform", "min_snr"] = setting(
        "min_snr",
        "uniform (plain epsilon MSE, as DDPM/ADM) or min_snr (each timestep's epsilon MSE weighted by "
        "min(SNR, gamma) / SNR, min-SNR-gamma of Hang et al., ICCV 2023); the model stays an epsilon predictor "
        "on the same schedule either way",
    )
    min_snr_gamma: float = setting(5.0, "The gamma of min_snr weighting")
    bf16: bool = setting(True, "Run forward and backward under bf16 autocast (CPU and CUDA)")
    save_dtype: Literal["float16", "float32"] = setting("float16", "Dtype of the shipped EMA weights")
    seed: int = setting(0, "Seed of every random draw")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build the config from :meth:`to_dict` output; a recipe written before ``loss_weighting``
        existed gets ``"uniform"``, what those runs were trained with."""
        return config_from_dict(cls, {"loss_weighting": "uniform", **data})

    def __post_init__(self) -> None:
        for name in ("train_steps", "batch_size", "checkpoint_every", "sample_grid_steps"):
            check_int(name, getattr(self, name))
        if not self.lr > 0:
            raise ValueError(f"`lr` must be > 0, got {self.lr!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"`ema_decay` must be in [0, 1), got {self.ema_decay!r}")
        if self.loss_weighting not in ("uniform", "min_snr"):
            raise ValueError(f"`loss_weighting` must be 'uniform' or 'min_snr', got {self.loss_weighting!r}")
        if not self.min_snr_gamma > 0:
            raise ValueError(f"`min_snr_gamma` must be > 0, got {self.min_snr_gamma!r}")
        if self.save_dtype not in ("float16", "float32"):
            raise ValueError(f"`save_dtype` must be 'float16' or 'float32', got {self.save_dtype!r}")


@dataclasses.dataclass(frozen=True)
class PairSpec:
    """What a pair is made of: its direction, its two U-Nets and the noise schedule they learn.

    Attributes:
        source_class: Class A (its model gets global-priority attention by default).
        target_class: Class B (local-priority attention by default).
        source_model: U-Net of A (default: 64 px, width 32, ``attention="global"``).
        target_model: U-Net of B (default: like A with ``attention="local"``).
        diffusion: Noise schedule.

    Raises:
        TypeError, ValueError: Naming the bad field.
    """

    source_class: str
    target_class: str
    source_model: UNetConfig = dataclasses.field(default_factory=lambda: UNetConfig(attention=PAIR_ATTENTION["source"]))
    target_model: UNetConfig | None = None
    diffusion: DiffusionConfig = dataclasses.field(default_factory=DiffusionConfig)

    def __post_init__(self) -> None:
        for name in ("source_class", "target_class"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise TypeError(f"`{name}` must be a class name (a non-empty str), got {value!r}")
        if self.source_class == self.target_class:
            raise ValueError(f"`source_class` and `target_class` must differ, both are {self.source_class!r}")
        if self.target_model is None:
            object.__setattr__(self, "target_model", dataclasses.replace(self.source_model, attention=PAIR_ATTENTION["target"]))
        for name, kind in (("source_model", UNetConfig), ("target_model", UNetConfig), ("diffusion", DiffusionConfig)):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"`{name}` must be a {kind.__name__}, got {type(getattr(self, name)).__name__}")

    @property
    def classes(self) -> tuple[str, str]:
        """``(source_class, target_class)``."""
        return self.source_class, self.target_class

    @property
    def models(self) -> tuple[UNetConfig, UNetConfig]:
        """``(source_model, target_model)``."""
        return self.source_model, self.target_model  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------- helpers


def _generator(seed: int, step: int, rank: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 64 + rank) * 4 + stream)


def augment_dihedral(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and 90-degree rotation per sample (tissue has no orientation)."""
    ops = torch.randint(0, 8, (x.shape[0],), generator=gen)
    out = torch.empty_like(x)
    for i, op in enumerate(ops.tolist()):
        out[i] = dihedral(x[i], op)
    return out


def loss_weights(alpha_bar_t: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """Per-sample weight of the epsilon MSE for timesteps with ``alpha_bar_t`` (shape ``(B,)``).

    ``"uniform"``: ones. ``"min_snr"``: ``min(SNR, gamma) / SNR`` with ``SNR = alpha_bar / (1 - alpha_bar)``,
    the min-SNR-gamma weighting written for an epsilon-prediction loss (Hang et al., ICCV 2023, eq. 8):
    low-noise steps (SNR > gamma), whose gradients conflict with the others, count less; steps at
    SNR <= gamma keep weight 1.
    """
    if cfg.loss_weighting == "uniform":
        return torch.ones_like(alpha_bar_t)
    snr = alpha_bar_t / (1 - alpha_bar_t)
    return snr.clamp(max=cfg.min_snr_gamma) / snr


def _lr_at(cfg: TrainConfig, step: int) -> float:
    return cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))


@torch.no_grad()
def _ema_update(ema: UNet, model: UNet, step: int, decay: float) -> None:
    d = min(decay, (1 + step) / (10 + step))
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - d)


def _flatten(prefix: str, tree: Any, out: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Split an optimizer state dict into tensors (safetensors) and JSON (everything else)."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            _flatten(f"{prefix}.{k}", v, out, meta)
    elif isinstance(tree, torch.Tensor):
        out[prefix] = tree.detach().cpu().contiguous()
    else:
        meta[prefix] = tree


def _unflatten(prefix: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict:
    root: dict = {}
    for key, value in [*tensors.items(), *meta.items()]:
        if not key.startswith(prefix + "."):
            continue
        parts = key[len(prefix) + 1 :].split(".")
        node = root
        for p in parts[:-1]:
            node = node.setdefault(int(p) if p.isdigit() else p, {})
        node[int(parts[-1]) if parts[-1].isdigit() else parts[-1]] = value
    return root


# ----------------------------------------------------------------------------------------- state


@dataclasses.dataclass
class _Member:
    role: str
    model: torch.nn.Module  # possibly DDP-wrapped
    ema: UNet
    optimizer: torch.optim.Optimizer
    tiles: torch.Tensor  # (N, 3, S, S) uint8 of its class

    @property
    def net(self) -> UNet:
        return getattr(self.model, "module", self.model)


def _identity(run: dict[str, Any]) -> dict[str, Any]:
    """What must not change across a resume: all but the step budget, the machine and the command line."""
    same = {k: v for k, v in json.loads(json.dumps(run)).items() if k not in ("device", "world_size", "command")}
    same["train"] = TrainConfig.from_dict(same["train"]).to_dict()  # fields added since read as their old meaning
    same["train"].pop("train_steps", None)
    same["train"].pop("checkpoint_every", None)
    for key in ("source_model", "target_model"):  # through UNetConfig: fields added since read as their old meaning
        if key in same:
            same[key] = UNetConfig.from_dict(same[key]).to_dict()
    data = same.get("data")
    if isinstance(data, dict) and "digests" in data:  # one fingerprint of the tiles, so a difference reads as one line
        data["digests"] = hashlib.sha256(json.dumps(data["digests"], sort_keys=True).encode()).hexdigest()[:16]
    return same


def _save_checkpoint(out: Path, members: list[_Member], step: int, run: dict[str, Any], wall_time: float) -> None:
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {}
    for m in members:
        for k, v in m.net.state_dict().items():
            tensors[f"{m.role}.model.{k}"] = v.detach().cpu().contiguous()
        for k, v in m.ema.state_dict().items():
            tensors[f"{m.role}.ema.{k}"] = v.detach().cpu().contiguous()
        _flatten(f"{m.role}.optim", m.optimizer.state_dict(), tensors, meta)
    info = {"step": str(step), "run": json.dumps(run, sort_keys=True), "optim_meta": json.dumps(meta),
            "wall_time_s": f"{wall_time:.1f}"}
    check_finite(tensors, f"{out / CHECKPOINT} was not written at step {step} (the training diverged: lower --lr)")
    atomic_write_bytes(out / CHECKPOINT, safetensors_bytes(tensors, info))


def _load_checkpoint(out: Path, members: list[_Member], run: dict[str, Any]) -> tuple[int, float]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = out / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            info = f.metadata() or {}
        stored = json.loads(info["run"])
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for truncated or corrupt files
        raise ValueError(f"--resume: {path} is not a readable progaug training state ({type(exc).__name__}: {exc}); "
                         f"it may be truncated: restore a copy or start a new output folder") from exc
    check_finite(tensors, f"--resume: {path} is corrupt (restore a copy or start a new output folder)")
    try:
        stored_identity = _identity(stored)
    except (KeyError, TypeError, AttributeError) as exc:  # a run record of the wrong shape, e.g. edited by hand
        raise ValueError(f"--resume: {path} holds an unreadable run record ({type(exc).__name__}: {exc})") from exc
    identity = _identity(run)
    if "digests" not in (stored_identity.get("data") or {}):  # a checkpoint from before cards recorded the tiles
        (identity.get("data") or {}).pop("digests", None)
    differences = describe_differences(stored_identity, identity)
    if differences:
        raise ValueError(
            f"--resume: {path} was made with another configuration; start a new output folder or use the "
            f"same settings. Differences: " + "; ".join(differences)
        )
    meta = json.loads(info["optim_meta"])
    for m in members:
        m.net.load_state_dict({k.split(".model.", 1)[1]: v for k, v in tensors.items() if k.startswith(f"{m.role}.model.")})
        m.ema.load_state_dict({k.split(".ema.", 1)[1]: v for k, v in tensors.items() if k.startswith(f"{m.role}.ema.")})
        m.optimizer.load_state_dict(_unflatten(f"{m.role}.optim", tensors, meta))
    return int(info["step"]), float(info.get("wall_time_s", "0"))


# ----------------------------------------------------------------------------------------- outputs


@torch.no_grad()
def _sample_grid(members: list[_Member], cfg: TrainConfig, diffusion: DiffusionConfig, path: Path, device: torch.device) -> None:
    """Rows: real tiles of A, samples of model A, real tiles of B, samples of model B (8 each)."""
    from torchvision.utils import make_grid
    from PIL import Image

    schedule = DDIMSchedule.from_config(diffusion, min(cfg.sample_grid_steps, diffusion.num_train_steps))
    rows = []
    for m in members:
        size = m.ema.config.image_size
        noise = torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(cfg.seed)).to(device)
        real = to_model_range(m.tiles[torch.linspace(0, len(m.tiles) - 1, 8).long()]).to(device)
        fake = sample(m.ema, noise, schedule, clip=diffusion.clip_denoised)
        rows += [real, fake]
    grid = make_grid(torch.cat(rows).float().cpu().clamp(-1, 1) * 0.5 + 0.5, nrow=8, padding=2)
    buf = io.BytesIO()
    Image.fromarray(grid.mul(255).round().byte().permute(1, 2, 0).numpy()).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def _write_pair(out: Path, members: list[_Member], step: int, run: dict[str, Any], elapsed: float) -> None:
    """The pair files: both models' EMA weights (each file records its role), then ``card.json``.

    Raises:
        ValueError: A model's weights are not finite in the save dtype; neither file is written.
    """
    dtype = torch.float16 if run["train"]["save_dtype"] == "float16" else torch.float32
    for m in members:  # both checked before either file is replaced
        check_finite({k: v.to(dtype) for k, v in m.ema.state_dict().items() if v.is_floating_point()},
                     f"{out}: the pair was not written at step {step}: the {m.role} model's weights as {dtype} "
                     f"(the training diverged: lower --lr)")
    for m in members:
        save_unet(m.ema, out / f"{m.role}.safetensors", dtype=dtype, metadata={"role": m.role})
    card = {
        "direction": {"source_class": run["classes"][0], "target_class": run["classes"][1]},
        "diffusion": run["diffusion"],
        "source": {"attention": members[0].ema.config.attention, "config": run["source_model"]},
        "target": {"attention": members[1].ema.config.attention, "config": run["target_model"]},
        "training": {**run["train"], "steps_done": step, "wall_time_s": round(elapsed, 1), "device": run["device"],
                     "world_size": run["world_size"], "weights": "EMA"},
        "data": run["data"],
        "command": run["command"],
    }
    write_card(out, card)


# ----------------------------------------------------------------------------------------- loop


def train_pair(
    tiles: TileSet,
    out: str | os.PathLike[str],
    spec: PairSpec,
    train: TrainConfig | None = None,
    *,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Train (or resume) a pair and write ``out/{source,target}.safetensors`` + ``card.json``.

    Args:
        tiles: Training tiles of at least the two classes.
        out: Output folder (pair files, ``checkpoint.safetensors``, ``samples/``).
        spec: The direction, the two U-Nets and the noise schedule.
        train: Recipe (default: :class:`TrainConfig`).
        resume: Continue from ``out/checkpoint.safetensors``; refused if any setting but the step
            budget differs.
        device: ``"cpu"``, ``"cuda"``, ... (default: CUDA when available). Under ``torchrun``, each rank
            uses its local GPU.
        progress: Show a tqdm bar on rank 0.
        provenance: Recorded in the card: ``"data"`` (name, split, counts; default: the class counts) and
            ``"command"`` (default: ``sys.argv``).

    Returns:
        The output folder.

    Raises:
        TypeError, ValueError: A bad ``spec`` or ``provenance``, tiles that do not fit the U-Nets.
    """
    if not isinstance(spec, PairSpec):
        raise TypeError(f"`spec` must be a PairSpec, got {type(spec).__name__}")
    cfg = train or TrainConfig()
    class_tiles = _class_tiles(tiles, spec.classes, spec.models)
    rank, world, dev = torchrun_setup(device)
    if cfg.batch_size % world:
        raise ValueError(f"`batch_size` {cfg.batch_size} is not divisible by the {world} torchrun processes")
    out = Path(out)
    run = _run_record(spec, cfg, {name: len(t) for name, t in zip(spec.classes, class_tiles)}, provenance, dev, world)
    members = _build_members(spec.models, class_tiles, cfg, spec.diffusion, world, dev)
    with contextlib.ExitStack() as stack:
        if rank == 0:
            stack.enter_context(lock_folder(out, "progaug train"))
            for folder in (out, out / "samples"):  # left by a process killed mid-write; the lock is ours
                remove_temporary_files(folder)
        _train_loop(members, out, run, cfg, spec.diffusion, resume, rank, world, dev, progress)
    barrier(world)
    return out


def _run_record(spec: PairSpec, cfg: TrainConfig, counts: dict[str, int], provenance: dict[str, Any] | None,
                dev: torch.device, world: int) -> dict[str, Any]:
    """What the checkpoint and the card record of a run (a resume compares it, :func:`_identity`).

    Raises:
        ValueError: ``provenance`` has keys other than ``"data"`` and ``"command"``.
    """
    provenance = dict(provenance or {})
    unknown = sorted(set(provenance) - {"data", "command"})
    if unknown:
        raise ValueError(f"`provenance` takes the keys 'data' and 'command', got {unknown}")
    command = provenance.get("command")
    return {
        "classes": list(spec.classes),
        "source_model": spec.source_model.to_dict(),
        "target_model": spec.target_model.to_dict(),  # type: ignore[union-attr]
        "diffusion": spec.diffusion.to_dict(),
        "train": cfg.to_dict(),
        "data": provenance.get("data") or {"counts": counts},
        "device": dev.type,
        "world_size": world,
        "command": command if command is not None else command_line(),
    }


def _class_tiles(tiles: TileSet, classes: tuple[str, str], configs: tuple[UNetConfig, UNetConfig]) -> list[torch.Tensor]:
    """The ``(N, 3, S, S)`` uint8 tiles of each class, checked against the U-Nets' image size.

    Raises:
        ValueError: A U-Net's ``image_size`` is not the tile size; a class is unknown or has no tiles.
    """
    for name, config in zip(("source_model", "target_model"), configs):
        if config.image_size != tiles.images.shape[-1]:
            raise ValueError(f"`{name}.image_size` {config.image_size} differs from the tile size {tiles.images.shape[-1]}")
    class_tiles = [tiles.of_class(name).images for name in classes]
    for name, t in zip(classes, class_tiles):
        if len(t) == 0:
            raise ValueError(f"class {name!r} has no training tiles")
    return class_tiles


def _build_members(configs: tuple[UNetConfig, UNetConfig], class_tiles: list[torch.Tensor], cfg: TrainConfig,
                   diffusion: DiffusionConfig, world: int, dev: torch.device) -> list[_Member]:
    """Model, EMA copy and AdamW optimiser of each role; the model is DDP-wrapped under ``torchrun``.

    Each model's initial weights come from ``torch.manual_seed(cfg.seed + i)`` (``i``: 0 source, 1 target).
    """
    members = []
    for i, (role, config) in enumerate(zip(ROLES, configs)):
        torch.manual_seed(cfg.seed + i)
        net = UNet(config)
        if config.gaussian_skip:  # the skip uses the schedule the pair is trained on
            net.skip_alpha_bar.copy_(torch.from_numpy(training_alpha_bar(diffusion)).float())
        net = net.to(dev)
        ema = copy.deepcopy(net).eval().requires_grad_(False)
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        model: torch.nn.Module = net
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)
        members.append(_Member(role, model, ema, opt, class_tiles[i]))
    return members


def _train_loop(members: list[_Member], out: Path, run: dict[str, Any], cfg: TrainConfig, diffusion: DiffusionConfig,
                resume: bool, rank: int, world: int, dev: torch.device, progress: bool) -> None:
    """Steps from the checkpoint (or 0) to ``cfg.train_steps``, with checkpoints, pair files and sample grids."""
    from tqdm import tqdm

    start, earlier = _load_checkpoint(out, members, run) if resume else (0, 0.0)
    if start > cfg.train_steps:
        raise ValueError(f"--resume: {out / CHECKPOINT} is at step {start}, beyond --train-steps {cfg.train_steps} (the total "
                         f"budget): pass --train-steps {start} or more")
    if not resume and (out / CHECKPOINT).exists():
        raise FileExistsError(f"{out / CHECKPOINT} exists: pass --resume to continue it, or choose another --out")
    grid = out / "samples" / f"step_{start:07d}.png"
    if rank == 0 and start > 0 and not grid.is_file():  # the last sitting stopped while drawing it
        _sample_grid(members, cfg, diffusion, grid, dev)
    alpha_bar = torch.from_numpy(training_alpha_bar(diffusion)).float().to(dev)
    per_rank = cfg.batch_size // world
    bar = tqdm(total=cfg.train_steps, initial=start, disable=not progress or rank != 0, desc="train", dynamic_ncols=True)
    began = time.time()
    try:
        for step in range(start, cfg.train_steps):
            losses = []
            for i, m in enumerate(members):
                losses.append(_train_step(m, step, cfg, rank, i, per_rank, alpha_bar, dev))
            bar.update(1)
            bar.set_postfix(loss_a=f"{losses[0]:.4f}", loss_b=f"{losses[1]:.4f}")
            done = step + 1
            if rank == 0 and (done % cfg.checkpoint_every == 0 or done == cfg.train_steps):
                elapsed = earlier + time.time() - began  # training time of all sittings
                _save_checkpoint(out, members, done, run, elapsed)
                _write_pair(out, members, done, run, elapsed)
                _sample_grid(members, cfg, diffusion, out / "samples" / f"step_{done:07d}.png", dev)
    finally:
        bar.close()  # ends the bar's line, also when a step or a save fails
    if rank == 0 and start >= cfg.train_steps:  # nothing left to train: export the resumed state's pair files
        _write_pair(out, members, start, run, earlier)


def _train_step(m: _Member, step: int, cfg: TrainConfig, rank: int, stream: int, batch: int, alpha_bar: torch.Tensor, dev: torch.device) -> float:
    gen = _generator(cfg.seed, step, rank, stream)
    index = torch.randint(0, len(m.tiles), (batch,), generator=gen)
    x0 = to_model_range(augment_dihedral(m.tiles[index], gen)).to(dev)
    t = torch.randint(0, alpha_bar.numel(), (batch,), generator=gen).to(dev)
    noise = torch.randn(x0.shape, generator=gen).to(dev)
    a = alpha_bar[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise  # eq. 1
    for group in m.optimizer.param_groups:
        group["lr"] = _lr_at(cfg, step)
    m.model.train()
    with autocast(dev, autocast_dtype(cfg.bf16)):
        pred = m.model(x_t, t)
    if cfg.loss_weighting == "uniform":
        loss = F.mse_loss(pred.float(), noise)
    else:
        per_sample = (pred.float() - noise).pow(2).mean(dim=(1, 2, 3))
        loss = (per_sample * loss_weights(alpha_bar[t], cfg)).mean()
    m.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(m.model.parameters(), cfg.grad_clip)
    m.optimizer.step()
    _ema_update(m.ema, m.net, step, cfg.ema_decay)
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"{m.role} model: loss became {value} at step {step}")
    return value
