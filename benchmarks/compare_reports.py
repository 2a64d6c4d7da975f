"""One arm of several downstream reports side by side, paired per seed: e.g. the same arm with two pairs.

Two reports of ``benchmarks/downstream.py`` (or ``progaug evaluate``) that share their real-only runs (same
log, same subset, same seeds; checked: the real arm's test predictions must be identical per seed) can be
compared seed by seed. For each report's arm this prints its paired difference to real only (the report's
own figure, with its verdict by :func:`progaug.evaluation.report.judge`'s rule), and for each later report
the paired difference to the first one's arm (``later - first``):

    python benchmarks/compare_reports.py --n 100 --arm "+ADD-Pro[preview] margin labels" \\
        --report shipped=benchmarks/results/downstream_vit_n100_subset0_shipped.json \\
        --report no-leak=benchmarks/results/downstream_vit_n100_subset0_nolk.json \\
        --out benchmarks/results/downstream_vit_n100_subset0_leak

Accuracy and macro-F1, 95 % t-intervals (:func:`progaug.evaluation.stats.paired`). Writes ``--out`` as
JSON, Markdown and a PNG of the per-seed differences. Reads only the reports: nothing is trained.

Reports whose real-only runs differ (the same protocol run again on another device, where single trainings
come out differently) cannot be paired across: ``--unpaired`` still pairs each arm with its own report's real
runs, then compares the later reports' per-seed gains with the first one's by Welch's interval
(:func:`progaug.evaluation.stats.welch`), and counts the seeds whose real runs agree (same test predictions):

    python benchmarks/compare_reports.py --unpaired --n 100 --arm "+ADD-Pro[preview] margin labels" \\
        --report gpu=benchmarks/results/downstream_vit_n100_30seeds.json \\
        --report cpu=benchmarks/results/downstream_vit_n100_cpu.json --out benchmarks/results/downstream_vit_n100_devices

``--arm`` given once per report names each report's own arm, so that arms run at different times into one log
(the same real-only runs) are paired per seed: e.g. an ADD arm against a standard arm run later,

    python benchmarks/compare_reports.py --n 100 --arm "+ADD-Pro[preview] margin labels" --arm +stain \\
        --report add=benchmarks/results/downstream_vit_n100_last.json \\
        --report stain=benchmarks/results/downstream_vit_n100_last_sanity.json

Where every compared run logged its accuracy on the choosing block (``val_accuracy``: the split that tuned the
settings; with ``--checkpoint last`` a second held-out region's score) that metric is compared too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command_line, read_report, repo_relative, write_report
from progaug.evaluation.report import format_diff, judge
from progaug.evaluation.stats import paired, welch

METRICS = ("accuracy", "f1_macro")
CHOOSING = "val_accuracy"  # the choosing block's accuracy, compared where every run has it


def labelled_report(text: str) -> tuple[str, Path]:
    """``LABEL=PATH`` as ``(label, path)`` (argparse type)."""
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"--report must be LABEL=PATH, got {text!r}")
    return label, Path(path)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--report", type=labelled_report, action="append", required=True, metavar="LABEL=PATH",
                   help="a downstream report JSON and its label; two or more, the first is the reference")
    p.add_argument("--arm", action="append", required=True,
                   help="the arm to compare: once (its name in every report) or once per report, in --report's order")
    p.add_argument("--n", required=True, help="the N (tiles per class) to compare, as the reports name it ('100', 'all')")
    p.add_argument("--baseline", default="real", help="the arm every report shares (default: real)")
    p.add_argument("--unpaired", action="store_true",
                   help="the reports' real runs differ (e.g. another device): compare their gains by Welch's interval, not per seed")
    p.add_argument("--out", default=None, help="write OUT.json, OUT.md and OUT.png (default: print only)")
    args = p.parse_args(argv)
    if len(args.report) < 2:
        p.error(f"--report: give two or more reports to compare, got {len(args.report)}")
    if len({label for label, _ in args.report}) != len(args.report):
        p.error(f"--report: labels must differ, got {[label for label, _ in args.report]}")
    if len(args.arm) not in (1, len(args.report)):
        p.error(f"--arm: give one arm for every report or one per report, got {len(args.arm)} for {len(args.report)} reports")
    return args


def runs_by_seed(res: dict, n: str, arm: str, path: Path) -> dict[int, dict]:
    """The evaluation runs of ``arm`` at ``n`` in one report, by seed.

    Raises:
        ValueError: The report has no such N or arm (the message names the file and what it has).
    """
    curve = res.get("curve", {})
    if n not in curve:
        raise ValueError(f"{path}: no N = {n!r} in this report (it has {sorted(curve)})")
    arms = curve[n]["arms"]
    if arm not in arms:
        raise ValueError(f"{path}: no arm {arm!r} at N = {n} (it has {sorted(arms)})")
    return {int(r["seed"]): r for r in arms[arm]["runs"]}


def same_baseline_seeds(baselines: dict[str, dict[int, dict]], seeds: list[int]) -> dict[str, list[int]]:
    """Per report, the seeds whose baseline run has the first report's test predictions (a recorded digest)."""
    first = next(iter(baselines.values()))
    return {label: [s for s in seeds if first[s].get("predictions_sha") is not None
                    and runs[s].get("predictions_sha") == first[s].get("predictions_sha")]
            for label, runs in baselines.items()}


