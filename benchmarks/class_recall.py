"""Which class an arm's gain or loss comes from, on each held-out block: per-class recall from the logged metrics.

A downstream run logs, per held-out block, its accuracy and macro-F1 (and on the test block the balanced
accuracy), not its per-class counts. With two classes those figures fix the counts: accuracy gives the number
right, ``r = r_0 + r_1``, and along that line balanced accuracy ``(r_0 / n_0 + r_1 / n_1) / 2`` (where the class
sizes differ) or macro-F1 picks the split. :func:`class_splits` searches the integer splits that reproduce every
logged figure (to 1e-6; the logs hold float32 accuracies). Macro-F1 cannot tell which class the errors fell on when
the two classes' (false negatives, false positives) are exchanged, so on the validation block (no balanced
accuracy logged) a run can fit two splits: such a run is left out of that block and its seed out of the paired
differences there (the report counts them). So the old logs answer a question they were not written for: when an
arm loses on one block and gains on the other (Result M2's CNN), does it do so through the same class? Runs logged
since session 53 carry their per-class recall and the AUROC of p(class 1) on both blocks (``recall``, ``auroc``,
``val_recall``, ``val_auroc``): those are read as they are, and the AUROC, which no decision threshold moves, is
compared with the baseline too.

    python benchmarks/class_recall.py --n 25 --arm +Mixup/CutMix --arm "+ADD-Pro[preview] margin labels" \\
        --arm +stain --arm "real, no flips" --out benchmarks/results/class_recall_cnn_n25 \\
        benchmarks/results/spread/downstream_cnn_n25_subset{3..10}_sanity.json

Per report (one subset) and arm: each class's recall per seed on the test block and the validation block, its mean
over seeds and the paired difference to real only (95 % t over the seeds). Across reports: the mean of the
per-report differences with a 95 % t-interval over reports, and how many reports lie beyond their own interval
below and above 0. Given one report (e.g. subsets drawn per seed), its interval over seeds is the one shown. Every
report must measure the same pair and hold the two classes with the same block sizes. Reads only the reports:
nothing is trained.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command_line, read_report, repo_relative, save_figure, write_report
from compare_reports import runs_by_seed
from progaug.evaluation.stats import interval, paired

BLOCKS = {"test": ("accuracy", "f1_macro", "balanced_accuracy"), "validation": ("val_accuracy", "val_f1_macro", None)}
"""Per held-out block: the logged accuracy, macro-F1 and (where logged) balanced accuracy keys of a run."""
LOGGED = {"test": ("recall", "auroc"), "validation": ("val_recall", "val_auroc")}
"""Per block: the per-class recall and AUROC keys that runs log since session 53 (read as they are where present)."""
SPLIT = {"test": "test", "validation": "val"}
"""The report's ``counts`` key of each block."""
TOLERANCE = 1e-6


def class_splits(sizes: tuple[int, int], accuracy: float, f1_macro: float,
                 balanced: float | None = None) -> list[tuple[int, int]]:
    """Every split of the numbers right over the two classes that reproduces a run's logged figures.

    Args:
        sizes: Tiles of class 0 and class 1 in the block (each >= 1).
        accuracy: Share right, in [0, 1].
        f1_macro: Mean of the two classes' F1 (a class never predicted has F1 0).
        balanced: Mean of the two recalls, or None where not logged.

    Returns:
        The ``(right_0, right_1)`` pairs that give every figure to 1e-6 (the logs hold float32 accuracies): one where
        the figures fix the split; two where macro-F1 alone cannot tell which class the errors fell on (it is the
        same when the two classes' (false negatives, false positives) are exchanged); none where the figures do not
        fit the sizes.

    Raises:
        ValueError: ``sizes`` does not hold two positive counts.
    """
    n0, n1 = sizes
    if n0 < 1 or n1 < 1:
        raise ValueError(f"`sizes` must hold two positive class sizes, got {sizes}")
    right = round(accuracy * (n0 + n1))
    if abs(right / (n0 + n1) - accuracy) > TOLERANCE:
        return []
    found = []
    for r0 in range(max(0, right - n1), min(n0, right) + 1):
        r1 = right - r0
        if balanced is not None and abs((r0 / n0 + r1 / n1) / 2 - balanced) > TOLERANCE:
            continue
        if abs(_macro_f1(n0, n1, r0, r1) - f1_macro) <= TOLERANCE:
            found.append((r0, r1))
    return found


def _macro_f1(n0: int, n1: int, r0: int, r1: int) -> float:
    """Macro-F1 of a two-class evaluation with ``r0`` of ``n0`` and ``r1`` of ``n1`` right."""
    def f1(tp: int, fn: int, fp: int) -> float:
        return 2 * tp / (2 * tp + fn + fp) if tp else 0.0
    return (f1(r0, n0 - r0, n1 - r1) + f1(r1, n1 - r1, n0 - r0)) / 2


