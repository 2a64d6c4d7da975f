"""Calibrated margin labels: does p(B) = sigmoid(a * margin + b), fitted on real tiles the pair never saw,
label the progressive images as probabilities better than their soft labels do? (issue: labels that
follow the images)

The denoising margin (progaug.margin) ranks the images with the judges better than the soft labels
(``denoising_margin.py``), but it is not a probability. Platt scaling
(:func:`progaug.margin.fit_margin_calibration`) maps it to one, fitted here on the real tiles of both
classes in the **validation** split. The figures are taken on the images of sources from the **test** split
only (the validation sources' images are left out, their real tiles took part in the fit):

- Spearman(label, judge p) of the soft label and of the calibrated label (the latter is the margin's own:
  the calibration is monotone), as ``denoising_margin.py`` reports them;
- mean |label - judge p| (as ``label_fidelity.py``) and the paired difference, calibrated minus soft
  label, with a 95 % bootstrap interval over sources (a source's images stay together);
- the share of images labelled >= 0.5 that the judge calls A, and of those labelled < 0.5 that it calls B,
  for each label (a label that runs behind the images fails the second, one that runs ahead the first);
- the mean label against the mean judge p (calibration in the large);
- on the real test tiles: the calibrated p's AUC, mean |p - class| and Brier score.

It generates nothing: it reads the images' margins and the judges' p(B) that ``denoising_margin.py
--shared-noise`` stored (``--scatter``, of the same pair and data; its margin timesteps and noise seed are the
calibration's, and the noise must be the one draw shared by every image that ``--labels margin`` uses: a
calibration absorbs that draw's offset, so margins of other draws are on another scale), and computes the
margins of the real validation and test tiles (2 U-Net evaluations per timestep per tile).

    python benchmarks/denoising_margin.py --threads 1 --n 100 --measures preview --shared-noise \
        --out benchmarks/results/denoising_margin_n100_shared
    python benchmarks/margin_calibration.py --threads 1 --save-to progaug/pairs/hgsc-demo

Writes ``benchmarks/results/margin_calibration.{json,md,png}`` (the PNG: mean judge p per label bin, the
reliability of each label); ``--save-to PAIR_DIR`` also writes the fitted ``margin_calibration.json`` there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, command_line, finish_args, open_benchmark, pair_sha256, repo_relative, write_report
from denoising_margin import judged_a_share
from label_fidelity import source_indices, spearman
from progaug.data.tiles import to_model_range
from progaug.margin import MarginCalibration, fit_pair_calibration, margin_auc, pair_margin, write_calibration
from progaug.runtime import machine_description

BOOTSTRAP_DRAWS = 2000
BINS = 10


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", default="hgsc-demo", help="embedded pair name or pair folder (default: hgsc-demo)")
    p.add_argument("--data", default="hgsc", help="'hgsc' or ROOT with {train,val,test}/<class>/ (default: hgsc)")
    p.add_argument("--scatter", default=str(ROOT / "benchmarks" / "results" / "denoising_margin_n100_shared.json"),
                   help="a denoising_margin.py --shared-noise result of this pair and data "
                        "(default: benchmarks/results/denoising_margin_n100_shared.json)")
    p.add_argument("--measure", default="preview", help="which of its measures (default: preview)")
    p.add_argument("--source-seed", type=int, default=1, help="the --seed that run ordered its sources with (default: 1, its default)")
    p.add_argument("--max-batch", type=int, default=64, help="rows per U-Net call (default: 64)")
    p.add_argument("--save-to", default=None, help="pair folder to write the fitted margin_calibration.json into")
    return finish_args(p, argv, "margin_calibration", ("max_batch",))


def read_scatter(path: Path, measure: str, pair) -> dict:
    """The stored run: checked to be of this pair, with the measure's labels, margins and judges' p."""
    res = json.loads(path.read_text())
    if res["pair_sha256"] != pair_sha256(pair):
        raise SystemExit(f"{path} was measured on another pair (source sha256 {res['pair_sha256']['source'][:12]})")
    if measure not in res["measures"]:
        raise SystemExit(f"{path} has no measure {measure!r}; it has {sorted(res['measures'])}")
    if res["sources_split"] != "heldout":
        raise SystemExit(f"{path}: its sources are {res['sources_split']} tiles, not held-out ones")
    if not res.get("shared_noise"):
        raise SystemExit(f"{path} drew the margin's noise per image; the calibration reads images with one draw shared by all "
                         f"(as `--labels margin` does): rerun denoising_margin.py with --shared-noise")
    return res


def source_splits(splits: dict, cls: str, n: int, seed: int) -> list[str]:
    """Which split (``val`` or ``test``) each of the ``n`` held-out sources of ``denoising_margin.py`` came from."""
    n_val = len(splits["val"].of_class(cls).images)
    n_held = n_val + len(splits["test"].of_class(cls).images)
    return ["val" if int(k) < n_val else "test" for k in source_indices(n_held, n, seed)]


def mean_abs_ci(labels: torch.Tensor, calibrated: torch.Tensor, judged: torch.Tensor, seed: int = 0) -> dict:
    """Mean |label - judge| of each and their paired difference (calibrated minus label), with a 95 %
    bootstrap interval over sources (``(B, L)`` tensors)."""
    per_source = ((calibrated - judged).abs() - (labels - judged).abs()).mean(1).double()
    gen = torch.Generator().manual_seed(seed)
    draws = per_source[torch.randint(0, len(per_source), (BOOTSTRAP_DRAWS, len(per_source)), generator=gen)].mean(1)
    return {"label": float((labels - judged).abs().mean()), "calibrated": float((calibrated - judged).abs().mean()),
            "difference": {"mean": float(per_source.mean()), "ci95": [float(draws.quantile(0.025)), float(draws.quantile(0.975))]}}


def judged_b_share(select: torch.Tensor, judged: torch.Tensor) -> float | None:
    """Share of the selected images the judge calls B (p(B) >= 0.5); None when none is selected."""
    share = judged_a_share(select, judged)
    return None if share is None else 1.0 - share


def reliability(labels: torch.Tensor, judged: torch.Tensor) -> list[dict]:
    """Mean judge p per label bin of width 1 / BINS (bins without images left out)."""
    out = []
    for k in range(BINS):
        lo, hi = k / BINS, (k + 1) / BINS
        sel = (labels >= lo) & ((labels < hi) if k < BINS - 1 else (labels <= hi))
        if sel.any():
            out.append({"bin": [lo, hi], "images": int(sel.sum()), "mean_label": float(labels[sel].mean()), "mean_judge": float(judged[sel].mean())})
    return out


def real_tile_scores(cal: MarginCalibration, margins_a: torch.Tensor, margins_b: torch.Tensor) -> dict:
    """The calibrated p on real tiles of known class: AUC, mean |p - class|, Brier score."""
    p = cal.probability(torch.cat([margins_a, margins_b])).double()
    y = torch.cat([torch.zeros(len(margins_a)), torch.ones(len(margins_b))]).double()
    return {"tiles": [len(margins_a), len(margins_b)], "auc": margin_auc(margins_a, margins_b), "mean_abs": float((p - y).abs().mean()),
            "brier": float(((p - y) ** 2).mean()), "mean_p": [float(p[y == 0].mean()), float(p[y == 1].mean())]}


def main(argv=None) -> int:
    args = parse_args(argv)
    began = time.time()
    applied, pair, splits = open_benchmark(args)
    a, b = pair.classes
    stored = read_scatter(Path(args.scatter), args.measure, pair)
    timesteps, seed = tuple(stored["timesteps"]), stored["margin_seed"]

    def tiles(split: str, cls: str) -> torch.Tensor:
        return to_model_range(splits[split].of_class(cls).images).to(args.device)

    val_a, val_b = tiles("val", a), tiles("val", b)
    cal = fit_pair_calibration(pair, val_a, val_b, timesteps=timesteps, seed=seed, max_batch=args.max_batch,
                               fitted_on=f"{args.data} val split: {len(val_a)} {a} + {len(val_b)} {b} real tiles")
    test_real = real_tile_scores(cal, *(pair_margin(pair, tiles("test", c), timesteps=timesteps, seed=seed, max_batch=args.max_batch)
                                        for c in (a, b)))
    entry = stored["measures"][args.measure]
    levels = stored["levels"]
    labels = torch.tensor(entry["scatter"]["label"]).view(-1, levels)
    margins = torch.tensor(entry["scatter"]["margin"]).view(-1, levels)
    from_split = source_splits(splits, a, len(labels), args.source_seed)
    keep = torch.tensor([s == "test" for s in from_split])
    labels, calibrated = labels[keep], cal.probability(margins[keep].flatten()).view(-1, levels)
    res = {"classes": [a, b], "pair": repo_relative(args.pair), "pair_sha256": pair_sha256(pair), "data": args.data,
           "command": command_line("margin_calibration.py", argv), "machine": machine_description(args.device), "threads": applied["threads"],
           "scatter": repo_relative(args.scatter), "scatter_command": stored["command"], "measure": args.measure,
           "calibration": cal.to_dict(), "sources": {"test": int(keep.sum()), "val_left_out": int((~keep).sum())},
           "levels": levels, "real_test_tiles": test_real, "judges": {}}
    for s, j in entry["judges"].items():
        judged = torch.tensor(j["judge_p"]).view(-1, levels)[keep]
        res["judges"][s] = {
            "spearman_label": spearman(labels.flatten(), judged.flatten()),
            "spearman_calibrated": spearman(calibrated.flatten(), judged.flatten()),
            "mean_abs": mean_abs_ci(labels, calibrated, judged),
            "label_high_judged_a": judged_a_share(labels.flatten() >= 0.5, judged.flatten()),
            "calibrated_high_judged_a": judged_a_share(calibrated.flatten() >= 0.5, judged.flatten()),
            "label_low_judged_b": judged_b_share(labels.flatten() < 0.5, judged.flatten()),
            "calibrated_low_judged_b": judged_b_share(calibrated.flatten() < 0.5, judged.flatten()),
            "mean": {"label": float(labels.mean()), "calibrated": float(calibrated.mean()), "judge": float(judged.mean())},
            "reliability": {"label": reliability(labels.flatten(), judged.flatten()),
                            "calibrated": reliability(calibrated.flatten(), judged.flatten())}}
    if args.save_to:
        res["saved_to"] = repo_relative(str(write_calibration(args.save_to, cal)))
    res["seconds"] = round(time.time() - began, 1)
    write_report(res, Path(args.out), markdown, plot)
    return 0


def _ci(d: dict) -> str:
    return f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"


def markdown(res: dict) -> str:
    cal, real, a, b = res["calibration"], res["real_test_tiles"], *res["classes"]
    lines = [f"# Calibrated margin labels against the judges ({a} -> {b})", "",
             f"`{res['command']}`; pair `{res['pair']}` (source sha256 {res['pair_sha256']['source'][:12]}); images, margins and judges "
             f"from `{res['scatter']}` (`{res['scatter_command']}`), measure `{res['measure']}`; {res['seconds']:.0f} s.", "",
             f"Calibration fitted on the {cal['fitted_on']}: p({b}) = sigmoid({cal['slope']:.2f} * margin {cal['intercept']:+.3f}) "
             f"(p = 0.5 at margin {-cal['intercept'] / cal['slope']:+.4f}; margin AUC there {cal['auc']:.3f}; timesteps {cal['timesteps']}, "
             f"seed {cal['seed']}).", "",
             f"On the real test tiles ({real['tiles'][0]} {a}, {real['tiles'][1]} {b}): AUC {real['auc']:.3f}, mean |p - class| "
             f"{real['mean_abs']:.3f}, Brier {real['brier']:.3f}, mean p {real['mean_p'][0]:.3f} ({a}) / {real['mean_p'][1]:.3f} ({b}).", "",
             f"Images of the {res['sources']['test']} test-split sources ({res['sources']['val_left_out']} validation-split sources "
             f"left out), {res['levels']} levels each:", "",
             "| judge seed | Spearman: label / calibrated | mean abs(label - judge): label / calibrated | calibrated minus label [95 % CI] | "
             "labelled >= 0.5 judged A: label / calibrated | labelled < 0.5 judged B: label / calibrated | mean label / calibrated / judge |",
             "| --- " * 7 + "|"]
    for s, j in res["judges"].items():
        m, mean = j["mean_abs"], j["mean"]
        lines.append(f"| {s} | {j['spearman_label']:.3f} / {j['spearman_calibrated']:.3f} | {m['label']:.3f} / {m['calibrated']:.3f} | "
                     f"{_ci(m['difference'])} | {_pct(j['label_high_judged_a'])} / {_pct(j['calibrated_high_judged_a'])} | "
                     f"{_pct(j['label_low_judged_b'])} / {_pct(j['calibrated_low_judged_b'])} | "
                     f"{mean['label']:.3f} / {mean['calibrated']:.3f} / {mean['judge']:.3f} |")
    if "saved_to" in res:
        lines += ["", f"Calibration written to `{res['saved_to']}`."]
    return "\n".join(lines) + "\n"


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judges = list(res["judges"])
    fig, axes = plt.subplots(1, len(judges), figsize=(4.2 * len(judges), 4), squeeze=False)
    for ax, s in zip(axes[0], judges):
        for key, style in (("label", "o-"), ("calibrated", "s-")):
            rel = res["judges"][s]["reliability"][key]
            ax.plot([r["mean_label"] for r in rel], [r["mean_judge"] for r in rel], style, label=f"{key} ({res['measure']})" if key == "label" else key)
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        ax.set_xlabel("label (bin mean)")
        ax.set_ylabel(f"mean judge p({res['classes'][1]})")
        ax.set_title(f"judge seed {s}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
