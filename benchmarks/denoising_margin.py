"""Does the pair's own denoising margin follow what the progressive images show better than their soft
labels do? (issue: soft labels that follow the images)

Every label measure places the levels at fixed label values (0.1 ... 1.0), so no measure of the
inversion path can follow the judge's spread *between* sources (docs/method.md). The denoising margin
(:func:`progaug.margin.denoising_margin`: the source model's noise-prediction error minus the target
model's, on the same noise, at high-noise timesteps) reads each decoded image itself. This benchmark
generates the progressive images of ``--n`` held-out class-A tiles under each ``--measures`` (as
``label_fidelity.py`` does), and compares with independent judges (the small CNN of ``label_fidelity.py``,
trained on the real training tiles only, one per ``--judge-seeds``):

- Spearman(soft label, judge p) and Spearman(margin, judge p), and their paired difference with a 95 %
  bootstrap interval over source tiles;
- the share of images judged as the source class among those labelled >= 0.5 and among those with a
  margin > 0 (the margin's own sign: not a calibrated probability);
- on real tiles: the margin's AUC for A vs B on held-out and on training tiles.

    python benchmarks/denoising_margin.py --threads 1

Writes ``benchmarks/results/denoising_margin.{json,md,png}`` (the PNG: judge p against label and margin).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command_line, finish_args, heldout, open_benchmark, pair_sha256, pair_training, repo_relative, write_report
from label_fidelity import generate, judge_p, pick_sources, spearman, train_judge
from progaug.data.tiles import to_model_range
from progaug.diffusion.schedule import training_alpha_bar
from progaug.margin import DEFAULT_MARGIN_TIMESTEPS, denoising_margin, margin_auc
from progaug.runtime import machine_description

BOOTSTRAP_DRAWS = 1000


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", default="hgsc-demo", help="embedded pair name or pair folder (default: hgsc-demo)")
    p.add_argument("--data", default="hgsc", help="'hgsc' or ROOT with {train,val,test}/<class>/ (default: hgsc)")
    p.add_argument("--n", type=int, default=24, help="held-out class-A source tiles (default: 24)")
    p.add_argument("--seed", type=int, default=1, help="order of the source tiles (default: 1)")
    p.add_argument("--measures", nargs="+", default=["paper", "preview"], help="label measures (default: paper preview)")
    p.add_argument("--timesteps", type=int, nargs="+", default=list(DEFAULT_MARGIN_TIMESTEPS), help="training timesteps of the margin")
    p.add_argument("--margin-seed", type=int, default=0, help="seed of the margin's noise (default: 0)")
    p.add_argument("--shared-noise", action="store_true",
                   help="one noise draw per timestep for every image, as `--labels margin` reads images (default: one per image)")
    p.add_argument("--judge-seeds", type=int, nargs="+", default=[1, 2], help="one judge per seed (default: 1 2)")
    p.add_argument("--judge-steps", type=int, default=300, help="AdamW steps of each judge (default: 300)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default: 50)")
    p.add_argument("--num-levels", type=int, default=10, help="progressive levels (default: 10)")
    p.add_argument("--max-batch", type=int, default=64, help="rows per U-Net call (default: 64)")
    p.add_argument("--chunk", type=int, default=12, help="source tiles per generator call (default: 12)")
    p.add_argument("--bf16", action="store_true", help="generate under bf16 autocast (the margin and the judges stay float32)")
    return finish_args(p, argv, "denoising_margin", ("n", "judge_steps", "steps", "num_levels", "max_batch", "chunk"))


def paired_spearman_ci(labels: torch.Tensor, margins: torch.Tensor, judged: torch.Tensor, seed: int = 0) -> dict:
    """Spearman(margin, judge) minus Spearman(label, judge) and its 95 % bootstrap interval over sources
    (``(B, L)`` tensors; a source's images stay together)."""
    gen = torch.Generator().manual_seed(seed)
    b = labels.shape[0]
    diffs = []
    for _ in range(BOOTSTRAP_DRAWS):
        pick = torch.randint(0, b, (b,), generator=gen)
        j = judged[pick].flatten()
        ml, lb = spearman(margins[pick].flatten(), j), spearman(labels[pick].flatten(), j)
        if ml is not None and lb is not None:
            diffs.append(ml - lb)
    ml, lb = spearman(margins.flatten(), judged.flatten()), spearman(labels.flatten(), judged.flatten())
    d = torch.tensor(diffs, dtype=torch.float64)
    return {"mean": None if ml is None or lb is None else ml - lb,
            "ci95": [float(d.quantile(0.025)), float(d.quantile(0.975))] if diffs else None}


def judged_a_share(select: torch.Tensor, judged: torch.Tensor) -> float | None:
    """Share of the selected images the judge calls A (p(B) < 0.5); None when none is selected."""
    return float((judged[select] < 0.5).double().mean()) if select.any() else None


def main(argv=None) -> int:
    args = parse_args(argv)
    began = time.time()
    applied, pair, splits = open_benchmark(args)
    a, b = pair.classes
    alpha_bar = training_alpha_bar(pair.diffusion)

    def margin(uint8: torch.Tensor) -> torch.Tensor:
        return denoising_margin(pair.source, pair.target, alpha_bar, to_model_range(uint8).to(args.device), args.timesteps,
                                seed=args.margin_seed, max_batch=args.max_batch, shared_noise=args.shared_noise)

    train_a, train_b = (splits["train"].of_class(c).images for c in (a, b))
    held_a, held_b = heldout(splits, a), heldout(splits, b)
    real = {"train": margin_auc(margin(train_a), margin(train_b))}
    if held_a is not None and held_b is not None:
        real["heldout"] = margin_auc(margin(held_a), margin(held_b))
    judges = {s: train_judge(train_a, train_b, steps=args.judge_steps, seed=s, device=args.device) for s in args.judge_seeds}
    sources, split = pick_sources(splits, a, args.n, args.seed)
    res = {"classes": [a, b], "pair": repo_relative(args.pair), "pair_sha256": pair_sha256(pair), "pair_training": pair_training(pair),
           "command": command_line("denoising_margin.py", argv), "machine": machine_description(args.device), "threads": applied["threads"],
           "n": len(sources), "sources_split": split, "timesteps": args.timesteps, "margin_seed": args.margin_seed, "shared_noise": args.shared_noise,
           "judge_seeds": args.judge_seeds, "steps": args.steps, "levels": args.num_levels, "bf16": args.bf16,
           "real_auc": real, "measures": {}}
    for m in args.measures:
        gen = generate(pair, sources, m, args)
        labels = gen["labels"]
        margins = margin(gen["images"].flatten(0, 1)).view_as(labels)
        entry = {"seconds": round(gen["seconds"], 1), "evals_per_output": gen["evals"] / labels.numel(), "judges": {},
                 "scatter": {"label": labels.flatten().tolist(), "margin": margins.flatten().tolist()}}
        for s, judge in judges.items():
            judged = judge_p(judge, gen["images"].flatten(0, 1)).view_as(labels)
            entry["judges"][str(s)] = {
                "spearman_label": spearman(labels.flatten(), judged.flatten()),
                "spearman_margin": spearman(margins.flatten(), judged.flatten()),
                "margin_minus_label": paired_spearman_ci(labels, margins, judged),
                "label_high_judged_a": judged_a_share(labels.flatten() >= 0.5, judged.flatten()),
                "margin_positive_judged_a": judged_a_share(margins.flatten() > 0, judged.flatten()),
                "judge_p": judged.flatten().tolist()}
        entry["margin_positive_share"] = float((margins > 0).double().mean())
        res["measures"][m] = entry
        print(f"{m}: done in {gen['seconds']:.0f} s", flush=True)
    res["seconds"] = round(time.time() - began, 1)
    write_report(res, Path(args.out), markdown, plot)
    return 0


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def _num(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def markdown(res: dict) -> str:
    lines = [f"# The pair's denoising margin against the judges ({res['classes'][0]} -> {res['classes'][1]})", "",
             f"`{res['command']}`; pair `{res['pair']}` (source sha256 {res['pair_sha256']['source'][:12]}), {res['n']} {res['sources_split']} "
             f"sources, {res['levels']} levels, S = {res['steps']}, margin timesteps {res['timesteps']} "
             f"({'one noise draw shared by every image' if res.get('shared_noise') else 'one noise draw per image'}); {res['seconds']:.0f} s.", "",
             f"Margin AUC for {res['classes'][0]} vs {res['classes'][1]} on real tiles: "
             + ", ".join(f"{k} {v:.3f}" for k, v in res["real_auc"].items()) + ".", "",
             "| measure | judge seed | Spearman(label, judge) | Spearman(margin, judge) | margin minus label [95 % CI] | "
             "labelled >= 0.5 judged A | margin > 0 judged A | margin > 0 share |", "| --- " * 8 + "|"]
    for m, e in res["measures"].items():
        for s, j in e["judges"].items():
            d = j["margin_minus_label"]
            diff = "-" if d["mean"] is None or d["ci95"] is None else f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
            lines.append(f"| {m} | {s} | {_num(j['spearman_label'])} | {_num(j['spearman_margin'])} | {diff} | {_pct(j['label_high_judged_a'])} | "
                         f"{_pct(j['margin_positive_judged_a'])} | {_pct(e['margin_positive_share'])} |")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measures = list(res["measures"])
    fig, axes = plt.subplots(len(measures), 2, figsize=(8, 3.6 * len(measures)), squeeze=False)
    for row, m in zip(axes, measures):
        e = res["measures"][m]
        judged = next(iter(e["judges"].values()))["judge_p"]
        for ax, key in zip(row, ("label", "margin")):
            ax.scatter(e["scatter"][key], judged, s=6, alpha=0.5)
            ax.set_xlabel(f"{key} ({m})")
            ax.set_ylabel(f"judge p({res['classes'][1]})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
