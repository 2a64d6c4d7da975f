"""Every arm of downstream reports against real only on *both* held-out blocks: the one that chose (validation)
and the one that was scored (test).

The hgsc splits are spatial blocks of one slide, so the validation and test splits are two held-out regions. A
protocol run chooses its settings (budget, p, alpha, sigma; with ``--checkpoint best`` also each training's
checkpoint) on one and reports the other; each run also logs the returned checkpoint's accuracy on the choosing
split (``val_accuracy``). This reads committed reports of
``benchmarks/downstream.py`` (or ``progaug evaluate``) and prints, per report, N and arm, the paired difference
to real only on both blocks (95 % t-intervals, :func:`progaug.evaluation.stats.paired_runs`, which checks the seeds):

    python benchmarks/held_out_regions.py --out benchmarks/results/held_out_regions \\
        benchmarks/results/downstream_vit_n25_labels.json benchmarks/results/downstream_vit_n100_cpu_p03_60.json

With the best checkpoint (the protocol's default before session 35) the choosing block's figure is a maximum over the run's
checkpoints on the block that picked them: optimistic for every arm, and not a fair second test. Reports run with
``--checkpoint last`` (the default since) picked no checkpoint, so their choosing-block figure is a second region's score (the settings
were tuned there, on other seeds); the table says which. Another fair check exchanges the roles (``--swap-held-out``; such a report is read
the same way here, its columns then name test as the choosing block and validation as the scored one). Reads only
the reports: nothing is trained.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command_line, read_report, repo_relative, save_figure, write_report
from progaug.evaluation.protocol import held_out_roles
from progaug.evaluation.report import format_diff
from progaug.evaluation.stats import paired_runs


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", nargs="+", type=Path, help="downstream report JSONs")
    p.add_argument("--baseline", default="real", help="the arm every other arm is paired with (default: real)")
    p.add_argument("--out", default=None, help="write OUT.json, OUT.md and OUT.png (default: print only)")
    return p.parse_args(argv)


def rows_of(report: dict, label: str, baseline: str = "real") -> list[dict]:
    """One row per N and arm of ``report`` (the baseline excepted): its paired differences to ``baseline`` on the
    choosing block (``val_accuracy`` of each run) and on the scored block (``accuracy``).

    Raises:
        ValueError: An arm's runs and the baseline's are not the same seeds.
    """
    swapped = bool(report["config"].get("swap_held_out"))
    blocks = held_out_roles(swapped)  # (choosing, scored) split names
    out = []
    for n, entry in report["curve"].items():
        arms = entry["arms"]
        if baseline not in arms:
            continue
        base = arms[baseline]["runs"]
        for name, arm in arms.items():
            if name == baseline:
                continue
            runs = arm["runs"]
            if any("val_accuracy" not in r for r in (*runs, *base)):
                raise ValueError(f"{label}: N = {n} {name!r}: runs without `val_accuracy` (a report of an older protocol)")
            try:
                pairs = {key: paired_runs(runs, base, metric) for key, metric in
                         (("choosing", "val_accuracy"), ("scored", "accuracy"), ("scored_f1", "f1_macro"))}
            except ValueError as err:
                raise ValueError(f"{label}: N = {n} {name!r} against {baseline!r}: {err}") from err
            out.append({"report": label, "n": n, "arm": name, "seeds": len(runs), "swapped": swapped, "blocks": blocks,
                        "checkpoint": report["config"].get("checkpoint", "best"),
                        "tuned": (entry.get("tuning", {}).get(name) or {}).get("chosen"), **pairs})
    return out


def markdown(res: dict) -> str:
    lines = ["# Both held-out blocks: each arm against real only", "",
             f"`{res['command']}`. Paired over seeds, 95 % t-intervals, accuracy points. The choosing block tuned the "
             "settings; with the best checkpoint (the default before session 35) it also picked each run's checkpoint, and its figure is "
             "then a maximum, optimistic for every arm; with the last checkpoint nothing was picked per run, and its "
             "figure is a second region's score. Nothing trained.", "",
             "| report | N | arm | tuned | seeds | choosing block (checkpoint) | scored block: accuracy | scored block: macro-F1 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in res["rows"]:
        blocks = r["blocks"]
        lines.append(f"| {r['report']} | {r['n']} | {r['arm']} | {'-' if r['tuned'] is None else r['tuned']} | {r['seeds']} | "
                     f"{blocks[0]}: {format_diff(r['choosing'])} ({r.get('checkpoint', 'best')}) | {blocks[1]}: {format_diff(r['scored'])} | "
                     f"{format_diff(r['scored_f1'])} |")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["rows"]
    fig, ax = plt.subplots(figsize=(12, 0.45 * len(rows) + 1.5))
    colours = {"test": "tab:blue", "val": "tab:orange"}
    for i, r in enumerate(rows):
        (choosing, scored) = r["blocks"]
        for d, dy, block, face in ((r["choosing"], -0.15, choosing, "none"), (r["scored"], 0.15, scored, colours[scored])):
            ax.errorbar(100 * d["mean"], i + dy, xerr=[[100 * (d["mean"] - d["low"])], [100 * (d["high"] - d["mean"])]], fmt="o",
                        color=colours[block], markerfacecolor=face, capsize=3)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(rows)), [f"{r['report']} N={r['n']} {r['arm']}{', last' if r.get('checkpoint') == 'last' else ''}"
                                     for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("paired difference to real only, accuracy points\n(blue: test block, orange: validation block; hollow: the block "
                  "that chose,\nat its best checkpoint, or at the last where the row ends in 'last')")
    save_figure(fig, path)


def main(argv=None) -> dict:
    args = parse_args(argv)
    rows, reports = [], []
    for path in args.reports:
        report = read_report(path)
        rows += rows_of(report, path.stem, args.baseline)
        reports.append({"path": repo_relative(str(path.resolve())), "pair_sha256": report.get("pair_sha256")})
    res = {"command": command_line("held_out_regions.py", argv), "reports": reports, "rows": rows,
           "pair_sha256": reports[0]["pair_sha256"]}  # the first report's pair (each report's is in "reports")
    write_report(res, args.out, markdown, plot)
    return res


if __name__ == "__main__":
    main()
