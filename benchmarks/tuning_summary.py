"""What the validation split picked for one arm's knob, over many downstream reports: which default to ship.

Every report of ``benchmarks/downstream.py`` (or ``progaug evaluate``) keeps, per N, each arm's tuning: the
knob (``replace_prob`` for a generated arm, ``mixup_alpha``, ``stain_sigma``), the mean validation accuracy of
each value over the tuning seeds, and the value chosen. This reads those blocks from many reports and says,
for one arm, how each value fared across them: how often it was chosen, its mean validation accuracy, and its
paired difference (per tuning) to a reference value, e.g. the shipped default ``replace_prob=0.3``:

    python benchmarks/tuning_summary.py --arm "+ADD-Pro[preview] margin labels" --checkpoint last --classifier vit \\
        --reference 0.3 --out benchmarks/results/tuning_replace_prob_vit 'benchmarks/results/downstream_vit*.json'

Reports that were written again from one run log (the same tuning runs) repeat the same tuning; a tuning is
counted once per classifier, checkpoint rule, N, subset, epochs, pair and accuracies (:func:`distinct`). Tunings
of one value only (a fixed knob) chose nothing and are left out. Each tuning's values are means over a few
tuning seeds (two in the committed reports): a single tuning is coarse, and the summary is over tunings, not
seeds. Reads only the reports: nothing is trained. Writes ``--out`` as JSON, Markdown and a PNG (each value's
validation accuracy per tuning, and their mean).
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from common import command_line, repo_relative, save_figure, write_report
from progaug.evaluation.stats import paired


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", nargs="+",
                   help="downstream report JSONs, or quoted glob patterns of them (other JSONs matched are skipped)")
    p.add_argument("--arm", required=True, help="the arm whose tuning to summarise, as the reports name it")
    p.add_argument("--checkpoint", choices=("last", "best", "any"), default="last",
                   help="which protocol's reports: the last checkpoint, the validation-chosen one (older reports), or both")
    p.add_argument("--classifier", default=None, help="only reports of this classifier (vit, cnn, probe; default: all)")
    p.add_argument("--reference", type=float, default=None,
                   help="compare every value with this one, paired per tuning (default: the most often chosen)")
    p.add_argument("--out", default=None, help="write OUT.json, OUT.md and OUT.png (default: print only)")
    return p.parse_args(argv)


def report_paths(patterns: list[str]) -> list[Path]:
    """The files named by ``patterns`` (paths, or glob patterns such as ``benchmarks/results/downstream_vit*.json``),
    sorted, each once.

    Raises:
        SystemExit: A pattern matches no file (the message names it).
    """
    paths: set[Path] = set()
    for pattern in patterns:
        found = glob.glob(pattern) if any(c in pattern for c in "*?[") else [pattern] if Path(pattern).exists() else []
        if not found:
            raise SystemExit(f"tuning_summary: no report matches {pattern!r}")
        paths.update(Path(f) for f in found)
    return sorted(paths)


def read_report(path: Path) -> dict | None:
    """A downstream report's JSON, or None when ``path`` holds something else (another benchmark's result).

    Raises:
        SystemExit: ``path`` cannot be read, is not JSON or holds no JSON object (:func:`common.read_report`; the
            message names it).
    """
    res = common.read_report(path)
    if not isinstance(res.get("curve"), dict) or not isinstance(res.get("config"), dict):
        return None
    return res


def tunings(path: Path, res: dict, arm: str) -> list[dict]:
    """The report's tunings of ``arm`` that chose between two or more values, one per N.

    Each is ``{"report", "classifier", "checkpoint", "n", "subset_seed", "epochs", "pair", "knob", "values",
    "chosen"}``; ``values`` maps each value (float) to its mean validation accuracy in [0, 1]; ``checkpoint`` is
    ``"best"`` for reports older than the key (each training's checkpoint chosen on validation).
    """
    config, pair = res["config"], res.get("pair_sha256") or {}
    rows = []
    for n, block in res["curve"].items():
        tuning = (block.get("tuning") or {}).get(arm) if isinstance(block, dict) else None
        if not tuning or len(tuning.get("values") or {}) < 2:
            continue
        rows.append({
            "report": path.name, "classifier": config.get("classifier"), "checkpoint": config.get("checkpoint") or "best",
            "n": str(n), "subset_seed": config.get("subset_seed"), "epochs": (block.get("budget") or {}).get("epochs"),
            "pair": str(pair.get("source", ""))[:8], "knob": tuning["knob"],
            "values": {float(v): float(acc) for v, acc in tuning["values"].items()}, "chosen": float(tuning["chosen"]),
        })
    return rows


def distinct(rows: list[dict]) -> list[dict]:
    """``rows`` with repeats of one tuning kept once, with ``"repeats"``: the other reports that hold it.

    A repeat is a report written again from the same run log: the same classifier, checkpoint rule, N, subset,
    epochs, pair and knob, and the same accuracy at every value both tried (a report that tried more values, e.g.
    a wider grid added to a log, is kept in place of the narrower one).
    """
    kept: list[dict] = []
    for row in rows:
        key = tuple(row[k] for k in ("classifier", "checkpoint", "n", "subset_seed", "epochs", "pair", "knob"))
        for i, other in enumerate(kept):
            shared = row["values"].keys() & other["values"].keys()
            if other["key"] == key and all(row["values"][v] == other["values"][v] for v in shared):
                wider, narrower = (row, other) if len(row["values"]) > len(other["values"]) else (other, row)
                kept[i] = {**wider, "key": key, "repeats": [*other["repeats"], narrower["report"]]}
                break
        else:
            kept.append({**row, "key": key, "repeats": []})
    return [{k: v for k, v in row.items() if k != "key"} for row in kept]


def summarise(rows: list[dict], reference: float | None) -> dict:
    """Per value of the grid every tuning shares: times chosen, mean validation accuracy, and the paired
    difference (per tuning) to ``reference`` (default: the value chosen most often; ties to the smaller).

    Raises:
        SystemExit: No tuning, tunings of different knobs, no value shared by all, or ``reference`` not shared.
    """
    if not rows:
        raise SystemExit("tuning_summary: no report holds a tuning of this arm that chose between values")
    knobs = sorted({row["knob"] for row in rows})
    if len(knobs) > 1:
        raise SystemExit(f"tuning_summary: the tunings turn different knobs {knobs}; give one arm's reports")
    grid = sorted(set.intersection(*(set(row["values"]) for row in rows)))
    if len(grid) < 2:
        raise SystemExit(f"tuning_summary: the tunings share fewer than two values ({grid}); nothing to compare")
    chosen = {v: sum(row["chosen"] == v for row in rows) for v in grid}
    if reference is None:
        reference = max(grid, key=lambda v: (chosen[v], -v))
    if reference not in grid:
        raise SystemExit(f"tuning_summary: --reference {reference} is not a value every tuning tried (shared: {grid})")
    ref = [row["values"][reference] for row in rows]
    values = {}
    for v in grid:
        accs = [row["values"][v] for row in rows]
        values[str(v)] = {"chosen": chosen[v], "mean_val_accuracy": sum(accs) / len(accs),
                          "versus_reference": None if v == reference else paired(accs, ref)}
    return {"knob": knobs[0], "grid": grid, "reference": reference, "tunings": len(rows), "values": values}


def markdown(res: dict) -> str:
    s = res["summary"]
    lines = [f"# Tuning of `{res['arm']}`: `{s['knob']}` over {s['tunings']} tunings", "",
             f"`{res['command']}`", "",
             f"Reports with checkpoint rule `{res['checkpoint']}`; each tuning's values are mean validation accuracies "
             "over its tuning seeds (coarse); repeats of one tuning counted once.", "",
             f"| {s['knob']} | chosen | mean validation accuracy % | minus {s['reference']} (paired per tuning) |",
             "| --- | --- | --- | --- |"]
    for v, row in s["values"].items():
        d = row["versus_reference"]
        diff = "reference" if d is None else f"{d['mean'] * 100:+.1f} [{d['low'] * 100:+.1f}, {d['high'] * 100:+.1f}]"
        lines.append(f"| {v} | {row['chosen']} of {s['tunings']} | {row['mean_val_accuracy'] * 100:.1f} | {diff} |")
    lines += ["", "| report | classifier | checkpoint | N | subset | epochs | pair | validation accuracy % per value | chosen |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for t in res["tunings"]:
        accs = ", ".join(f"{v}: {a * 100:.1f}" for v, a in sorted(t["values"].items()))
        name = t["report"] + (f" (+{len(t['repeats'])} repeats)" if t["repeats"] else "")
        subset = "drawn per seed" if t["subset_seed"] is None else t["subset_seed"]
        lines.append(f"| {name} | {t['classifier']} | {t['checkpoint']} | {t['n']} | {subset} | {t['epochs']} | "
                     f"{t['pair']} | {accs} | {t['chosen']} |")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = res["summary"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for t in res["tunings"]:
        ax.plot(s["grid"], [t["values"][v] * 100 for v in s["grid"]], color="0.7", marker=".", lw=1)
    ax.plot(s["grid"], [s["values"][str(v)]["mean_val_accuracy"] * 100 for v in s["grid"]], color="C3", marker="o", lw=2,
            label=f"mean of {s['tunings']} tunings")
    ax.set_xlabel(s["knob"])
    ax.set_ylabel("validation accuracy %")
    ax.set_title(f"{res['arm']} ({res['classifier'] or 'every classifier'}, checkpoint rule {res['checkpoint']})", fontsize=9)
    ax.legend()
    save_figure(fig, path)


def collect(paths: list[Path], arm: str, checkpoint: str = "any", classifier: str | None = None) -> list[dict]:
    """:func:`distinct` tunings of ``arm`` in the reports at ``paths`` under the ``checkpoint`` rule (``"last"``,
    ``"best"`` or ``"any"``) and of ``classifier`` (None: any); files that are not downstream reports are skipped."""
    rows = []
    for path in paths:
        res = read_report(path)
        if res is not None:
            rows += [row for row in tunings(path, res, arm)
                     if checkpoint in ("any", row["checkpoint"]) and classifier in (None, row["classifier"])]
    return distinct(rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    paths = report_paths(args.reports)
    rows = collect(paths, args.arm, args.checkpoint, args.classifier)
    result = {"arm": args.arm, "checkpoint": args.checkpoint, "classifier": args.classifier,
              "summary": summarise(rows, args.reference), "tunings": rows,
              "command": command_line("tuning_summary.py", argv),
              "uses_pair": False,  # reads reports only; each tuning names its report's pair
              "reports": [repo_relative(str(p)) for p in paths]}
    write_report(result, args.out, markdown, plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
