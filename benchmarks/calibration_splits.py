"""Do margin labels read as the same probability on every split? (issue: labels a user reads as probabilities)

A pair's ``margin_calibration.json`` maps its denoising margin to p(B) (``progaug.margin``), fitted on real
tiles of one split (the embedded pair: the demo's validation split). A user who reads the labels as
probabilities assumes that a real tile of class A reads about as low on any slide as on the tiles of the fit.
This script scores the **real** tiles of each split and class with the pair's own calibration (2 U-Net
evaluations per margin timestep per tile, the calibration's timesteps and noise seed) and reports, per split
and class: the mean and median p(B), the share read >= 0.5 and the margin's AUC for A vs B. The order (AUC)
is what the downstream gain rests on; the level (the mean p of class A) is what a user reading a label
of 0.6 as "60 % tumour" relies on.

    python benchmarks/calibration_splits.py --threads 1

Writes ``benchmarks/results/calibration_splits.{json,md,png}``; ``--per-class N`` caps the tiles per split
and class (default: all).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command_line, finish_args, margin_calibration_of, open_benchmark, pair_sha256, repo_relative, save_figure, write_report
from progaug.data.tiles import to_model_range
from progaug.margin import margin_auc, pair_margin
from progaug.runtime import machine_description

SPLITS = ("train", "val", "test")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", default="hgsc-demo", help="embedded pair name or pair folder with a margin_calibration.json (default: hgsc-demo)")
    p.add_argument("--data", default="hgsc", help="'hgsc' or ROOT with {train,val,test}/<class>/ (default: hgsc)")
    p.add_argument("--per-class", type=int, default=None, help="at most this many tiles per split and class (default: all)")
    p.add_argument("--max-batch", type=int, default=64, help="rows per U-Net call (default: 64)")
    args = finish_args(p, argv, "calibration_splits", ("max_batch",))
    if args.per_class is not None and args.per_class < 1:
        p.error(f"--per-class must be >= 1, got {args.per_class}")
    return args


def split_scores(p_a: torch.Tensor, p_b: torch.Tensor, margins_a: torch.Tensor, margins_b: torch.Tensor) -> dict:
    """Per-class figures of one split: ``(N_a,)`` and ``(N_b,)`` p(B) in (0, 1) and their margins."""
    def of(p: torch.Tensor) -> dict:
        return {"tiles": len(p), "mean_p": float(p.mean()), "median_p": float(p.median()), "share_at_least_half": float((p >= 0.5).float().mean())}

    return {"a": of(p_a), "b": of(p_b), "auc": margin_auc(margins_a, margins_b)}


def main(argv=None) -> int:
    args = parse_args(argv)
    began = time.time()
    applied, pair, splits = open_benchmark(args)
    cal = margin_calibration_of(pair)
    a, b = pair.classes
    res = {"classes": [a, b], "pair": repo_relative(args.pair), "pair_sha256": pair_sha256(pair), "data": repo_relative(args.data),
           "command": command_line("calibration_splits.py", argv), "machine": machine_description(args.device), "threads": applied["threads"],
           "calibration": cal.to_dict(), "splits": {}}
    for split in SPLITS:
        margins = []
        for cls in (a, b):
            images = to_model_range(splits[split].of_class(cls).images[: args.per_class]).to(args.device)
            margins.append(pair_margin(pair, images, timesteps=cal.timesteps, seed=cal.seed, max_batch=args.max_batch).cpu())
        res["splits"][split] = split_scores(cal.probability(margins[0]), cal.probability(margins[1]), *margins)
        print(f"{split}: mean p(B) {res['splits'][split]['a']['mean_p']:.3f} ({a}) / {res['splits'][split]['b']['mean_p']:.3f} ({b})", flush=True)
    res["seconds"] = round(time.time() - began, 1)
    write_report(res, Path(args.out), markdown, plot)
    return 0


def markdown(res: dict) -> str:
    a, b = res["classes"]
    cal = res["calibration"]
    lines = [f"# Margin labels of real tiles, per split: {a} -> {b}", "", f"`{res['command']}` on {res['machine']}, "
             f"{res['threads']} threads, {res['seconds']} s.", "",
             f"Pair `{res['pair']}`, sha256 source `{res['pair_sha256']['source'][:12]}`, target `{res['pair_sha256']['target'][:12]}`; "
             f"calibration fitted on {cal['fitted_on'] or 'unknown tiles'} (timesteps {list(cal['timesteps'])}, seed {cal['seed']}).", "",
             f"| split | {a} tiles | {a}: mean / median p({b}) | {a} read >= 0.5 | {b} tiles | {b}: mean / median p({b}) | {b} read >= 0.5 | margin AUC |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for split, s in res["splits"].items():
        lines.append(f"| {split} | {s['a']['tiles']} | {s['a']['mean_p']:.3f} / {s['a']['median_p']:.3f} | {100 * s['a']['share_at_least_half']:.0f} % "
                     f"| {s['b']['tiles']} | {s['b']['mean_p']:.3f} / {s['b']['median_p']:.3f} | {100 * s['b']['share_at_least_half']:.0f} % | {s['auc']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, b = res["classes"]
    names = list(res["splits"])
    x = range(len(names))
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar([i - 0.2 for i in x], [res["splits"][s]["a"]["mean_p"] for s in names], 0.4, label=f"real {a}")
    ax.bar([i + 0.2 for i in x], [res["splits"][s]["b"]["mean_p"] for s in names], 0.4, label=f"real {b}")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(list(x), names)
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"mean margin label p({b})")
    ax.set_title("the pair's calibrated margin on real tiles, per split", fontsize=9)
    ax.legend(fontsize=8)
    save_figure(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())
