"""The ``progaug`` command: argparse subcommands, each in a small function.

``progaug train``        train a pair A -> B (demo data or class folders)
``progaug progressive``  progressive images of a few source tiles as one PNG strip (paper Fig. 1)
``progaug precompute``   N progressive soft-labelled samples as a cache folder
``progaug evaluate``     does the augmentation help a classifier of your classes? (progaug.evaluation)
``progaug calibrate``    fit the pair's margin calibration (soft labels read from the images: ``--labels margin``)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from progaug.cli_args import add_config_arguments, config_from_args

__all__ = ["build_parser", "main"]

DEMO_PAIR = "hgsc-demo"


def _add_data_arguments(p: argparse.ArgumentParser) -> None:
    from progaug.config import UNetConfig

    p.add_argument("--data", default="hgsc", help="'hgsc' (the bundled demo tiles) or a folder root/<class>/*.png (default: hgsc)")
    p.add_argument("--source-class", default=None, help="class A (default: stroma for hgsc, else the first class folder)")
    p.add_argument("--target-class", default=None, help="class B (default: tumour for hgsc, else the second class folder)")
    p.add_argument("--tile-size", type=int, default=UNetConfig.image_size,
                   help="tile side in pixels, the U-Nets' image_size (default: %(default)s)")


def _load_data(args: argparse.Namespace, split: str = "train"):
    """Tiles, class names and a description for the card (name, split, counts, each tile's content digest)."""
    from progaug.data import TileSpec, folder_tiles, hgsc_tiles

    if not 32 <= args.tile_size <= 256:  # before any image is read
        raise ValueError(f"--tile-size must be in [32, 256] (the U-Nets' image_size), got {args.tile_size}")
    if args.data == "hgsc":
        block = TileSpec().block_size
        if args.tile_size > block:
            raise ValueError(f"--tile-size {args.tile_size}: the bundled demo tiles (--data hgsc) are cut from "
                             f"{block}-px blocks of one image; for larger tiles pass --data ROOT "
                             f"(root/<class>/*.png)")
        spec = TileSpec(tile_size=args.tile_size, stride=args.tile_size // 2)
        tiles = hgsc_tiles(split, spec)
        info = {"name": "hgsc", "split": split, "spec": spec.to_dict(), "counts": tiles.counts(), "digests": tiles.digests_by_class()}
    else:
        tiles = folder_tiles(args.data, tile_size=args.tile_size)
        info = {"name": str(Path(args.data).resolve()), "split": "all", "tile_size": args.tile_size, "counts": tiles.counts(),
                "digests": tiles.digests_by_class()}
    if len(tiles.classes) < 2:
        raise ValueError(f"--data {args.data} holds one class folder ({tiles.classes[0]!r}); a pair needs two: "
                         f"root/<class A>/*.png and root/<class B>/*.png")
    source = args.source_class or tiles.classes[0]
    target = args.target_class or tiles.classes[1]
    for flag, name in (("--source-class", source), ("--target-class", target)):
        if name not in tiles.classes:
            raise SystemExit(f"progaug: error: {flag} {name!r} is not one of the classes {list(tiles.classes)}")
    if source == target:
        raise SystemExit(f"progaug: error: --source-class and --target-class are both {source!r}")
    return tiles, source, target, info


def _add_runtime_arguments(p: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    from progaug.runtime import RuntimeConfig

    add_config_arguments(p, RuntimeConfig, exclude=exclude)


def _check_device(args: argparse.Namespace) -> None:
    """Refuse a ``--device`` that does not parse or is not on this machine, before anything is read."""
    from progaug.errors import check_device

    check_device("--device", args.device)


def _apply_runtime(args: argparse.Namespace, device):
    """Build the :class:`RuntimeConfig` from the flags and apply its process-wide part."""
    from progaug.runtime import RuntimeConfig, apply_runtime

    runtime = config_from_args(RuntimeConfig, args)
    apply_runtime(runtime, device)
    return runtime


# ----------------------------------------------------------------------------------------- train


def _add_train(sub: argparse._SubParsersAction) -> None:
    from progaug.config import ATTENTION_PRIORITIES, PAIR_ATTENTION, DiffusionConfig, UNetConfig
    from progaug.train import TrainConfig

    p = sub.add_parser("train", help="train a source/target pair of diffusion U-Nets",
                       description="Train model A (global attention) on class A and model B (local attention) on class B.")
    _add_data_arguments(p)
    p.add_argument("--out", required=True, help="output folder of the pair")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--source-attention", choices=ATTENTION_PRIORITIES, default=PAIR_ATTENTION["source"],
                   help="attention priority of model A (default: %(default)s)")
    p.add_argument("--target-attention", choices=ATTENTION_PRIORITIES, default=PAIR_ATTENTION["target"],
                   help="attention priority of model B (default: %(default)s; 'global' trains the ADD-without-HAS ablation)")
    add_config_arguments(p, TrainConfig)
    add_config_arguments(p, UNetConfig, exclude=("attention", "in_channels", "image_size"))
    add_config_arguments(p, DiffusionConfig, exclude=("sampling_steps",))
    _add_runtime_arguments(p, exclude=("channels_last", "compile"))
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from progaug.config import DiffusionConfig, UNetConfig
    from progaug.runtime import command_line, default_device
    from progaug.train import PairSpec, TrainConfig, train_pair

    _check_device(args)
    _apply_runtime(args, args.device or default_device())
    tiles, source, target, info = _load_data(args)
    layout = {}
    if args.attention_resolutions is None:  # (16, 8) where the U-Net has those sides, else its two coarsest
        layout["attention_resolutions"] = UNetConfig.attention_sides_for(args.tile_size, tuple(args.channel_mult or UNetConfig.channel_mult))
    base = config_from_args(UNetConfig, args, image_size=args.tile_size, attention=args.source_attention, **layout)
    spec = PairSpec(source, target, source_model=base, target_model=dataclasses.replace(base, attention=args.target_attention),
                    diffusion=config_from_args(DiffusionConfig, args))
    out = train_pair(tiles, args.out, spec, config_from_args(TrainConfig, args), resume=args.resume, device=args.device,
                     provenance={"data": info, "command": command_line(["progaug", *_argv(args)])})
    print(f"pair written to {out}; for margin labels (the default of a pair that carries a calibration) fit one on tiles it never "
          f"saw: progaug calibrate --pair {out} --data ROOT")
    return 0


# ----------------------------------------------------------------------------------- progressive


def _add_progressive(sub: argparse._SubParsersAction) -> None:
    from progaug.generator import GenerationConfig

    p = sub.add_parser("progressive", help="progressive images of a few source tiles, as a PNG strip with soft labels")
    p.add_argument("--pair", default=DEMO_PAIR, help="pair folder, or the name of a pair shipped with progaug (default: %(default)s)")
    p.add_argument("--source", default="hgsc", help="'hgsc' (demo test tiles of the source class, default) or a folder of images")
    p.add_argument("--count", type=int, default=4, help="number of source tiles (default: 4)")
    p.add_argument("--num-levels", type=int, default=10, help="number of soft-label levels, evenly spaced in (0, 1] (default: 10)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default: cpu)")
    p.add_argument("--out", default="progressive.png", help="output PNG (default: progressive.png)")
    add_config_arguments(p, GenerationConfig, exclude=("device",))
    _add_runtime_arguments(p)
    p.set_defaults(func=_run_progressive)


def _run_progressive(args: argparse.Namespace) -> int:
    import torch

    from progaug.frequency import default_levels
    from progaug.generator import GenerationConfig, ProgressiveGenerator
    from progaug.data.tiles import to_model_range
    from progaug.hub import load_pair
    from progaug.data.sources import source_tiles
    from progaug.strip import progressive_strip

    _check_device(args)
    _check_png_out(args.out)
    runtime = _apply_runtime(args, args.device)
    pair = load_pair(args.pair, device=args.device)
    tiles, _ = source_tiles(args.source, pair, split="test")
    if args.count < 1:
        raise ValueError(f"--count must be >= 1, got {args.count}")
    pick = torch.linspace(0, len(tiles) - 1, min(args.count, len(tiles))).round().long()
    images = to_model_range(tiles[pick]).to(args.device)
    generation = config_from_args(GenerationConfig, args, device=args.device)
    generator = ProgressiveGenerator(pair, generation, runtime=runtime)
    result = generator(images, default_levels(args.num_levels))
    progressive_strip(images, result.images, result.soft_labels, args.out, classes=pair.classes)
    print(f"soft labels from the {generator.resolved(args.device).labels} (labels={generation.labels})")
    for b in range(images.shape[0]):
        labels = ", ".join(f"{v:.2f}" for v in result.soft_labels[b].tolist())
        print(f"source {b}: depths {result.depths[b].tolist()} soft labels [{labels}]")
    print(f"wrote {args.out}")
    return 0


def _check_png_out(out: str) -> None:
    """``--out`` of ``progaug progressive`` must name a PNG file (the strip is written as PNG)."""
    path = Path(out)
    if path.is_dir():
        raise ValueError(f"--out {out} is a folder; give the PNG file to write, e.g. {path / 'progressive.png'}")
    if path.suffix.lower() != ".png":
        raise ValueError(f"--out {out} must end in .png: the strip is written as a PNG")


# ------------------------------------------------------------------------------------ precompute


def _add_precompute(sub: argparse._SubParsersAction) -> None:
    from progaug.precomputation import PrecomputeConfig

    p = sub.add_parser("precompute", help="write N progressive soft-labelled samples (PNG + labels.csv + manifest)",
                       description="Generate progressive samples from source-class images with a trained pair.")
    p.add_argument("--pair", default=DEMO_PAIR, help="registry name, pair folder or URL (default: %(default)s, embedded)")
    p.add_argument("--source", default="hgsc",
                   help="'hgsc' (demo training tiles of the pair's source class, default) or a folder of source-class images")
    p.add_argument("--out", default="progaug-cache", help="output folder (default: progaug-cache)")
    p.add_argument("--resume", action="store_true", help="complete an interrupted run in --out")
    add_config_arguments(p, PrecomputeConfig)
    _add_runtime_arguments(p)
    p.set_defaults(func=_run_precompute)


def _run_precompute(args: argparse.Namespace) -> int:
    from progaug.hub import load_pair
    from progaug.precomputation import PrecomputeConfig, precompute
    from progaug.data.sources import source_tiles
    from progaug.runtime import default_device

    _check_device(args)  # PrecomputeConfig checks it too, but this message names the flag the user typed
    config = config_from_args(PrecomputeConfig, args)  # its checks come before anything is read
    runtime = _apply_runtime(args, config.device or default_device())  # a torchrun rank takes its local GPU
    pair = load_pair(args.pair)
    tiles, names = source_tiles(args.source, pair)
    out = precompute(pair, tiles, names, args.out, config, resume=args.resume, runtime=runtime)
    print(f"{config.n} samples in {out} (labels.csv, manifest.json, preview.png); {_labels_used(config.labels, pair, args.pair)}")
    return 0


def _labels_used(labels: str, pair, name: str) -> str:
    """Which labels a run wrote, and, where ``auto`` fell back to the measure, how to get margin labels."""
    from progaug.generator import resolve_labels

    used = resolve_labels(labels, pair)
    hint = (f" ({name} has no margin_calibration.json; `progaug calibrate --pair {name} --data ROOT` fits one on tiles it never "
            f"saw, and margin labels follow)") if labels == "auto" and used == "measure" else ""
    return f"soft labels from the {used}{hint}"


# ------------------------------------------------------------------------------------------ calibrate


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    from progaug.margin import DEFAULT_MARGIN_TIMESTEPS

    p = sub.add_parser("calibrate", help="fit the pair's margin calibration on real tiles it never saw (for --labels margin)",
                       description="Fit p(B) = sigmoid(a * margin + b) of the pair's denoising margin on real tiles of both classes "
                                   "that the pair was not trained on, and write margin_calibration.json into the pair folder.")
    p.add_argument("--pair", required=True, help="pair folder (from `progaug train`); the embedded pair ships its own calibration")
    p.add_argument("--data", required=True,
                   help="'hgsc' (the demo's validation split) or a folder of tiles the pair never saw: ROOT/val/<class>/ or ROOT/<class>/")
    p.add_argument("--timesteps", type=int, nargs="+", default=list(DEFAULT_MARGIN_TIMESTEPS),
                   help="training timesteps of the margin (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the margin's noise (default: 0)")
    p.add_argument("--max-batch", type=int, default=64, help="rows per U-Net call (default: 64)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default: cpu)")
    _add_runtime_arguments(p, exclude=("channels_last", "compile"))
    p.set_defaults(func=_run_calibrate)


def _calibration_tiles(data: str, size: int):
    """The held-out tiles of ``--data`` for ``progaug calibrate``: a TileSet and a description."""
    from progaug.data import folder_tiles
    from progaug.data.splits import load_splits

    if data == "hgsc":
        return load_splits("hgsc", size, splits=("val",))["val"], "hgsc val split"
    root = Path(data)
    if (root / "val").is_dir():
        root = root / "val"
    return folder_tiles(root, tile_size=size), str(root.resolve())


def _run_calibrate(args: argparse.Namespace) -> int:
    from progaug.data.tiles import to_model_range
    from progaug.hub import embedded_pair_dir, load_pair
    from progaug.margin import fit_pair_calibration, write_calibration

    _check_device(args)
    _apply_runtime(args, args.device)
    folder = Path(args.pair)
    if not folder.is_dir():
        raise ValueError(f"--pair {args.pair} is not a folder: give the pair folder the calibration is written into "
                         f"(the embedded pair ships its own, fitted on the hgsc validation split)")
    if folder.resolve() == embedded_pair_dir(DEMO_PAIR).resolve():
        raise ValueError(f"--pair {args.pair} is the embedded pair, which ships its own calibration; copy the folder to refit it")
    pair = load_pair(folder, device=args.device)
    tiles, where = _calibration_tiles(args.data, pair.image_size)
    missing = [c for c in pair.classes if c not in tiles.classes]
    if missing:
        raise ValueError(f"--data {args.data}: no tiles of the pair's class(es) {missing}; it has {list(tiles.classes)}")
    a, b = (to_model_range(tiles.of_class(c).images).to(args.device) for c in pair.classes)
    described = f"{where}: {len(a)} {pair.classes[0]} + {len(b)} {pair.classes[1]} real tiles"
    calibration = fit_pair_calibration(pair, a, b, timesteps=args.timesteps, seed=args.seed, max_batch=args.max_batch, fitted_on=described)
    path = write_calibration(folder, calibration)
    print(f"fitted on {described}: p({pair.classes[1]}) = sigmoid({calibration.slope:.4g} * margin {calibration.intercept:+.3f}), "
          f"margin AUC {calibration.auc:.3f}")
    print(f"wrote {path}")
    return 0


# ------------------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    """The ``progaug`` argument parser with all subcommands."""
    parser = argparse.ArgumentParser(prog="progaug", description="Progressive soft-labelled augmentation (ADD).")
    from progaug import __version__

    parser.add_argument("--version", action="version", version=f"progaug {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_progressive(sub)
    _add_precompute(sub)
    _add_calibrate(sub)
    from progaug.evaluation.command import add_evaluate

    add_evaluate(sub)
    return parser


def _os_error_message(exc: OSError) -> str:
    """``<file>: <why>`` for an operating-system error (full disk, read-only folder, file in the way)."""
    if exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


def _argv(args: argparse.Namespace) -> list[str]:
    """The arguments after ``progaug``: those given to :func:`main`, else the process's command line."""
    return list(sys.argv[1:]) if args.argv is None else list(args.argv)


_RESUMES_FROM = {"train": "checkpoint.safetensors", "precompute": "run.json"}
"""The file a ``--resume`` of each command needs."""


def _interrupted_message(args: argparse.Namespace, how: str) -> str:
    """One line for Ctrl-C / SIGTERM: what was kept and how to go on."""
    out = getattr(args, "out", None)
    if out is None or not hasattr(args, "resume"):
        return f"progaug: {how}: nothing was written"
    argv = [a for a in _argv(args) if a != "--resume"]
    resumes_from = _RESUMES_FROM.get(args.command)
    if resumes_from is not None and not (Path(out) / resumes_from).is_file():
        return (f"progaug: {how}: nothing to resume in {out} yet (no {resumes_from} was written); "
                f"start again with: progaug {' '.join(argv)}")
    return (f"progaug: {how}: the finished part in {out} is kept (every file there is complete); "
            f"continue with: progaug {' '.join(argv)} --resume")


def _raise_interrupt(signum, frame) -> None:  # noqa: ANN001 - signal handler signature
    raise KeyboardInterrupt("SIGTERM")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``progaug`` console script and ``python -m progaug``.

    Errors the user can fix (bad values, missing or bad files, a full disk, a folder in use: ``ValueError``,
    ``OSError``, :class:`progaug.fileio.OutputLocked`) are printed as one line ``progaug: error: <what>:
    <why>`` with exit code 2; any other exception (a ``TypeError`` is a bug, not a user error) propagates
    with its traceback. Ctrl-C and SIGTERM print one line saying what was kept and how to resume (exit
    codes 130 and 143).
    """
    import signal

    from progaug.fileio import OutputLocked

    args = build_parser().parse_args(argv)
    args.argv = None if argv is None else list(argv)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if _main_thread() else None
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:
        how = "stopped by SIGTERM" if str(exc) == "SIGTERM" else "interrupted"
        print(_interrupted_message(args, how), file=sys.stderr)
        return 143 if how.endswith("SIGTERM") else 130
    except (ValueError, OutputLocked, FloatingPointError) as exc:  # FloatingPointError: a diverged training
        print(f"progaug: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # also our own FileNotFoundError / FileExistsError messages
        print(f"progaug: error: {_os_error_message(exc)}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