def recalls(run: dict, block: str, sizes: tuple[int, int]) -> tuple[float, float] | None:
    """A run's recall of class 0 and class 1 on ``block`` (as logged, or inferred from its figures), or None where
    its figures fit two splits.

    Raises:
        KeyError: The run did not log that block.
        ValueError: No split fits the run's figures (the message gives them).
    """
    if LOGGED[block][0] in run:  # logged since session 53: nothing to infer
        logged = run[LOGGED[block][0]]
        if len(logged) != 2:
            raise ValueError(f"per-class recall is read for two classes, the run logged {logged}")
        return float(logged[0]), float(logged[1])
    acc, f1, bal = BLOCKS[block]
    splits = class_splits(sizes, run[acc], run[f1], run[bal] if bal else None)
    if not splits:
        raise ValueError(f"no split of the numbers right over classes of {sizes[0]} and {sizes[1]} tiles gives accuracy "
                         f"{run[acc]:.6f} and macro-F1 {run[f1]:.6f}" + (f", balanced accuracy {run[bal]:.6f}" if bal else ""))
    if len(splits) > 1:
        return None
    return splits[0][0] / sizes[0], splits[0][1] / sizes[1]


def block_sizes(report: dict, path: Path) -> dict[str, tuple[int, int]]:
    """Per block, the two classes' tile counts in the report's class order.

    Raises:
        ValueError: The report does not hold two classes with counts for both blocks (names the file).
    """
    classes, counts = report.get("classes", []), report.get("counts", {})
    if len(classes) != 2:
        raise ValueError(f"{path}: per-class recall is read for two classes, the report has {classes}")
    try:
        return {b: tuple(int(counts[s][c]) for c in classes) for b, s in SPLIT.items()}
    except (KeyError, TypeError):
        raise ValueError(f"{path}: no val/test tile counts per class in this report") from None


def read_one(report: dict, path: Path, n: str, arms: list[str], baseline: str = "real") -> dict:
    """One report's per-class recalls and their paired differences to ``baseline``.

    A run whose figures fit two splits (see :func:`recalls`) is left out of that block: of its arm's mean recall,
    and its seed of the paired difference there.

    Returns:
        ``{"path", "subset", "seeds", "unread": {arm: {block: [seed, ...]}}, "recall": {arm: {block: [mean_0,
        mean_1]}}, "diff": {arm: {block: [paired_0, paired_1]}}, "auroc": {arm: {block: mean}}, "auroc_diff": {arm:
        {block: paired}}}`` with recalls and AUROC in [0, 1]; AUROC only for blocks where every run logged it.

    Raises:
        ValueError: A figure fits no split, an arm's seeds differ from the baseline's, or a block has no seed
            readable on both sides (names the file).
    """
    sizes = block_sizes(report, path)
    runs = {a: runs_by_seed(report, n, a, path) for a in [baseline, *arms]}
    seeds = sorted(runs[baseline])
    out = {"path": repo_relative(str(Path(path).resolve())), "subset": report.get("config", {}).get("subset_seed"),
           "seeds": seeds, "unread": {}, "recall": {}, "diff": {}}
    read: dict[str, dict[str, dict[int, tuple[float, float]]]] = {}
    for a, by_seed in runs.items():
        if sorted(by_seed) != seeds:
            raise ValueError(f"{path}: arm {a!r} has seeds {sorted(by_seed)}, {baseline!r} has {seeds}")
        read[a] = {}
        for b in BLOCKS:
            try:
                per_seed = {s: recalls(by_seed[s], b, sizes[b]) for s in seeds}
            except KeyError as err:
                raise ValueError(f"{path}: arm {a!r} logged no {err} for the {b} block") from None
            except ValueError as err:
                raise ValueError(f"{path}: arm {a!r}, {b} block: {err}") from None
            read[a][b] = {s: r for s, r in per_seed.items() if r is not None}
        out["unread"][a] = {b: [s for s in seeds if s not in read[a][b]] for b in BLOCKS}
        out["recall"][a] = {b: [sum(r[k] for r in read[a][b].values()) / max(1, len(read[a][b])) for k in (0, 1)]
                            for b in BLOCKS}
    auroc_key = {b: LOGGED[b][1] for b in BLOCKS if all(LOGGED[b][1] in r for by in runs.values() for r in by.values())}
    out["auroc"] = {a: {b: sum(runs[a][s][k] for s in seeds) / len(seeds) for b, k in auroc_key.items()} for a in runs}
    out["auroc_diff"] = {a: {b: paired([runs[a][s][k] for s in seeds], [runs[baseline][s][k] for s in seeds])
                             for b, k in auroc_key.items()} for a in arms}
    for a in arms:
        out["diff"][a] = {}
        for b in BLOCKS:
            both = [s for s in seeds if s in read[a][b] and s in read[baseline][b]]
            if not both:
                raise ValueError(f"{path}: no seed of arm {a!r} and {baseline!r} readable on the {b} block")
            out["diff"][a][b] = [paired([read[a][b][s][k] for s in both], [read[baseline][b][s][k] for s in both])
                                 for k in (0, 1)]
    return out


