"""How often one drawn subset gains from an arm: downstream reports of several subsets, the subset as the unit.

Each report of ``benchmarks/downstream.py`` (or ``progaug evaluate``) run with ``--subset-seed S`` trains on one
fixed subset of the tiles over several evaluation seeds. A user has one subset, so this reads one report per subset
and asks, per arm, how the gain over real only spreads *across subsets* (Result L in docs/benchmarks.md):

    python benchmarks/subset_spread.py --n 25 --arm "+ADD-Pro[preview] margin labels" --arm +stain \\
        --out benchmarks/results/spread_vit_n25 benchmarks/results/spread/downstream_vit_n25_subset{3..10}.json \\
        --beside benchmarks/results/downstream_vit_n25_subset0_shipped_sanity.json \\
        --beside benchmarks/results/downstream_vit_n25_subset1_shipped.json \\
        --beside benchmarks/results/downstream_vit_n25_subset2_shipped.json

Per subset and arm: the paired gain over real only (:func:`progaug.evaluation.stats.paired_runs`, same seeds) on
the test block (accuracy and macro-F1) and on the validation block (``val_accuracy``, where every run logged it),
mean and 95 % t-interval over that subset's seeds; and each later arm against the first, paired per seed (e.g. ADD
minus stain). Across subsets: the mean of the per-subset means with a 95 % t-interval over subsets, and counts of
subsets that gain (mean > 0), gain beyond their own interval (low > 0) and lose beyond it (high < 0).

The rules (fixed in session 50 before any report was read), on the test block's accuracy, for each arm:

- **helps over subsets**: the across-subset interval lies above 0 and its mean is >= 2 points;
- **subset-dependent**: that interval holds 0, or at least a quarter of the subsets lose beyond their own interval.

Both can hold. ``--beside`` reports (other subsets, e.g. run with more seeds and tuned knobs) are tabulated per
subset beside the others but enter no across-subset figure and no rule. Every report must measure the same pair
(``pair_sha256``); the main reports must share classifier, checkpoint, epochs and seeds, and be complete. Reads only
the reports: nothing is trained.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command_line, read_report, repo_relative, save_figure, write_report
from compare_reports import runs_by_seed
from progaug.evaluation.report import GAIN, format_diff
from progaug.evaluation.stats import interval, paired_runs

BLOCKS = {"test": "accuracy", "test macro-F1": "f1_macro", "validation": "val_accuracy"}
"""The blocks and metrics read, by the name the tables give them; the rules read ``test``."""
RULE_BLOCK = "test"
SAME_PROTOCOL = ("classifier", "checkpoint", "epochs", "seeds")
"""Config fields the main reports must agree on (the subset alone may differ)."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", nargs="+", type=Path, help="downstream report JSONs, one per subset (two or more)")
    p.add_argument("--arm", action="append", required=True,
                   help="an arm to read (repeat; the first is compared with each later one, paired per seed)")
    p.add_argument("--n", required=True, help="the N (tiles per class) to read, as the reports name it ('25')")
    p.add_argument("--baseline", default="real", help="the arm every gain is paired with (default: real)")
    p.add_argument("--beside", type=Path, action="append", default=[],
                   help="a report of another subset, tabulated beside but not pooled (repeat)")
    p.add_argument("--out", default=None, help="write OUT.json, OUT.md and OUT.png (default: print only)")
    args = p.parse_args(argv)
    if len(args.reports) < 2:
        p.error(f"give two or more reports (one per subset), got {len(args.reports)}")
    if len(set(args.arm)) != len(args.arm) or args.baseline in args.arm:
        p.error(f"--arm: give distinct arms other than the baseline {args.baseline!r}, got {args.arm}")
    return args


def subset_of(report: dict, path: Path) -> int:
    """The report's ``--subset-seed``.

    Raises:
        ValueError: The report was run without one (its subset was drawn per seed; the message names the file).
    """
    seed = report.get("config", {}).get("subset_seed")
    if seed is None:
        raise ValueError(f"{path}: run without --subset-seed (a subset drawn per seed), so it is no one subset")
    return int(seed)


