"""Throughput of ``progaug precompute`` (progressive images per second) and the floor a GPU allows.

1. ``progaug precompute`` run as users run it — one subprocess per variant, the same ``--n`` each, one
   after the other in this run — reading the generation time from each manifest:

   - ``first release``: ``--batch-size 8 --max-batch 32 --no-malloc-tuning`` (the defaults before
     the performance work: 8 sources padded to 32 rows in every inversion call);
   - ``default``: automatic batches (32 sources, 32 rows per call on CPUs) and glibc malloc tuning;
   - ``bf16``: ``--bf16``; ``bf16 + channels-last``: ``--bf16 --channels-last``;
   - on CUDA also ``bf16 + compile``, and with ``--paper-size`` the same on a random-weight pair of
     U-Nets of the paper's size at 256 px.

2. The floor: FLOPs of one U-Net forward (``torch.utils.flop_counter`` on the meta device: no memory,
   no weights) times the U-Net evaluations per progressive image measured in the runs
   (the inversion and the measure's calls plus ``ceil(depth / decode_stride)`` per decode, over the L
   images of a source), over a GPU's dense bf16 peak.

    python benchmarks/throughput.py                     # CPU, about 12 minutes
    python benchmarks/throughput.py --device cuda --n 2000 --paper-size

Writes ``benchmarks/results/throughput.json``, ``.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, bar_plot, command_line, pair_sha256, repo_relative
from progaug.config import DiffusionConfig, UNetConfig
from progaug.labels import LEGACY_MEASURE, decode_evaluations, inversion_evaluations
from progaug.runtime import machine_description

PEAK_BF16_DENSE_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.1, "RTX 4090": 165.2}
"""Dense bf16 tensor-core peaks from the vendors' data sheets (SXM parts), TFLOP/s."""

PAPER_SIZE = dict(image_size=256, model_channels=256, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
                  attention_resolutions=(32, 16, 8), head_channels=64)
"""The ADM ImageNet-256 layout the paper's code uses (without its residual up/down-sampling blocks)."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", default="hgsc-demo", help="(default: hgsc-demo)")
    p.add_argument("--source", default="hgsc", help="source-class images for precompute: 'hgsc' or a folder (default: hgsc)")
    p.add_argument("--n", type=int, default=320, help="progressive images per variant (default: 320 = 32 sources x 10)")
    p.add_argument("--device", default="cpu", help="(default: cpu)")
    p.add_argument("--paper-size", action="store_true", help="also run a random-weight 256-px pair of the paper's size (GPU)")
    p.add_argument("--paper-n", type=int, default=160, help="images per variant for the paper-size pair (default: 160)")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the GPU for the floor (default: from the name)")
    p.add_argument("--variants", nargs="+", default=None, help="subset of the variant names")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps S of every variant (default: the pair's)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "throughput"))
    return p.parse_args(argv)


def forward_flops(config: UNetConfig) -> int:
    """FLOPs of one forward of a U-Net at batch 1 (multiply-add = 2 FLOPs), counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    from progaug.nn.unet import UNet

    with torch.device("meta"):
        model = UNet(config)
        x = torch.zeros(1, config.in_channels, config.image_size, config.image_size)
        with FlopCounterMode(display=False) as counter:
            model(x, torch.zeros(1, dtype=torch.long))
        params = sum(p.numel() for p in model.parameters())
    return int(counter.get_total_flops()), int(params)


def variants(device: str) -> dict[str, list[str]]:
    out = {
        "first release": ["--batch-size", "8", "--max-batch", "32", "--no-malloc-tuning"],
        "default": [],
        "measure labels": ["--labels", "measure"],  # the default until session 20: no margin evaluations
        "bf16": ["--bf16"],
        "bf16 + channels-last": ["--bf16", "--channels-last"],
    }
    if device.startswith("cuda"):
        out["bf16 + compile"] = ["--bf16", "--compile"]
    return out