def check_shared_baseline(baselines: dict[str, dict[int, dict]], seeds: list[int]) -> None:
    """Raise ValueError unless every report's baseline run has the same test predictions on every seed:
    otherwise the reports did not share their real-only runs and a per-seed pairing across them is void."""
    first_label, first = next(iter(baselines.items()))
    for label, same in same_baseline_seeds(baselines, seeds).items():
        seed = next((s for s in seeds if s not in same), None)
        if seed is not None:
            a, b = first[seed].get("predictions_sha"), baselines[label][seed].get("predictions_sha")
            raise ValueError(f"the baseline runs of {first_label!r} and {label!r} differ on seed {seed} (test predictions "
                             f"{a} vs {b}): the reports do not share their real-only runs, so they cannot be paired per seed")


def compare(reports: list[tuple[str, dict, Path]], n: str, arm: str | Sequence[str], baseline: str = "real",
            unpaired: bool = False) -> dict:
    """Comparison of ``arm`` across reports (see the module docstring).

    Args:
        reports: ``(label, report dict, path)``; the first is the reference.
        n: The N key of the reports (``"100"``).
        arm: The arm's name in every report (a name, or a list of one), or one name per report (in ``reports``'
            order).
        baseline: The arm all reports share (``unpaired``: the arm each report has, its runs may differ).
        unpaired: Compare the later reports' gains (arm minus baseline, paired within each report) with the
            first's by Welch's interval instead of per seed; the baselines need not be the same runs.

    Returns:
        ``{"seeds", "unpaired", "arm" (the first report's), "arm_of": {label: arm}, "metrics",
        "arms": {label: {metric: paired-difference vs baseline, "verdict"}},
        "versus_first": {label: {metric: label - first, paired per seed or Welch's}}, "means": {label: {metric: mean}},
        "same_baseline": {label: seeds whose baseline test predictions equal the first report's},
        "baseline_versus_first": {label: {metric: the baselines' paired difference, label - first}}}``; with
        ``unpaired``, ``means`` holds each report's baseline mean under ``"<baseline> (<label>)"`` and
        ``baseline_versus_first`` is filled (empty otherwise: the baselines are the same runs). ``metrics`` is
        accuracy and macro-F1, and the choosing block's accuracy (``val_accuracy``) where every compared run has it.

    Raises:
        ValueError: No seed common to all reports, a missing N/arm, a count of arms that is neither one nor one
            per report, or (paired) baselines that differ.
    """
    names = [arm] if isinstance(arm, str) else list(arm)
    if len(names) == 1:
        names *= len(reports)
    if len(names) != len(reports):
        raise ValueError(f"arm: give one name or one per report, got {len(names)} for {len(reports)} reports")
    arm_of = {label: name for (label, _, _), name in zip(reports, names)}
    arm_runs = {label: runs_by_seed(res, n, arm_of[label], path) for label, res, path in reports}
    base_runs = {label: runs_by_seed(res, n, baseline, path) for label, res, path in reports}
    seeds = sorted(set.intersection(*(set(r) for r in [*arm_runs.values(), *base_runs.values()])))
    if not seeds:
        raise ValueError(f"the reports share no seed with both their arm and {baseline!r} at N = {n}")
    if not unpaired:
        check_shared_baseline(base_runs, seeds)
    first = reports[0][0]
    compared = [runs[s] for runs in (*arm_runs.values(), *base_runs.values()) for s in seeds]
    metrics = METRICS + ((CHOOSING,) if all(CHOOSING in r for r in compared) else ())
    out = {"n": n, "arm": arm_of[first], "arm_of": arm_of, "metrics": list(metrics), "baseline": baseline, "seeds": seeds,
           "unpaired": unpaired, "arms": {}, "versus_first": {}, "means": {},
           "same_baseline": same_baseline_seeds(base_runs, seeds), "baseline_versus_first": {}}

    def mean(runs: dict[int, dict], metric: str) -> float:
        return sum(runs[s][metric] for s in seeds) / len(seeds)

    for label, _, _ in reports:
        runs = arm_runs[label]
        diffs = {m: paired([runs[s][m] for s in seeds], [base_runs[label][s][m] for s in seeds]) for m in metrics}
        entry = {"arms": {arm_of[label]: {"paired": {"real": diffs["accuracy"]}, "paired_f1": {"real": diffs["f1_macro"]}}}}
        out["arms"][label] = {**diffs, "verdict": judge(entry, arm_of[label])}
        out["means"][label] = {m: mean(runs, m) for m in metrics}
        if label == first:
            continue
        if unpaired:
            out["versus_first"][label] = {m: welch(diffs[m]["per_seed"], out["arms"][first][m]["per_seed"]) for m in metrics}
            # the baselines themselves, seed by seed: same subsets and initialisation seeds, other trainings
            out["baseline_versus_first"][label] = {m: paired([base_runs[label][s][m] for s in seeds],
                                                             [base_runs[first][s][m] for s in seeds]) for m in metrics}
        else:
            out["versus_first"][label] = {m: paired([runs[s][m] for s in seeds], [arm_runs[first][s][m] for s in seeds])
                                          for m in metrics}
    if unpaired:
        for label, _, _ in reports:
            out["means"][f"{baseline} ({label})"] = {m: mean(base_runs[label], m) for m in metrics}
    else:
        out["means"][baseline] = {m: mean(base_runs[first], m) for m in metrics}
    return out