def read_subset(report: dict, path: Path, n: str, arms: list[str], baseline: str = "real") -> dict:
    """One subset's gains: per arm and block, the paired difference to ``baseline``; per later arm, to the first.

    Returns:
        ``{"subset", "path", "seeds", "baseline": {block: mean}, "arms": {arm: {block: paired}},
        "versus": {"<first> - <later>": {block: paired (first minus later, per seed)}}}``; blocks whose metric some run lacks
        are left out.

    Raises:
        ValueError: The report lacks ``n``, an arm or the baseline, or an arm's seeds are not the baseline's
            (each message names the file).
    """
    base = list(runs_by_seed(report, n, baseline, path).values())
    runs = {a: list(runs_by_seed(report, n, a, path).values()) for a in arms}
    every = [*base, *(r for a in arms for r in runs[a])]
    blocks = {b: m for b, m in BLOCKS.items() if all(m in r for r in every)}
    out = {"subset": subset_of(report, path), "path": repo_relative(str(Path(path).resolve())),
           "seeds": [r["seed"] for r in base], "baseline": {}, "arms": {}, "versus": {}}
    for b, m in blocks.items():
        out["baseline"][b] = sum(r[m] for r in base) / len(base)
    try:
        for a in arms:
            out["arms"][a] = {b: paired_runs(runs[a], base, m) for b, m in blocks.items()}
        first = arms[0]
        for a in arms[1:]:
            out["versus"][versus_name(first, a)] = {b: paired_runs(runs[first], runs[a], m) for b, m in blocks.items()}
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return out


def versus_name(first: str, other: str) -> str:
    """The label of ``first - other`` paired per seed."""
    return f"{first} - {other}"


def across(per_subset: list[dict], key: str, name: str) -> dict:
    """Across subsets, for one arm (``key="arms"``) or comparison (``key="versus"``) ``name``, per block: the
    interval of the per-subset means over subsets, and how many subsets gain, gain beyond and lose beyond their own
    interval (``{"interval", "means", "n_subsets", "gain", "gain_beyond", "lose_beyond"}``)."""
    blocks = [b for b in BLOCKS if all(b in s[key][name] for s in per_subset)]
    out = {}
    for b in blocks:
        diffs = [s[key][name][b] for s in per_subset]
        out[b] = {"interval": interval([d["mean"] for d in diffs]), "means": [d["mean"] for d in diffs],
                  "n_subsets": len(diffs), "gain": sum(d["mean"] > 0 for d in diffs),
                  "gain_beyond": sum(d["low"] > 0 for d in diffs), "lose_beyond": sum(d["high"] < 0 for d in diffs)}
    return out


def rules(summary: dict) -> dict:
    """The fixed rules on the test block (module docstring): ``{"helps_over_subsets", "subset_dependent",
    "holds_zero", "quarter_lose"}``."""
    d = summary[RULE_BLOCK]
    iv = d["interval"]
    holds_zero = iv["low"] <= 0 <= iv["high"]
    quarter_lose = 4 * d["lose_beyond"] >= d["n_subsets"]
    return {"helps_over_subsets": iv["low"] > 0 and iv["mean"] >= GAIN, "subset_dependent": holds_zero or quarter_lose,
            "holds_zero": holds_zero, "quarter_lose": quarter_lose}


def check_same(reports: list[tuple[dict, Path]], beside: list[tuple[dict, Path]]) -> None:
    """Raise ValueError (naming the file) unless every report measured the first's pair, the main reports share
    :data:`SAME_PROTOCOL`, are complete, and no subset appears twice among the main or among the beside reports."""
    first, first_path = reports[0]
    for report, path in [*reports, *beside]:
        if report.get("pair_sha256") != first.get("pair_sha256"):
            raise ValueError(f"{path}: another pair than {first_path}'s (pair_sha256 differs): one pair per spread")
    for report, path in reports:
        if report.get("complete") is False:
            raise ValueError(f"{path}: an incomplete report (some runs missing); finish its command first")
        for field in SAME_PROTOCOL:
            a, b = report.get("config", {}).get(field), first.get("config", {}).get(field)
            if a != b:
                raise ValueError(f"{path}: config {field} = {a!r}, but {first_path} has {b!r}: "
                                 "the subsets must share the protocol")
    for group in (reports, beside):
        seen: dict[int, Path] = {}
        for report, path in group:
            s = subset_of(report, path)
            if s in seen:
                raise ValueError(f"{path}: subset {s} again (also {seen[s]}): one report per subset")
            seen[s] = path