def over_reports(diffs: list[dict]) -> dict:
    """The across-report figure of per-report paired differences: the interval of their means over reports, or,
    for one report, that report's own interval over its seeds (``{"mean", "low", "high", "half_width", "n"}``)."""
    if len(diffs) == 1:
        return {key: diffs[0][key] for key in ("mean", "low", "high", "half_width", "n")}
    return interval([d["mean"] for d in diffs])


def class_recall(reports: list[tuple[dict, Path]], n: str, arms: list[str], baseline: str = "real") -> dict:
    """Per-class recall of every arm over several reports (see the module docstring).

    Raises:
        ValueError: No report, reports of different pairs, classes or block sizes, or an unreadable figure.
    """
    if not reports:
        raise ValueError("class_recall needs at least one report")
    first, first_path = reports[0]
    classes, sizes = first.get("classes"), block_sizes(first, first_path)
    for rep, path in reports[1:]:
        if rep.get("pair_sha256") != first.get("pair_sha256"):
            raise ValueError(f"{path}: another pair than {first_path} (pair_sha256 differs)")
        if rep.get("classes") != classes or block_sizes(rep, path) != sizes:
            raise ValueError(f"{path}: classes or held-out block sizes differ from {first_path}")
    per = [read_one(rep, path, n, arms, baseline) for rep, path in reports]
    across = {}
    for a in arms:
        across[a] = {}
        for b in BLOCKS:
            across[a][b] = []
            for k in (0, 1):
                diffs = [p["diff"][a][b][k] for p in per]
                across[a][b].append({"interval": over_reports(diffs),
                                     "lower_beyond": sum(d["high"] < 0 for d in diffs),
                                     "higher_beyond": sum(d["low"] > 0 for d in diffs)})
    auroc_blocks = [b for b in BLOCKS if all(b in p["auroc_diff"].get(a, {}) for p in per for a in arms)]
    auroc_across = {a: {b: over_reports([p["auroc_diff"][a][b] for p in per]) for b in auroc_blocks} for a in arms}
    mean_auroc = {a: {b: sum(p["auroc"][a][b] for p in per) / len(per) for b in auroc_blocks} for a in [baseline, *arms]}
    mean_recall = {a: {b: [sum(p["recall"][a][b][k] for p in per) / len(per) for k in (0, 1)] for b in BLOCKS}
                   for a in [baseline, *arms]}
    return {"n": n, "baseline": baseline, "arms": arms, "classes": classes, "over": "seeds" if len(per) == 1 else "reports",
            "sizes": {b: list(s) for b, s in sizes.items()}, "reports": per, "recall": mean_recall, "across": across,
            "auroc": mean_auroc, "auroc_across": auroc_across}