def render_markdown(res: dict) -> str:
    cmp = res["comparison"]
    first = res["reports"][0]["label"]
    unpaired = cmp.get("unpaired", False)
    n_seeds = len(cmp["seeds"])
    if unpaired:
        same = ", ".join(f"`{label}` {len(s)} of {n_seeds}" for label, s in cmp["same_baseline"].items() if label != first)
        how = (f"each report's `{cmp['baseline']}` runs are its own (seeds whose test predictions equal `{first}`'s: {same}), so "
               "each arm is paired with its own report's real runs and the reports' gains are compared unpaired (Welch).")
    else:
        how = f"paired per seed; the `{cmp['baseline']}` runs are the same in every report (test predictions checked seed by seed)."
    arm_of = cmp["arm_of"]
    several = len(set(arm_of.values())) > 1  # each report's own arm: name it beside the label
    title = " vs ".join(f"{arm_of[r['label']]} ({r['label']})" for r in res["reports"]) if several else cmp["arm"]
    choosing = CHOOSING in cmp["metrics"]
    head, rule = (" choosing block: accuracy |", " --- |") if choosing else ("", "")

    def name(label: str) -> str:
        return f"{label}: {arm_of[label]}" if several else label

    def cell(d: dict) -> str:
        return f" {format_diff(d[CHOOSING])} |" if choosing else ""

    lines = [f"# {title} across reports at N = {cmp['n']}", "",
             f"Seeds {cmp['seeds']} ({n_seeds}), {how} Points of accuracy / macro-F1, mean [95 % t-interval]. "
             "*helps*: both gains >= 2 points with intervals above 0 (the downstream report's rule)."
             + (" The choosing block: each run's accuracy on the split that tuned the settings (`val_accuracy`)."
                if choosing else ""),
             "", f"| report | pair | {cmp['baseline']} accuracy (%) | arm accuracy (%) | vs real: accuracy | vs real: macro-F1 |"
             + (" vs real: choosing block: accuracy |" if choosing else "") + " verdict |",
             "| --- | --- | --- | --- | --- | --- |" + rule + " --- |"]
    for rep in res["reports"]:
        label = rep["label"]
        a = cmp["arms"][label]
        base = cmp["means"][f"{cmp['baseline']} ({label})" if unpaired else cmp["baseline"]]
        lines.append(f"| {name(label)} | {rep['pair']} | {100 * base['accuracy']:.1f} | "
                     f"{100 * cmp['means'][label]['accuracy']:.1f} | "
                     f"{format_diff(a['accuracy'])} | {format_diff(a['f1_macro'])} |{cell(a)} {a['verdict']} |")
    if cmp["versus_first"] and unpaired:
        lines += ["", f"Gains against `{first}`'s (later minus first, Welch's unequal-variance interval, unpaired):", "",
                  f"| report | accuracy gain | macro-F1 gain |{head} Welch df (accuracy) |", f"| --- | --- | --- |{rule} --- |"]
        for label, d in cmp["versus_first"].items():
            lines.append(f"| {name(label)} - {name(first)} | {format_diff(d['accuracy'])} | {format_diff(d['f1_macro'])} |"
                         f"{cell(d)} {d['accuracy']['df']:.1f} |")
        lines += ["", f"The `{cmp['baseline']}` runs themselves, later minus first, paired per seed (the same subsets and "
                  "initialisation seeds, other trainings):", "",
                  "| report | accuracy | macro-F1 | seeds higher / lower (accuracy) |", "| --- | --- | --- | --- |"]
        for label, d in cmp["baseline_versus_first"].items():
            per = d["accuracy"]["per_seed"]
            lines.append(f"| {label} - {first} | {format_diff(d['accuracy'])} | {format_diff(d['f1_macro'])} | "
                         f"{sum(v > 0 for v in per)} / {sum(v < 0 for v in per)} |")
    elif cmp["versus_first"]:
        lines += ["", f"Against `{first}` (later minus first, paired per seed):", "",
                  f"| report | accuracy | macro-F1 |{head} seeds better / worse (accuracy) |", f"| --- | --- | --- |{rule} --- |"]
        for label, d in cmp["versus_first"].items():
            per = d["accuracy"]["per_seed"]
            lines.append(f"| {name(label)} - {name(first)} | {format_diff(d['accuracy'])} | {format_diff(d['f1_macro'])} |"
                         f"{cell(d)} {sum(v > 0 for v in per)} / {sum(v < 0 for v in per)} |")
    lines += ["", "Reports: " + "; ".join(f"`{r['label']}` = {r['path']}" for r in res["reports"]), "",
              f"Command: `{res['command']}`", ""]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    """Per-seed accuracy differences (dots) with mean and 95 % interval, one column per comparison."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cmp = res["comparison"]
    first = res["reports"][0]["label"]
    columns = [(f"{label} - {cmp['baseline']}", d["accuracy"]) for label, d in cmp["arms"].items()]
    columns += [(f"{label} - {first}", d["accuracy"]) for label, d in cmp["versus_first"].items()]
    fig, ax = plt.subplots(figsize=(2.2 + 1.8 * len(columns), 4.5))
    for i, (_, d) in enumerate(columns):
        per_seed = d.get("per_seed", [])  # none for a Welch comparison
        ax.scatter([i] * len(per_seed), [100 * v for v in per_seed], color=f"C{i}", alpha=0.5, s=18)
        ax.errorbar(i + 0.15, 100 * d["mean"], yerr=100 * d["half_width"], fmt="s", color=f"C{i}", capsize=4)
    ax.axhline(0, color="grey", lw=1)
    ax.set_xticks(range(len(columns)), [name for name, _ in columns], rotation=15, fontsize=8)
    ax.set_ylabel("accuracy difference (points)" + ("; gains compared unpaired" if cmp.get("unpaired") else ", paired"))
    arms = list(dict.fromkeys(cmp["arm_of"].values()))  # each arm once, in report order
    ax.set_title(f"{' vs '.join(arms)}, N = {cmp['n']}: per seed (dots), mean and 95 % interval", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    reports = [(label, read_report(path, f"--report {label}"), path) for label, path in args.report]
    try:
        cmp = compare(reports, str(args.n), args.arm, args.baseline, unpaired=args.unpaired)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    res = {"comparison": cmp, "command": command_line("compare_reports.py", argv),
           "reports": [{"label": label, "path": repo_relative(str(path.resolve())), "pair": rep.get("pair"),
                        "pair_sha256": rep.get("pair_sha256")} for label, rep, path in reports],
           # the reference report's pair, so that benchmarks/stale_results.py can place this result
           "pair_sha256": reports[0][1].get("pair_sha256")}
    write_report(res, args.out, render_markdown, plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
