"""Can the default's labels cost <= 25 U-Net evaluations per output? (issue: labels at the paper measure's cost)

The label issue asks for the default to cost at most 25 evaluations per output at S = 50 and 10 levels while
its labels keep following the images. This script generates nothing: it reads a stored
``label_fidelity.py`` result (the 100 standard sources, the default variant ``preview+margin``) and answers two
questions from it.

1. **The floor.** What an output costs at the variant's own depths (each level's mean depth, as stored), part by
   part: the inversion and the depth measure per source (``inversion_evaluations``), the decodes under each decode
   schedule (``decode_evaluations``; ``2:10`` is the fast setting whose images stay within FID of every state
   decoded), and the labels (the calibrated margin: 2 evaluations per margin timestep per output, or none when the
   measure's own labels are kept). If even free labels leave the total above the goal, no cheaper *label* can meet
   it at these depths: only shallower depths or coarser decodes, which change the images.
2. **Half the margins.** The one saving on the labels themselves that keeps every image: read the margin at every
   other level (0.2, 0.4, ..., 1.0), give level 0.1 the label of level 0.2 and each other level the mean of its
   neighbours (4 instead of 8 evaluations per output). Spearman with the judge against the full margin labels
   (paired 95 % bootstrap interval over sources), the share of images labelled >= 0.5 that the judge calls A, and
   how far the labels move.

    python benchmarks/label_cost_floor.py      # reads benchmarks/results/label_fidelity_paper_margin.json

Writes ``benchmarks/results/label_cost_floor.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, command_line, repo_relative, save_figure, write_report  # noqa: E402
from denoising_margin import paired_spearman_ci  # noqa: E402
from label_fidelity import BOOTSTRAP_DRAWS, judged_a_at_or_above, spearman  # noqa: E402
from progaug.labels import decode_evaluations, inversion_evaluations  # noqa: E402
from progaug.margin import DEFAULT_MARGIN_TIMESTEPS  # noqa: E402

GOAL = 25
"""U-Net evaluations per output the label issue allows the default at S = 50, 10 levels."""
SCHEDULES = ("1:0", "2:10", "3:10", "2:0")
"""Decode schedules (stride : exact last states) costed at the stored depths; ``1:0`` decodes every state."""
MARGIN_EVALUATIONS = 2 * len(DEFAULT_MARGIN_TIMESTEPS)
"""Evaluations per output of a margin label: both models at each margin timestep."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--result", default=str(ROOT / "benchmarks" / "results" / "label_fidelity_paper_margin.json"),
                   help="a label_fidelity.py JSON (default: the session-24 run with preview+margin)")
    p.add_argument("--variant", default="preview+margin", help="the variant read from it (default: preview+margin)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "label_cost_floor"), help="path stem of the outputs")
    return p.parse_args(argv)


def cost_floor(depth_means: list[float], measure: str, steps: int) -> list[dict]:
    """Evaluations per output at the rounded mean depth of each level, for each of :data:`SCHEDULES`.

    Args:
        depth_means: mean decode depth of each level (``L`` values in ``[0, steps]``).
        measure: the label measure that chose the depths (``"preview"``, ``"paper"``, ...).
        steps: DDIM steps ``S``.

    Returns:
        One dict per schedule: ``schedule``, ``before_decodes`` (inversion and measure), ``decodes``,
        ``total_measure_labels``, ``total_margin_labels`` (all per output) and ``meets_goal`` for each total.
    """
    levels = len(depth_means)
    depths = [round(d) for d in depth_means]
    before = inversion_evaluations(measure, steps) / levels
    rows = []
    for schedule in SCHEDULES:
        stride, fine = (int(x) for x in schedule.split(":"))
        decodes = decode_evaluations(depths, stride, fine) / levels
        free, margin = before + decodes, before + decodes + MARGIN_EVALUATIONS
        rows.append({"schedule": schedule, "before_decodes": before, "decodes": decodes, "total_measure_labels": free,
                     "total_margin_labels": margin, "meets_goal": {"measure_labels": free <= GOAL, "margin_labels": margin <= GOAL}})
    return rows


def half_margin_labels(labels: torch.Tensor) -> torch.Tensor:
    """Labels ``(B, L)`` (``L`` even, levels ascending) as if the margin were read only at the odd positions
    (levels 0.2, 0.4, ..., 1.0): the first level takes the second's label, each other even position the mean of
    its two neighbours. The odd positions are unchanged."""
    if labels.dim() != 2 or labels.shape[1] % 2 or labels.shape[1] < 2:
        raise ValueError(f"`labels` must be (B, L) with L even, got shape {tuple(labels.shape)}")
    half = labels.clone()
    half[:, 0] = labels[:, 1]
    for j in range(2, labels.shape[1], 2):
        half[:, j] = (labels[:, j - 1] + labels[:, j + 1]) / 2
    return half


def compare_half(labels: torch.Tensor, judge: torch.Tensor, seed: int = 0) -> dict:
    """Half-margin labels against the full ones, on ``(B, L)`` labels and judge p: Spearman of each with the
    judge, their paired difference with a 95 % bootstrap interval over sources, judged-A shares and the label
    change (mean, 95th percentile, max of ``|half - full|``)."""
    half = half_margin_labels(labels)
    change = (half - labels).abs().flatten().double()
    full_rho, half_rho = spearman(labels.flatten(), judge.flatten()), spearman(half.flatten(), judge.flatten())
    return {"spearman_full": full_rho, "spearman_half": half_rho,
            "spearman_half_minus_full": paired_spearman_ci(labels, half, judge, seed=seed),
            "judged_a_full": judged_a_at_or_above(labels, judge, 0.5)["judged_a"],
            "judged_a_half": judged_a_at_or_above(half, judge, 0.5)["judged_a"],
            "label_change": {"mean": float(change.mean()), "p95": float(change.quantile(0.95)), "max": float(change.max())},
            "margin_evaluations_per_output": {"full": MARGIN_EVALUATIONS, "half": MARGIN_EVALUATIONS / 2},
            "bootstrap": {"draws": BOOTSTRAP_DRAWS, "seed": seed, "unit": "source tile"}}


def markdown(res: dict) -> str:
    half = res["half_margin"]
    lines = [f"# The default's label cost against the goal of {GOAL} evaluations per output", "",
             f"`{res['command']}`: reads `{res['result']}` (variant `{res['variant']}`, {res['n']} sources, S = "
             f"{res['steps']}, {res['levels']} levels); generates nothing.", "",
             "Mean depth per level: " + ", ".join(f"{d:.1f}" for d in res["depth_means"]) + ".", "",
             "| decode schedule | inversion + measure | decodes | total, measure's labels | total, margin labels |",
             "| --- | --- | --- | --- | --- |"]
    for r in res["floor"]:
        lines.append(f"| {r['schedule']} | {r['before_decodes']:.1f} | {r['decodes']:.1f} | {r['total_measure_labels']:.1f} | "
                     f"{r['total_margin_labels']:.1f} |")
    d = half["spearman_half_minus_full"]
    lines += ["", f"Goal: <= {GOAL}. Met by: " + (", ".join(f"{r['schedule']} ({k.replace('_', ' ')})" for r in res["floor"]
                                                         for k, v in r["meets_goal"].items() if v) or "none") + ".", "",
              "## Half the margins (read at levels 0.2, 0.4, ..., 1.0, the others interpolated)", "",
              f"Spearman with the judge {half['spearman_half']:.3f} against {half['spearman_full']:.3f} (paired "
              f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]); labelled >= 0.5 judged A "
              f"{100 * half['judged_a_half']:.1f} % against {100 * half['judged_a_full']:.1f} %; labels move by "
              f"{half['label_change']['mean']:.3f} on average, {half['label_change']['p95']:.3f} at the 95th percentile, "
              f"{half['label_change']['max']:.3f} at most; {half['margin_evaluations_per_output']['half']:g} instead of "
              f"{half['margin_evaluations_per_output']['full']} evaluations per output.", ""]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["floor"]
    names = [r["schedule"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    before = [r["before_decodes"] for r in rows]
    decodes = [r["decodes"] for r in rows]
    ax.bar(names, before, label="inversion + measure")
    ax.bar(names, decodes, bottom=before, label="decodes")
    ax.bar(names, [MARGIN_EVALUATIONS] * len(rows), bottom=[a + b for a, b in zip(before, decodes)], label="margin labels")
    ax.axhline(GOAL, color="k", linestyle="--", label=f"goal {GOAL}")
    ax.set_xlabel("decode schedule (stride : exact last states)")
    ax.set_ylabel("U-Net evaluations per output")
    ax.set_title(f"{res['variant']} at its own depths")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def main(argv=None) -> int:
    args = parse_args(argv)
    stored = json.loads(Path(args.result).read_text())
    if args.variant not in stored["measures"]:
        raise SystemExit(f"{args.result}: no variant {args.variant!r}; it has {sorted(stored['measures'])}")
    entry = stored["measures"][args.variant]
    n, levels, steps = stored["n"], len(entry["per_level"]), stored["steps"]
    depth_means = [lv["depth_mean"] for lv in entry["per_level"]]
    labels = torch.tensor(entry["scatter"]["label"], dtype=torch.float64).view(n, levels)
    judge = torch.tensor(entry["scatter"]["judge_p"], dtype=torch.float64).view(n, levels)
    measure = args.variant.partition("+")[0].partition("/")[0]
    res = {"command": command_line("label_cost_floor.py", argv), "result": repo_relative(args.result),
           "variant": args.variant, "pair_sha256": stored.get("pair_sha256"), "n": n, "levels": levels, "steps": steps,
           "goal": GOAL, "depth_means": depth_means, "floor": cost_floor(depth_means, measure, steps),
           "half_margin": compare_half(labels, judge)}
    write_report(res, Path(args.out), markdown, plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