def spread(reports: list[tuple[dict, Path]], n: str, arms: list[str], baseline: str = "real",
           beside: list[tuple[dict, Path]] | None = None) -> dict:
    """The spread of ``arms``' gains across the subsets of ``reports`` (see the module docstring).

    Returns:
        ``{"n", "arms", "baseline", "subsets": [read_subset(...)], "beside": [...], "across": {arm: {block: ...}},
        "across_versus": {comparison: {block: ...}}, "rules": {arm: rules(...)}, "rules_versus": {...}}``, subsets
        in ascending order.
    """
    beside = beside or []
    check_same(reports, beside)
    per = sorted((read_subset(r, p, n, arms, baseline) for r, p in reports), key=lambda s: s["subset"])
    side = sorted((read_subset(r, p, n, arms, baseline) for r, p in beside), key=lambda s: s["subset"])
    out = {"n": n, "arms": arms, "baseline": baseline, "subsets": per, "beside": side, "across": {}, "across_versus": {},
           "rules": {}, "rules_versus": {}}
    for a in arms:
        out["across"][a] = across(per, "arms", a)
        out["rules"][a] = rules(out["across"][a])
    for name in per[0]["versus"]:
        out["across_versus"][name] = across(per, "versus", name)
        out["rules_versus"][name] = rules(out["across_versus"][name])
    return out


def _rule_words(r: dict, comparison: bool = False) -> str:
    """The rules' outcome in words; for a comparison of two arms "helps" reads "is above the second arm"."""
    yes, no = (("is **above the second arm over subsets**", "is not above the second arm over subsets") if comparison
               else ("**helps over subsets**", "does not help over subsets"))
    words = [yes if r["helps_over_subsets"] else no]
    if r["subset_dependent"]:
        why = [w for w, on in (("the interval holds 0", r["holds_zero"]),
                               ("a quarter or more of the subsets lose beyond their own interval", r["quarter_lose"])) if on]
        words.append(f"**subset-dependent** ({'; '.join(why)})")
    else:
        words.append("not subset-dependent")
    return ", ".join(words)


def _subset_table(rows: list[dict], arms: list[str], blocks: list[str], baseline: str) -> list[str]:
    comps = list(rows[0]["versus"]) if rows else []
    cols = [f"{a}: {b}" for b in blocks for a in arms] + [f"{c}: {RULE_BLOCK}" for c in comps]
    lines = [f"| subset | seeds | {baseline}: test accuracy (%) | " + " | ".join(cols) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in cols) + " |"]
    for s in rows:
        cells = [format_diff(s["arms"][a].get(b)) for b in blocks for a in arms]
        cells += [format_diff(s["versus"][c].get(RULE_BLOCK)) for c in comps]
        lines.append(f"| {s['subset']} | {len(s['seeds'])} | {100 * s['baseline'].get('test', float('nan')):.1f} | "
                     + " | ".join(cells) + " |")
    return lines


