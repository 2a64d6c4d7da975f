"""Cheaper decode schedules against every state decoded: how far the images move, what they save.

The same held-out class-A tiles go through ``generate_progressive`` once with every state decoded (the
paper's decode, ``decode_stride = 1``) and once per schedule ``STRIDE:FINE`` (``GenerationConfig.decode_stride``
and ``decode_fine``: the last ``FINE`` states one per move, ``STRIDE`` states per move above them), in one
process, float32, the same settings otherwise. The inversion and the label measure do not change, so the
depths and soft labels must stay identical; reported per schedule: the image PSNR against every state decoded
(minimum, 5th percentile, median, per level), the images under the 40 dB floor that progaug's speed settings
promise (``docs/performance.md``), optionally LPIPS to every state decoded, U-Net evaluations and seconds per
output side by side.

    python benchmarks/decode_schedule.py --threads 1                      # 16 tiles, preview, 2:10 2:0 3:10 2:20
    python benchmarks/decode_schedule.py --schedules 2:10 --n 32 --metric-weights ../shared/weights

Writes ``benchmarks/results/decode_schedule.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command_line, finish_args, open_benchmark, pair_sha256, pair_training, parse_schedule, save_figure, spread_heldout, write_report
from progaug.frequency import default_levels
from progaug.generator import GenerationConfig, ProgressiveGenerator
from progaug.labels import DEFAULT_MEASURE, MEASURES
from progaug.metrics import psnr
from progaug.runtime import CPU_MAX_BATCH, machine_description

PSNR_FLOOR_DB = 40.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", default="hgsc-demo", help="embedded pair name or pair folder (default: hgsc-demo)")
    p.add_argument("--data", default="hgsc", help="'hgsc' or class folders (default: hgsc)")
    p.add_argument("--measure", choices=MEASURES, default=DEFAULT_MEASURE, help=f"label measure (default: {DEFAULT_MEASURE})")
    p.add_argument("--schedules", nargs="+", type=parse_schedule, default=[(2, 10), (2, 0), (3, 10), (2, 20)],
                   help="decode schedules STRIDE:FINE (default: 2:10 2:0 3:10 2:20)")
    p.add_argument("--n", type=int, default=16, help="held-out source tiles of class A (default: 16)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default: 50)")
    p.add_argument("--num-levels", type=int, default=10, help="(default: 10)")
    p.add_argument("--max-batch", type=int, default=CPU_MAX_BATCH, help=f"rows per U-Net call (default: {CPU_MAX_BATCH})")
    p.add_argument("--metric-weights", default=None, help="folder of the LPIPS safetensors: adds LPIPS to every state decoded")
    return finish_args(p, argv, "decode_schedule", ("n", "steps", "num_levels", "max_batch"))


def _run(pair, images: torch.Tensor, args, stride: int, fine: int):
    began = time.perf_counter()
    config = GenerationConfig(steps=args.steps, measure=args.measure, max_batch=args.max_batch, bf16=False, decode_stride=stride,
                              decode_fine=fine)
    result = ProgressiveGenerator(pair, config)(images, default_levels(args.num_levels))
    return result, time.perf_counter() - began


def compare(ref, t_ref: float, out, t_out: float, lpips=None) -> dict:
    """How one schedule's outputs differ from every state decoded (``ref``), and what it saved."""
    outputs = ref.images.shape[0] * ref.images.shape[1]
    db = psnr(out.images.flatten(0, 1).clamp(-1, 1), ref.images.flatten(0, 1).clamp(-1, 1)).view(ref.images.shape[:2])
    res = {
        "depths_same": bool(torch.equal(out.depths, ref.depths)),
        "label_diff_max": float((out.soft_labels - ref.soft_labels).abs().max()),
        "psnr_db_min": float(db.min()), "psnr_db_p05": float(db.flatten().quantile(0.05)), "psnr_db_median": float(db.median()),
        "psnr_db_median_per_level": [float(v) for v in db.median(0).values],
        "images_below_floor": int((db < PSNR_FLOOR_DB).sum()), "outputs": outputs,
        "evals_per_output": out.model_evaluations / outputs, "s_per_output": t_out / outputs, "speedup": t_ref / t_out,
    }
    if lpips is not None:
        with torch.no_grad():
            d = lpips(out.images.flatten(0, 1).clamp(-1, 1).cpu(), ref.images.flatten(0, 1).clamp(-1, 1).cpu()).flatten()
        res["lpips_mean"], res["lpips_max"] = float(d.mean()), float(d.max())
    return res