def run_precompute(pair: str, n: int, device: str, flags: list[str], out: Path, source: str = "hgsc") -> dict:
    """One ``progaug precompute`` in a subprocess; returns its manifest's execution block and depths."""
    cmd = [sys.executable, "-m", "progaug", "precompute", "--pair", pair, "--source", source, "--n", str(n), "--out", str(out),
           "--device", device, *flags]
    began = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - began
    manifest = json.loads((out / "manifest.json").read_text())
    ex = manifest["execution"]
    with open(out / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    config = manifest["settings"]["config"]
    per_source = inversion_evaluations(config.get("measure", LEGACY_MEASURE), config["steps"])
    groups = [rows[i : i + config["num_levels"]] for i in range(0, len(rows), config["num_levels"])]
    stride, fine = config.get("decode_stride", 1), config.get("decode_fine", 0)  # manifests from before the settings: every state
    evals = sum(per_source + decode_evaluations([int(r["depth"]) for r in g], stride, fine) for g in groups) / len(rows)
    calibration = manifest["settings"].get("margin_calibration")  # margin labels: both models at each timestep, per image
    evals += 2 * len(calibration["timesteps"]) if calibration else 0
    return {"flags": flags, "samples": ex["samples_this_run_rank0"], "seconds": ex["seconds_this_run_rank0"],
            "images_per_second": ex["samples_this_run_rank0"] / ex["seconds_this_run_rank0"], "process_wall_s": round(wall, 1),
            "batch_size": ex["batch_size"], "max_batch": ex["max_batch"], "threads": ex["threads"],
            "unet_evals_per_image": evals}


def random_pair(folder: Path, config: UNetConfig) -> Path:
    """A pair folder of two random-weight U-Nets (global / local attention), for throughput only."""
    import dataclasses

    from progaug.checkpoint import save_unet
    from progaug.nn.unet import UNet
    from progaug.pair import write_card

    folder.mkdir(parents=True, exist_ok=True)
    for role, attention in (("source", "global"), ("target", "local")):
        torch.manual_seed(0)
        save_unet(UNet(dataclasses.replace(config, attention=attention)).half(), folder / f"{role}.safetensors")
    write_card(folder, {"direction": {"source_class": "stroma", "target_class": "tumour"}, "diffusion": DiffusionConfig().to_dict(),
                        "source": {"attention": "global"}, "target": {"attention": "local"}, "training": {"steps_done": 0}})
    return folder


def gpu_peak(args) -> tuple[str, float | None]:
    if args.peak_tflops:
        return "given", args.peak_tflops
    if args.device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(args.device))
        for key, tflops in PEAK_BF16_DENSE_TFLOPS.items():
            if key in name:
                return name, tflops
        return name, None
    return "H100 (for reference)", PEAK_BF16_DENSE_TFLOPS["H100"]


def main(argv=None) -> int:
    args = parse_args(argv)
    from progaug.hub import load_pair

    pair = load_pair(args.pair)
    gpu, peak = gpu_peak(args)
    res = {"machine": machine_description(args.device), "device": args.device, "torch": torch.__version__, "n": args.n, "gpu_for_floor": gpu,
           "peak_bf16_tflops": peak, "command": command_line("throughput.py", argv),
           "pair_sha256": pair_sha256(pair), "pairs": {}}
    targets = {repo_relative(args.pair): (args.pair, pair.source.config, args.n)}
    with tempfile.TemporaryDirectory() as tmp:
        if args.paper_size:
            cfg = UNetConfig(**PAPER_SIZE)
            targets["paper-size (random weights)"] = (str(random_pair(Path(tmp) / "paper", cfg)), cfg, args.paper_n)
        for label, (pair_ref, config, n) in targets.items():
            flops, params = forward_flops(config)
            entry = {"image_size": config.image_size, "params": params, "forward_gflops": flops / 1e9, "variants": {}}
            for name, flags in variants(args.device).items():
                if args.variants and name not in args.variants:
                    continue
                steps = [] if args.steps is None else ["--steps", str(args.steps)]
                m = run_precompute(pair_ref, n, args.device, [*flags, *steps], Path(tmp) / f"{len(entry['variants'])}-{label[:5]}", args.source)
                m["achieved_tflops"] = m["unet_evals_per_image"] * flops * m["images_per_second"] / 1e12
                if peak:
                    m["floor_seconds_per_image"] = m["unet_evals_per_image"] * flops / (peak * 1e12)
                    m["fraction_of_floor"] = m["floor_seconds_per_image"] * m["images_per_second"]
                entry["variants"][name] = m
                print(label, name, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items() if k != "flags"}, flush=True)
            base = entry["variants"].get("first release")
            for m in entry["variants"].values():
                if base:
                    m["speedup_over_first_release"] = m["images_per_second"] / base["images_per_second"]
            res["pairs"][label] = entry
    add_paper_size_floor(res)
    write(res, Path(args.out))
    return 0