def render_markdown(res: dict) -> str:
    sp = res["spread"]
    arms, per = sp["arms"], sp["subsets"]
    blocks = [b for b in BLOCKS if all(b in s["arms"][a] for s in per for a in arms)]
    cfg = res.get("protocol", {})
    lines = [f"# Gains over {sp['baseline']} across subsets at N = {sp['n']}", "",
             f"{len(per)} subsets ({', '.join(str(s['subset']) for s in per)}), one report each; {cfg.get('classifier')}, "
             f"{cfg.get('checkpoint')} checkpoint, {cfg.get('epochs')} epochs, seeds {cfg.get('seeds')}; pair `{res['pair']}`. "
             "Per subset: the mean paired gain over its seeds with a 95 % t-interval over those seeds (points). "
             "Across subsets: the mean of the per-subset means with a 95 % t-interval over subsets.", "",
             "## Per subset", "", *_subset_table(per, arms, blocks, sp["baseline"]), "",
             "## Across subsets", "",
             "| arm | block | mean [95 % interval over subsets] | subsets gaining | gaining beyond own interval | "
             "losing beyond own interval |", "| --- | --- | --- | --- | --- | --- |"]
    for name, summary in [*sp["across"].items(), *sp["across_versus"].items()]:
        for b, d in summary.items():
            lines.append(f"| {name} | {b} | {format_diff(d['interval'])} | {d['gain']} of {d['n_subsets']} | "
                         f"{d['gain_beyond']} | {d['lose_beyond']} |")
    lines += ["", f"## The fixed rules (test block, accuracy; *helps*: interval above 0 and mean >= {100 * GAIN:.0f} "
              "points; *subset-dependent*: interval holds 0 or >= a quarter of subsets lose beyond their own interval)", ""]
    lines += [f"- {name}: {_rule_words(r)}" for name, r in sp["rules"].items()]
    lines += [f"- {name}: {_rule_words(r, comparison=True)}" for name, r in sp["rules_versus"].items()]
    if sp["beside"]:
        lines += ["", "## Beside, not pooled", "", *_subset_table(sp["beside"], arms, blocks, sp["baseline"])]
    lines += ["", "Reports: " + "; ".join(f"subset {s['subset']} = {s['path']}" for s in [*per, *sp["beside"]]), "",
              f"Command: `{res['command']}`", ""]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    """One point per subset and arm (mean gain, its own interval) on the test and validation blocks, the
    across-subset mean and interval as a band per arm; beside subsets as open markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sp = res["spread"]
    blocks = [b for b in ("test", "validation") if all(b in s["arms"][a] for s in sp["subsets"] for a in sp["arms"])]
    fig, axes = plt.subplots(1, len(blocks), figsize=(6.5 * len(blocks), 4.2), squeeze=False)
    rows = [*sp["subsets"], *sp["beside"]]
    labels = [str(s["subset"]) + ("*" if k >= len(sp["subsets"]) else "") for k, s in enumerate(rows)]
    width = 0.7 / len(sp["arms"])
    for ax, b in zip(axes[0], blocks):
        for i, a in enumerate(sp["arms"]):
            for k, s in enumerate(rows):
                d = s["arms"][a].get(b)
                if d is None:
                    continue
                beside = k >= len(sp["subsets"])
                ax.errorbar(k + (i - (len(sp["arms"]) - 1) / 2) * width, 100 * d["mean"], yerr=100 * d["half_width"],
                            fmt="o", mfc="white" if beside else f"C{i}", color=f"C{i}", capsize=3,
                            label=a if k == 0 else None)
            iv = sp["across"][a][b]["interval"]
            ax.fill_between([-0.5, len(sp["subsets"]) - 0.5], 100 * iv["low"], 100 * iv["high"], color=f"C{i}", alpha=0.12)
            ax.hlines(100 * iv["mean"], -0.5, len(sp["subsets"]) - 0.5, color=f"C{i}", lw=1, ls="--")
        ax.axhline(0, color="grey", lw=1)
        ax.set_xticks(range(len(rows)), labels)
        ax.set_xlabel("subset (* beside, not pooled)" if sp["beside"] else "subset")
        ax.set_ylabel(f"gain over {sp['baseline']} (points)")
        ax.set_title(f"{b} block, N = {sp['n']}: per subset (95 % over seeds); band: across subsets", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path, dpi=100)


def main(argv=None) -> int:
    args = parse_args(argv)
    reports = [(read_report(p), p) for p in args.reports]
    beside = [(read_report(p), p) for p in args.beside]
    try:
        sp = spread(reports, str(args.n), args.arm, args.baseline, beside)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    first = reports[0][0]
    res = {"spread": sp, "command": command_line("subset_spread.py", argv), "pair": first.get("pair"),
           "pair_sha256": first.get("pair_sha256"),
           "protocol": {f: first.get("config", {}).get(f) for f in SAME_PROTOCOL}}
    write_report(res, args.out, render_markdown, plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
