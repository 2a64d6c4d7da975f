"""bf16 autocast against float32: how far the outputs move, and how much faster it is, per label measure.

For each measure, the same held-out class-A tiles go through ``generate_progressive`` twice in one
process, float32 then bf16 autocast (the U-Net calls only; the DDIM arithmetic and the measures stay
float32), same settings otherwise. Reported per measure: the share of depths that stay the same, the
largest and mean soft-label difference, the image PSNR against float32 (all images, and only those
whose depth stayed the same), and seconds per output of each precision with their ratio. The tolerance
progaug promises for its bf16 default (``docs/performance.md``): labels within 0.01, images >= 40 dB.

    python benchmarks/precision.py --threads 2            # 16 tiles, S = 50, 10 levels, 4 measures

Writes ``benchmarks/results/precision.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command_line, finish_args, open_benchmark, pair_sha256, pair_training, save_figure, spread_heldout, write_report
from progaug.frequency import default_levels
from progaug.generator import GenerationConfig, ProgressiveGenerator
from progaug.labels import MEASURES
from progaug.metrics import psnr
from progaug.runtime import CPU_MAX_BATCH, machine_description, native_bf16

LABEL_TOLERANCE, PSNR_FLOOR_DB = 0.01, 40.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", default="hgsc-demo", help="embedded pair name or pair folder (default: hgsc-demo)")
    p.add_argument("--data", default="hgsc", help="'hgsc' or class folders (default: hgsc)")
    p.add_argument("--measures", nargs="+", choices=MEASURES, default=list(MEASURES), help="(default: all)")
    p.add_argument("--n", type=int, default=16, help="held-out source tiles of class A (default: 16)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default: 50)")
    p.add_argument("--num-levels", type=int, default=10, help="(default: 10)")
    p.add_argument("--max-batch", type=int, default=CPU_MAX_BATCH, help=f"rows per U-Net call (default: {CPU_MAX_BATCH})")
    return finish_args(p, argv, "precision", ("n", "steps", "num_levels", "max_batch"))


def _run(pair, images: torch.Tensor, measure: str, args, bf16: bool) -> tuple[object, float]:
    began = time.perf_counter()
    generator = ProgressiveGenerator(pair, GenerationConfig(steps=args.steps, measure=measure, max_batch=args.max_batch, bf16=bf16))
    r = generator(images, default_levels(args.num_levels))
    return r, time.perf_counter() - began


def compare(pair, images: torch.Tensor, measure: str, args) -> dict:
    """float32 and bf16 runs of one measure, and how their outputs differ."""
    ref, t32 = _run(pair, images, measure, args, False)
    low, t16 = _run(pair, images, measure, args, True)
    same = ref.depths == low.depths
    db = psnr(low.images.flatten(0, 1).clamp(-1, 1), ref.images.flatten(0, 1).clamp(-1, 1)).view_as(same)
    diff = (low.soft_labels - ref.soft_labels).abs()
    outputs = ref.images.shape[0] * ref.images.shape[1]
    return {
        "outputs": outputs, "depths_same": float(same.float().mean()), "label_diff_max": float(diff.max()),
        "label_diff_mean": float(diff.mean()), "psnr_db_min": float(db.min()), "psnr_db_median": float(db.median()),
        "psnr_db_min_same_depth": float(db[same].min()) if bool(same.any()) else None,
        "images_below_floor": int((db < PSNR_FLOOR_DB).sum()),
        "s_per_output_fp32": t32 / outputs, "s_per_output_bf16": t16 / outputs, "speedup": t32 / t16,
        "within_tolerance": bool(diff.max() <= LABEL_TOLERANCE and db.min() >= PSNR_FLOOR_DB),
    }


def render_markdown(res: dict) -> str:
    lines = [f"# bf16 autocast vs float32 ({res['n']} held-out tiles, S = {res['steps']}, {res['levels']} levels, {res['threads']} threads)", "",
             f"`{res['command']}` on {res['machine']}; native bf16 on this device: {res['native_bf16']}. Each measure ran float32 "
             f"then bf16 in the same process, nothing else of this benchmark beside it.", "",
             "| measure | depths same | label diff max / mean | PSNR dB min / median | min PSNR, same depth | images < 40 dB | "
             "s / output fp32 | s / output bf16 | speed-up | within 0.01 and 40 dB |", "| --- " * 10 + "|"]
    for m, r in res["measures"].items():
        same_db = "-" if r["psnr_db_min_same_depth"] is None else f"{r['psnr_db_min_same_depth']:.1f}"
        lines.append(f"| {m} | {r['depths_same']:.3f} | {r['label_diff_max']:.4f} / {r['label_diff_mean']:.4f} | "
                     f"{r['psnr_db_min']:.1f} / {r['psnr_db_median']:.1f} | {same_db} | {r['images_below_floor']} of {r['outputs']} | "
                     f"{r['s_per_output_fp32']:.3f} | {r['s_per_output_bf16']:.3f} | {r['speedup']:.2f}x | {r['within_tolerance']} |")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res["measures"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].bar(names, [res["measures"][m]["psnr_db_median"] for m in names], color="C0", label="median")
    axes[0].bar(names, [res["measures"][m]["psnr_db_min"] for m in names], color="C1", label="min")
    axes[0].axhline(PSNR_FLOOR_DB, color="k", ls=":", lw=1)
    axes[0].set_ylabel("PSNR bf16 vs fp32 (dB)")
    axes[0].legend()
    axes[1].bar(names, [res["measures"][m]["speedup"] for m in names], color="C2")
    axes[1].set_ylabel("fp32 time / bf16 time")
    save_figure(fig, path)


def main(argv=None) -> int:
    args = parse_args(argv)
    applied, pair, splits = open_benchmark(args)
    images = spread_heldout(splits, pair.classes[0], args.n, args.device)
    res = {"command": command_line("precision.py", argv), "machine": machine_description(args.device), "threads": applied["threads"],
           "native_bf16": native_bf16(args.device), "n": len(images), "steps": args.steps, "levels": args.num_levels, "pair": str(args.pair),
           "pair_sha256": pair_sha256(pair), "pair_training": pair_training(pair), "measures": {}}
    for measure in args.measures:
        res["measures"][measure] = compare(pair, images, measure, args)
        print(measure, res["measures"][measure], flush=True)
    write_report(res, Path(args.out), render_markdown, plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
