"""Should a margin label be read relative to its own source? (issue: labels a user reads as probabilities)

Margin labels (``labels="margin"``) are the pair's calibrated p(B) of each decoded image. Their level moves
with the region a source comes from (``calibration_splits.py``: real stroma reads 0.29 where the calibration
was fitted, 0.50 on the test blocks), so a lightly translated source can carry a label near 0.5. Anchoring
each label to its source's own margin would remove that offset. This script measures, against the same
independent judges, whether that makes better labels:

- ``measure``: the measure's labels (``labels="measure"``), as stored;
- ``margin``: the calibrated margin, as ``labels="margin"`` gives it;
- ``shifted``: the margin moved so that the source reads as the median real A tile of the calibration split,
  ``sigmoid(a * (m - m_source + m_A) + b)``;
- ``linear``: ``(m - m_source) / (m_B - m_A)`` clipped to [0, 1]: 0 at the source, 1 one typical A-to-B
  margin step further (``m_A``, ``m_B``: median margins of the calibration split's real tiles);
- ``relative``: ``(p - p_source) / (1 - p_source)`` clipped to [0, 1]: the share of the way from the
  source's p(B) to 1.

For each label and judge: Spearman with the judge's p(B), mean |label - judge p|, the share of images
labelled >= 0.5 that the judge calls A and of those labelled < 0.5 that it calls B, and the mean label per
level; over all sources and over the test-split sources only (the validation split's real tiles took part
in the calibration). It generates nothing: it reads the images' margins, the measure's labels and the
judges' p from a stored ``denoising_margin.py --shared-noise`` run (as ``margin_calibration.py``) and
computes the margins of the sources themselves and of the calibration split's real tiles (2 U-Net
evaluations per margin timestep per tile).

    python benchmarks/anchored_margin.py --threads 1

Writes ``benchmarks/results/anchored_margin.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, command_line, finish_args, margin_calibration_of, open_benchmark, pair_sha256, repo_relative, save_figure, write_report
from denoising_margin import judged_a_share
from label_fidelity import pick_sources, spearman
from margin_calibration import judged_b_share, read_scatter, source_splits
from progaug.data.tiles import to_model_range
from progaug.margin import pair_margin
from progaug.runtime import machine_description

LABELS = ("measure", "margin", "shifted", "linear", "relative")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", default="hgsc-demo", help="embedded pair name or pair folder with a margin_calibration.json (default: hgsc-demo)")
    p.add_argument("--data", default="hgsc", help="'hgsc' or ROOT with {train,val,test}/<class>/ (default: hgsc)")
    p.add_argument("--scatter", default=str(ROOT / "benchmarks" / "results" / "denoising_margin_n100_shared.json"),
                   help="a denoising_margin.py --shared-noise result of this pair and data (default: benchmarks/results/denoising_margin_n100_shared.json)")
    p.add_argument("--measure", default="preview", help="which of its measures (default: preview)")
    p.add_argument("--source-seed", type=int, default=1, help="the --seed that run ordered its sources with (default: 1, its default)")
    p.add_argument("--max-batch", type=int, default=64, help="rows per U-Net call (default: 64)")
    return finish_args(p, argv, "anchored_margin", ("max_batch",))


def anchored_labels(margins: torch.Tensor, source_margins: torch.Tensor, slope: float, intercept: float,
                    margin_a: float, margin_b: float) -> dict[str, torch.Tensor]:
    """The margin-based labels of ``(S, L)`` image margins whose sources have ``(S,)`` margins.

    Args:
        margins: ``(S, L)`` denoising margins of the decoded images (S sources, L levels).
        source_margins: ``(S,)`` margins of the sources themselves, same timesteps and noise.
        slope, intercept: the pair's calibration, ``p(B) = sigmoid(slope * m + intercept)``.
        margin_a, margin_b: typical margins of real A and real B tiles (``margin_b > margin_a``).

    Returns:
        ``{"margin", "shifted", "linear", "relative"}`` -> ``(S, L)`` float64 labels in [0, 1].
    """
    if not margin_b > margin_a:
        raise ValueError(f"the typical B margin {margin_b} must exceed the typical A margin {margin_a}")
    m, src = margins.double(), source_margins.double()[:, None]
    raw = torch.sigmoid(slope * m + intercept)
    p_src = torch.sigmoid(slope * src + intercept)
    return {"margin": raw,
            "shifted": torch.sigmoid(slope * (m - src + margin_a) + intercept),
            "linear": ((m - src) / (margin_b - margin_a)).clamp(0, 1),
            "relative": ((raw - p_src) / (1 - p_src)).clamp(0, 1)}


def scores(labels: torch.Tensor, judged: torch.Tensor) -> dict:
    """Agreement of ``(S, L)`` labels with ``(S, L)`` judge p(B)."""
    x, y = labels.flatten().float(), judged.flatten().float()
    return {"spearman": spearman(x, y), "mean_abs": float((x - y).abs().mean()),
            "high_judged_a": judged_a_share(x >= 0.5, y), "low_judged_b": judged_b_share(x < 0.5, y),
            "mean_label": float(x.mean()), "mean_judge": float(y.mean())}


def main(argv=None) -> int:
    args = parse_args(argv)
    began = time.time()
    applied, pair, splits = open_benchmark(args)
    cal = margin_calibration_of(pair)
    stored = read_scatter(Path(args.scatter), args.measure, pair)
    if tuple(stored["timesteps"]) != tuple(cal.timesteps) or stored["margin_seed"] != cal.seed:
        raise SystemExit(f"{args.scatter}: its margins (timesteps {stored['timesteps']}, seed {stored['margin_seed']}) are not the "
                         f"calibration's (timesteps {list(cal.timesteps)}, seed {cal.seed})")
    a, b = pair.classes
    levels = stored["levels"]
    entry = stored["measures"][args.measure]
    margins = torch.tensor(entry["scatter"]["margin"]).view(-1, levels)
    n = len(margins)

    def margin(uint8: torch.Tensor) -> torch.Tensor:
        return pair_margin(pair, to_model_range(uint8).to(args.device), timesteps=cal.timesteps, seed=cal.seed, max_batch=args.max_batch).cpu()

    sources, _ = pick_sources(splits, a, n, args.source_seed)
    source_margins = margin(sources)
    margin_a = float(margin(splits["val"].of_class(a).images).median())
    margin_b = float(margin(splits["val"].of_class(b).images).median())
    labels = {"measure": torch.tensor(entry["scatter"]["label"]).view(-1, levels).double(),
              **anchored_labels(margins, source_margins, cal.slope, cal.intercept, margin_a, margin_b)}
    test = torch.tensor([s == "test" for s in source_splits(splits, a, n, args.source_seed)])
    res = {"classes": [a, b], "pair": repo_relative(args.pair), "pair_sha256": pair_sha256(pair), "data": repo_relative(args.data),
           "command": command_line("anchored_margin.py", argv), "machine": machine_description(args.device), "threads": applied["threads"],
           "scatter": repo_relative(args.scatter), "measure": args.measure, "calibration": cal.to_dict(),
           "typical_margin": {"a": margin_a, "b": margin_b}, "sources": {"all": n, "test": int(test.sum())},
           "source_p_mean": float(torch.sigmoid(cal.slope * source_margins.double() + cal.intercept).mean()),
           "levels": levels, "labels": {}}
    for name, lab in labels.items():
        res["labels"][name] = {"per_level_mean": [float(v) for v in lab.mean(0)], "judges": {}}
        for s, j in entry["judges"].items():
            judged = torch.tensor(j["judge_p"]).view(-1, levels)
            res["labels"][name]["judges"][s] = {"all": scores(lab, judged), "test": scores(lab[test], judged[test]) if test.any() else None}
    res["judge_per_level_mean"] = {s: [float(v) for v in torch.tensor(j["judge_p"]).view(-1, levels).mean(0)] for s, j in entry["judges"].items()}
    res["seconds"] = round(time.time() - began, 1)
    write_report(res, Path(args.out), markdown, plot)
    return 0


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def markdown(res: dict) -> str:
    a, b = res["classes"]
    lines = [f"# Margin labels read relative to their source? {a} -> {b}", "", f"`{res['command']}` on {res['machine']}, {res['threads']} threads, "
             f"{res['seconds']} s. Images, measure labels and judges from `{res['scatter']}` ({res['sources']['all']} held-out sources, "
             f"{res['sources']['test']} from the test split); mean margin label of the sources themselves {res['source_p_mean']:.3f}.", "",
             "| label | sources | judge | Spearman | mean abs(label - judge) | labelled >= 0.5 judged A | labelled < 0.5 judged B | mean label / judge |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, entry in res["labels"].items():
        for s, j in entry["judges"].items():
            for subset in ("all", "test"):
                f = j[subset]
                if f is not None:
                    lines.append(f"| {name} | {subset} | {s} | {f['spearman']:.3f} | {f['mean_abs']:.3f} | {_pct(f['high_judged_a'])} | "
                                 f"{_pct(f['low_judged_b'])} | {f['mean_label']:.3f} / {f['mean_judge']:.3f} |")
    lines += ["", "Mean label per level: " + "; ".join(f"{n} {[round(v, 2) for v in e['per_level_mean']]}" for n, e in res["labels"].items())]
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    x = [(k + 1) / res["levels"] for k in range(res["levels"])]
    for name, entry in res["labels"].items():
        ax.plot(x, entry["per_level_mean"], marker="o", ms=3, label=name)
    for s, values in res["judge_per_level_mean"].items():
        ax.plot(x, values, ls="--", color="black", lw=0.8, label=f"judge {s}")
    ax.set_xlabel("requested level")
    ax.set_ylabel(f"mean label / judge p({res['classes'][1]})")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    save_figure(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())