def _name(stride: int, fine: int) -> str:
    return f"stride {stride}, fine {fine}"


def render_markdown(res: dict) -> str:
    lines = [f"# Decode schedules against every state decoded ({res['n']} held-out tiles, {res['measure']}, S = {res['steps']}, "
             f"{res['levels']} levels, {res['threads']} threads)", "",
             f"`{res['command']}` on {res['machine']}. Every state decoded, then each schedule, in one process, float32.", "",
             "| schedule | depths, labels same | PSNR dB min / 5 % / median | images < 40 dB | LPIPS mean / max | U-Net evals / output "
             "(every state: {:.1f}) | s / output | speed-up |".format(res["evals_per_output_every_state"]), "| --- " * 8 + "|"]
    for name, r in res["schedules"].items():
        lp = f"{r['lpips_mean']:.4f} / {r['lpips_max']:.4f}" if "lpips_mean" in r else "-"
        lines.append(f"| {name} | {r['depths_same'] and r['label_diff_max'] == 0} | {r['psnr_db_min']:.1f} / {r['psnr_db_p05']:.1f} / "
                     f"{r['psnr_db_median']:.1f} | {r['images_below_floor']} of {r['outputs']} | {lp} | {r['evals_per_output']:.1f} | "
                     f"{r['s_per_output']:.3f} | {r['speedup']:.2f}x |")
    lines += ["", "Median PSNR (dB) per level (mean depth of the level in brackets):", "",
              "| schedule | " + " | ".join(f"{i + 1} ({d:.1f})" for i, d in enumerate(res["mean_depth_per_level"])) + " |",
              "| --- " * (len(res["mean_depth_per_level"]) + 1) + "|"]
    for name, r in res["schedules"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in r["psnr_db_median_per_level"]) + " |")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for name, r in res["schedules"].items():
        axes[0].plot(res["mean_depth_per_level"], r["psnr_db_median_per_level"], marker="o", label=name)
        axes[1].scatter(r["evals_per_output"], r["psnr_db_p05"], label=name)
    axes[0].axhline(PSNR_FLOOR_DB, color="k", ls=":", lw=1)
    axes[0].set(xlabel="mean depth of the level", ylabel="median PSNR vs every state (dB)")
    axes[1].axhline(PSNR_FLOOR_DB, color="k", ls=":", lw=1)
    axes[1].set(xlabel=f"U-Net evaluations per output (every state: {res['evals_per_output_every_state']:.1f})",
                ylabel="5th-percentile PSNR (dB)")
    axes[0].legend(fontsize=7)
    save_figure(fig, path)


def main(argv=None) -> int:
    args = parse_args(argv)
    applied, pair, splits = open_benchmark(args)
    images = spread_heldout(splits, pair.classes[0], args.n, args.device)
    lpips = None
    if args.metric_weights is not None:
        from progaug.metrics import load_lpips

        lpips = load_lpips(args.metric_weights)
    _run(pair, images[:1], args, 1, 0)  # warm-up: the first run of a process is slower (allocator, kernels)
    ref, t_ref = _run(pair, images, args, 1, 0)
    outputs = ref.images.shape[0] * ref.images.shape[1]
    res = {"command": command_line("decode_schedule.py", argv), "machine": machine_description(args.device),
           "threads": applied["threads"], "n": len(images), "measure": args.measure, "steps": args.steps, "levels": args.num_levels,
           "pair": str(args.pair), "pair_sha256": pair_sha256(pair), "pair_training": pair_training(pair),
           "evals_per_output_every_state": ref.model_evaluations / outputs, "s_per_output_every_state": t_ref / outputs,
           "mean_depth_per_level": [float(v) for v in ref.depths.float().mean(0)], "schedules": {}}
    for stride, fine in args.schedules:
        out, t_out = _run(pair, images, args, stride, fine)
        res["schedules"][_name(stride, fine)] = compare(ref, t_ref, out, t_out, lpips)
        print(_name(stride, fine), {k: v for k, v in res["schedules"][_name(stride, fine)].items() if not isinstance(v, list)}, flush=True)
    write_report(res, Path(args.out), render_markdown, plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