def add_paper_size_floor(res: dict) -> None:
    """The floor of a paper-size 256-px pair at the evaluations per image measured in this run (FLOPs only)."""
    flops, params = forward_flops(UNetConfig(**PAPER_SIZE))
    first = next(iter(res["pairs"].values()))
    evals = sum(m["unet_evals_per_image"] for m in first["variants"].values()) / len(first["variants"])
    floor = {"params": params, "forward_gflops": flops / 1e9, "unet_evals_per_image": evals, "tflop_per_image": evals * flops / 1e12}
    if res["peak_bf16_tflops"]:
        floor["floor_seconds_per_image"] = floor["tflop_per_image"] / res["peak_bf16_tflops"]
        floor["floor_minutes_for_5000"] = 5000 * floor["floor_seconds_per_image"] / 60
    res["paper_size_floor"] = floor


def write(res: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [f"# `progaug precompute` throughput ({res['device']}, {res['machine']})", "", f"`{res['command']}`, {res['n']} images per variant.", ""]
    for label, entry in res["pairs"].items():
        lines += [f"## {label}: {entry['image_size']} px, {entry['params'] / 1e6:.1f} M parameters per U-Net, "
                  f"{entry['forward_gflops']:.2f} GFLOP per forward", "",
                  "| variant | images/s | speed-up | U-Net evals / image | batch / max_batch | achieved TFLOP/s | "
                  f"floor on {res['gpu_for_floor']} (s / image) | share of that floor reached |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, m in entry["variants"].items():
            floor = f"{m['floor_seconds_per_image']:.2e}" if "floor_seconds_per_image" in m else "-"
            share = f"{100 * m['fraction_of_floor']:.2f} %" if "fraction_of_floor" in m else "-"
            lines.append(f"| {name} | {m['images_per_second']:.2f} | {m.get('speedup_over_first_release', 1):.2f}x | "
                         f"{m['unet_evals_per_image']:.1f} | {m['batch_size']} / {m['max_batch']} | {m['achieved_tflops']:.3f} | {floor} | {share} |")
        lines.append("")
    f = res.get("paper_size_floor")
    if f:
        lines += [f"Paper-size U-Net at 256 px ({f['params'] / 1e6:.0f} M parameters, {f['forward_gflops']:.0f} GFLOP per forward) at the "
                  f"{f['unet_evals_per_image']:.1f} evaluations per image measured here: {f['tflop_per_image']:.1f} TFLOP per progressive "
                  f"image" + (f"; floor on {res['gpu_for_floor']} ({res['peak_bf16_tflops']} TFLOP/s dense bf16): "
                              f"{f['floor_seconds_per_image']:.3f} s per image, {f['floor_minutes_for_5000']:.1f} min for 5000." if "floor_seconds_per_image" in f else "."), ""]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    label, entry = next(iter(res["pairs"].items()))
    names = list(entry["variants"])
    bar_plot(out.with_suffix(".png"), names, {"images/s": ([entry["variants"][n]["images_per_second"] for n in names], None)},
             ylabel="progressive images / s", title=f"progaug precompute on {res['device']} ({label})")


if __name__ == "__main__":
    raise SystemExit(main())