def render_markdown(res: dict) -> str:
    """The across-report table per block and the per-report differences."""
    cr, c = res["class_recall"], res["class_recall"]["classes"]
    lines = [f"# Per-class recall on the held-out blocks, N = {cr['n']}", "",
             f"{len(cr['reports'])} reports; recall read from each run's logged accuracy, macro-F1 and (test) balanced "
             f"accuracy. Block sizes ({c[0]}, {c[1]}): " + ", ".join(f"{b} {tuple(s)}" for b, s in cr["sizes"].items())
             + f". Differences to {cr['baseline']} in points, 95 % t over {cr['over']}"
             + ("" if cr["over"] == "seeds" else "; 'beyond': reports whose own interval over seeds excludes 0") + ".", ""]
    for b in BLOCKS:
        lines += [f"## {b} block", "",
                  f"| arm | {c[0]} recall % | vs {cr['baseline']} | lower / higher beyond | {c[1]} recall % "
                  f"| vs {cr['baseline']} | lower / higher beyond |", "| --- | --- | --- | --- | --- | --- | --- |"]
        base = cr["recall"][cr["baseline"]][b]
        lines.append(f"| {cr['baseline']} | {100 * base[0]:.1f} | - | - | {100 * base[1]:.1f} | - | - |")
        for a in cr["arms"]:
            cells = []
            for k in (0, 1):
                d = cr["across"][a][b][k]
                iv = d["interval"]
                cells += [f"{100 * cr['recall'][a][b][k]:.1f}",
                          f"{100 * iv['mean']:+.1f} [{100 * iv['low']:+.1f}, {100 * iv['high']:+.1f}]",
                          f"{d['lower_beyond']} / {d['higher_beyond']}"]
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
        lines.append("")
    auroc_blocks = [b for b in BLOCKS if b in cr["auroc"][cr["baseline"]]]
    if auroc_blocks:
        lines += [f"## AUROC of p({c[1]}): a score no decision threshold moves", "",
                  "| arm | " + " | ".join(f"{b} AUROC | vs {cr['baseline']}" for b in auroc_blocks) + " |",
                  "| --- |" + " --- | --- |" * len(auroc_blocks),
                  f"| {cr['baseline']} | " + " | ".join(f"{cr['auroc'][cr['baseline']][b]:.3f} | -" for b in auroc_blocks) + " |"]
        for a in cr["arms"]:
            diffs = [cr["auroc_across"][a][b] for b in auroc_blocks]
            cells = [f"{cr['auroc'][a][b]:.3f} | {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
                     for b, d in zip(auroc_blocks, diffs)]
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Per report: difference to " + cr["baseline"] + f" (points; {c[0]} / {c[1]})", "",
              "| subset | " + " | ".join(f"{a}, {b}" for a in cr["arms"] for b in BLOCKS) + " |",
              "| --- |" + " --- |" * (len(cr["arms"]) * len(BLOCKS))]
    for p in cr["reports"]:
        cells = [" / ".join(f"{100 * d['mean']:+.1f}" for d in p["diff"][a][b]) for a in cr["arms"] for b in BLOCKS]
        lines.append(f"| {p['subset']} | " + " | ".join(cells) + " |")
    unread = [f"subset {p['subset']} {a} {b} seed {s}" for p in cr["reports"] for a, per in p["unread"].items()
              for b, seeds in per.items() for s in seeds]
    lines += ["", f"Runs whose figures fit two splits, left out of that block ({len(unread)}): "
              + ("; ".join(unread) if unread else "none") + ".",
              "", "Reports: " + "; ".join(p["path"] for p in cr["reports"]), "", f"Command: `{res['command']}`", ""]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    """Per block, each arm's recall difference to the baseline for the two classes: per-report points, the
    across-report mean and interval as a bar with error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cr = res["class_recall"]
    fig, axes = plt.subplots(1, len(BLOCKS), figsize=(6.5 * len(BLOCKS), 4.2), squeeze=False)
    for ax, b in zip(axes[0], BLOCKS):
        for i, a in enumerate(cr["arms"]):
            for k in (0, 1):
                x = i + (k - 0.5) * 0.36
                iv = cr["across"][a][b][k]["interval"]
                ax.bar(x, 100 * iv["mean"], width=0.34, color=f"C{k}", alpha=0.35,
                       label=f"{cr['classes'][k]} recall" if i == 0 else None)
                ax.errorbar(x, 100 * iv["mean"], yerr=[[100 * (iv["mean"] - iv["low"])], [100 * (iv["high"] - iv["mean"])]],
                            color=f"C{k}", capsize=3)
                ax.plot([x] * len(cr["reports"]), [100 * p["diff"][a][b][k]["mean"] for p in cr["reports"]], ".",
                        color=f"C{k}", ms=4)
        ax.axhline(0, color="grey", lw=1)
        ax.set_xticks(range(len(cr["arms"])), cr["arms"], fontsize=7)
        ax.set_ylabel(f"recall over {cr['baseline']} (points)")
        ax.set_title(f"{b} block, N = {cr['n']}: bars 95 % over {cr['over']}, dots per report", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    save_figure(fig, path, dpi=100)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", nargs="+", type=Path, help="downstream report JSONs (one per subset)")
    p.add_argument("--n", required=True, help="the N whose runs are read, e.g. 25")
    p.add_argument("--arm", action="append", required=True, help="an arm to compare with the baseline (repeatable)")
    p.add_argument("--baseline", default="real", help="the arm the others are compared with (default: real)")
    p.add_argument("--out", help="write OUT.json, OUT.md and OUT.png (default: print the Markdown only)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    reports = [(read_report(p), p) for p in args.reports]
    try:
        cr = class_recall(reports, str(args.n), args.arm, args.baseline)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    first = reports[0][0]
    res = {"class_recall": cr, "command": command_line("class_recall.py", argv), "pair": first.get("pair"),
           "pair_sha256": first.get("pair_sha256")}
    write_report(res, args.out, render_markdown, plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
