"""The evaluation protocol's report: JSON, Markdown (sanity block first) and a PNG.

Shared by ``benchmarks/downstream.py`` and ``progaug evaluate``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from progaug.evaluation.stats import paired_runs

__all__ = ["GAIN", "format_diff", "judge", "plot", "render_markdown", "seed_ranges", "write_report"]

GAIN = 0.02
"""A generated arm *helps* at an N when its paired accuracy and macro-F1 gains over real only are both
>= 2 points with the 95 % intervals above 0, and it is not worse than the better standard augmentation."""

STANDARD_ARMS = ("+stain", "+Mixup/CutMix")
"""The standard augmentations a generated arm must not fall below: its "best standard" is the better of them."""


def judge(entry: dict, name: str) -> str:
    """The verdict of a generated arm at one N: ``helps``, ``hurts``, or ``not told apart`` (see :data:`GAIN`)."""
    arm = entry["arms"][name]
    acc, f1 = arm["paired"].get("real"), arm["paired_f1"].get("real")
    if acc is None or f1 is None:
        return "-"
    std = arm["paired"].get("best standard")
    if acc["mean"] >= GAIN and f1["mean"] >= GAIN and acc["low"] > 0 and f1["low"] > 0 and (std is None or std["verdict"] != "worse"):
        return "helps"
    if acc["high"] < 0:
        return "hurts"
    return "not told apart"


def _pct(d: dict) -> str:
    return f"{100 * d['mean']:.1f} [{100 * d['low']:.1f}, {100 * d['high']:.1f}]"


def format_diff(d: dict | None) -> str:
    """A paired difference (:func:`progaug.evaluation.stats.paired`) as signed points with its interval,
    ``"+4.0 [+1.9, +6.1]"``; ``"-"`` for None."""
    if d is None:
        return "-"
    return f"{100 * d['mean']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"


def _training_numerics(cfg: dict) -> str:
    """How the classifiers computed: float32, or bf16 autocast and/or channels-last (the config's resolved settings)."""
    used = [name for key, name in (("train_bf16", "bf16 autocast"), ("train_channels_last", "channels-last")) if cfg.get(key)]
    return f"Classifiers trained with {' and '.join(used)}." if used else "Classifiers trained in float32."


def _sanity_lines(res: dict) -> list[str]:
    s = res["sanity"]
    lines = [f"## Sanity: {s['message']}", "", "| N | check | paired accuracy difference (points) [95 % CI] | verdict |",
             "| --- | --- | --- | --- |"]
    for key, checks in s.get("per_n", {s["n"]: s["checks"]}).items():
        lines += [f"| {key} | {name} | {format_diff(d)} | {d['verdict']} |" for name, d in checks.items()]
    return [*lines, "", *_orientation_lines(res)]


ORIENTATION_CUE = 0.2
"""Orientation bias (``progaug.data.orientation``, 0-1) of a class's training tiles from which the report says that
they share a direction (tiles of random texture give under 0.05, a set with every flip and rotation 0)."""


def _orientation_lines(res: dict) -> list[str]:
    """The training tiles' orientation per class, and where flips/rotations lose while a class shares a direction,
    that a classifier without flips can read that direction (a cue of the slide, not of the tissue)."""
    orientation = res.get("orientation")
    if not orientation:
        return []
    parts = ", ".join(f"{c} {o['bias']:.2f} (gradient angle {o['angle']:+.0f} deg)" for c, o in orientation.items())
    lines = [f"Orientation of the training tiles (bias 0-1; 0: no shared direction): {parts}."]
    cued = [c for c, o in orientation.items() if o["bias"] >= ORIENTATION_CUE]
    losing = [k for k, checks in res["sanity"].get("per_n", {}).items()
              if checks.get("flips/rotations vs none", {}).get("verdict") == "worse"]
    if cued and losing:
        lines.append(f"Flips/rotations lose at N = {', '.join(losing)} while the {' and '.join(cued)} tiles share a direction: a "
                     f"classifier trained without them can read which way the texture runs, a cue that tiles scanned the "
                     f"other way round would not offer, so part of the lead of \"none\" may be that cue rather than a short "
                     f"budget; scoring the held-out tiles turned a quarter turn shows how much (docs/data.md).")
    return [" ".join(lines), ""]


def _budget_lines(key: str, budget: dict) -> list[str]:
    if budget["curve"] is None:
        return [f"Budget: {budget['epochs']} epochs over the real tiles (fixed).", ""]
    curve = ", ".join(f"{e}: {_pct(c)}" for e, c in budget["curve"].items())
    growth = budget.get("growth") or []
    start = growth[0]["epochs"] if growth else budget["epochs"]
    pick = budget.get("pick", "shortest")  # results from before session 13 took the shortest
    lines = [f"Budget: **{budget['epochs']} epochs** over the real tiles. The real-only validation curve's plateau is {start} "
             f"epochs, the {pick} budget within the tolerance of the best (epochs: mean validation accuracy % [95 % CI]) {curve}."]
    for step in growth:
        if step["losing"]:
            lines.append(f"At {step['epochs']} epochs {', '.join(step['losing'])} lost beyond the interval: the budget doubled.")
    return [" ".join(lines), ""]


def _arm_table(entry: dict, n_test: int, res_converged: bool | None = True) -> list[str]:
    """The arm table of one N; a verdict is marked where the sanity block found that N under-trained
    (``res_converged`` False) or did not check it (None)."""
    lines = ["| arm | tuned | real + generated | accuracy % | macro-F1 % | vs real: accuracy | vs real: macro-F1 | "
             f"vs {entry.get('best_standard') or 'best standard'}: accuracy | verdict | test errors per seed (of {n_test}) |",
             "| --- " * 10 + "|"]
    for name, arm in entry["arms"].items():
        tuning = entry["tuning"][name]
        tuned = "-" if tuning["knob"] is None else f"{tuning['knob'].split('_')[0]} {tuning['chosen']:g}"
        r0 = arm["runs"][0]
        verdict = judge(entry, name) if arm["runs"][0]["generated_images"] else "-"
        if verdict != "-" and res_converged is False:
            verdict += " (not judged: under-trained at this N)"
        elif verdict != "-" and res_converged is None:
            verdict += " (sanity not checked at this N)"
        errors = ", ".join(str(r["errors"]) for r in arm["runs"])
        lines.append(f"| {name} | {tuned} | {r0['real_images']} + {r0['generated_images']} | {_pct(arm['accuracy'])} | "
                     f"{_pct(arm['f1_macro'])} | {format_diff(arm['paired'].get('real'))} | {format_diff(arm['paired_f1'].get('real'))} | "
                     f"{format_diff(arm['paired'].get('best standard'))} | {verdict} | {errors} |")
    return [*lines, ""]


def _per_class_lines(entry: dict, classes: Sequence[str]) -> list[str]:
    """Per-class recall and AUROC of p(class 1) on the scored split, with the paired differences to real only that
    the protocol computed (``paired_recall``, ``paired_auroc``), where every run logged them (runs since session 53):
    an arm that moves the decision toward one class shows a loss on the other class's recall and little AUROC change.
    Empty for older runs or more than two classes."""
    every = [r for arm in entry["arms"].values() for r in arm["runs"]]
    if "real" not in entry["arms"] or len(classes) != 2 or not all("recall" in r and "auroc" in r for r in every):
        return []
    lines = [f"Per class (scored split; paired with real only per seed): recall of {classes[0]} and of {classes[1]}, and the "
             f"AUROC of p({classes[1]}), which no decision threshold moves.", "",
             f"| arm | {classes[0]} recall % | vs real | {classes[1]} recall % | vs real | AUROC | vs real |", "| --- " * 7 + "|"]
    for name, arm in entry["arms"].items():
        runs, diffs, auc = arm["runs"], arm.get("paired_recall", [None, None]), arm.get("paired_auroc")
        cells = [f"{100 * sum(r['recall'][k] for r in runs) / len(runs):.1f} | {format_diff(diffs[k])}" for k in (0, 1)]
        auc_text = "-" if auc is None else f"{auc['mean']:+.3f} [{auc['low']:+.3f}, {auc['high']:+.3f}]"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {sum(r['auroc'] for r in runs) / len(runs):.3f} | {auc_text} |")
    return [*lines, ""]


def render_markdown(res: dict) -> str:
    """The report as Markdown: header, sanity block, then per N the budget and the arm table."""
    from progaug.evaluation.protocol import held_out_roles  # here, not at the top: compare_reports reads reports without torch

    cfg = res["config"]
    chooses, scored = held_out_roles(bool(cfg.get("swap_held_out")))
    n_test = sum(res["counts"][scored].values()) if "counts" in res else "?"
    lines = [f"# Downstream {cfg['classifier'].upper()}, {res['direction'][0]} -> {res['direction'][1]}: evaluation seeds {seed_ranges(cfg['seeds'])}", ""]
    if res.get("command"):
        lines += [f"`{res['command']}` on {res.get('machine')}, {res.get('threads')} threads, {res.get('seconds')} s "
                  f"({res.get('seconds_generation')} s making or loading generated sets).", ""]
    if res.get("pair_sha256"):
        sha = res["pair_sha256"]
        lines += [f"Pair: `{res.get('pair')}` ({(res.get('pair_training') or {}).get('steps_done')} steps per model), sha256 source "
                  f"`{str(sha['source'])[:12]}`, target `{str(sha['target'])[:12]}`.", ""]
    lines += [f"Protocol: budget in epochs over the real tiles (the same optimiser steps for every arm), generated images by per-draw "
              f"replacement (p tuned from {cfg['p_grid']}), Mixup alpha from {cfg['mixup_grid']}, stain sigma from {cfg['stain_grid']}, "
              f"each chosen by mean validation accuracy over tuning seeds {cfg['tune_seeds']}; the test split is scored once per "
              f"evaluation seed with {_checkpoint_words(cfg)}. Paired differences per seed; a generated arm *helps* when "
              f"accuracy and macro-F1 both gain >= {100 * GAIN:.0f} points with intervals above 0 and it is not worse than the better "
              f"of stain and Mixup/CutMix. {_training_numerics(cfg)}", ""]
    if cfg.get("subset_seed") is not None:
        lines += [f"Real subset: every run trains on seed {cfg['subset_seed']}'s subset (one fixed set of N tiles per class); the "
                  f"seeds vary initialisation and batch order only, so the figures speak for this subset, not for a draw of one.", ""]
    if cfg.get("swap_held_out"):
        lines += ["Held-out roles swapped: checkpoints, budgets and settings were chosen on the **test** split and every "
                  "accuracy below is read on the **validation** split (the second fold of a two-region check; \"test\" in "
                  "the tables means the scored split).", ""]
    lines += _sanity_lines(res)
    for key, entry in res["curve"].items():
        lines += [f"## N = {key} real tiles per class", ""]
        if entry.get("leak"):
            lines += [f"Pair leak: {entry['leak']}.", ""]
        converged = res.get("sanity", {}).get("converged_n", {}).get(key, True)
        lines += _budget_lines(key, entry["budget"]) + _arm_table(entry, n_test, converged)
        lines += _per_class_lines(entry, res.get("classes", []))
        lines += _choosing_block_lines(entry, {"val": "validation"}.get(chooses, chooses), cfg.get("checkpoint", "best"))
    return "\n".join(lines)


def _checkpoint_words(cfg: dict) -> str:
    if cfg.get("checkpoint", "best") == "last":
        return "the last checkpoint (no checkpoint selection: validation is read once, at the end of each training)"
    return "the validation-chosen checkpoint"


def _choosing_block_lines(entry: dict, block: str, checkpoint: str = "best") -> list[str]:
    """Each arm against real only on the split that chose the settings (``val_accuracy`` of each run). With the
    best checkpoint that is a maximum over checkpoints, optimistic for every arm and not a second test (a gain
    on the scored split that this line does not show is worth an exchanged-roles run, ``swap_held_out``); with
    the last checkpoint nothing was chosen per run there, so it scores a second region (the settings were still
    tuned on it, on other seeds)."""
    real = entry["arms"].get("real")
    if real is None or any("val_accuracy" not in r for r in real["runs"]):
        return []
    shown = [f"{name} {_choosing_diff(arm['runs'], real['runs'])}" for name, arm in entry["arms"].items()
             if name != "real" and len(arm["runs"]) == len(real["runs"]) and all("val_accuracy" in r for r in arm["runs"])]
    if not shown:
        return []
    if checkpoint == "last":
        return [f"On the {block} split, which tuned the settings (the last checkpoint, chosen by nothing: a second region's "
                f"score), vs real: {'; '.join(shown)}.", "", *_choosing_standard_lines(entry, block)]
    return [f"On the {block} split, which chose the checkpoints (the best checkpoint's accuracy: optimistic for every arm, "
            f"not a second test), vs real: {'; '.join(shown)}.", ""]


def _choosing_standard_lines(entry: dict, block: str) -> list[str]:
    """Each arm other than real and the standard ones against each standard arm (``+stain``, ``+Mixup/CutMix``)
    on the choosing split, paired per seed: the "not below the better standard augmentation" check read on the
    second region (last-checkpoint runs, where that split's accuracy is a score). ``[]`` without a standard arm."""
    arms = entry["arms"]
    standards = [s for s in STANDARD_ARMS if s in arms and all("val_accuracy" in r for r in arms[s]["runs"])]
    others = [n for n in arms if n not in ("real", "real, no flips", *STANDARD_ARMS)
              and all("val_accuracy" in r for r in arms[n]["runs"])]
    parts = []
    for name in others:
        for standard in standards:
            runs, base = arms[name]["runs"], arms[standard]["runs"]
            if len(runs) == len(base):
                parts.append(f"{name} vs {standard} {_choosing_diff(runs, base)}")
    return [f"On the {block} split, against the standard augmentations: {'; '.join(parts)}.", ""] if parts else []


def _choosing_diff(runs: list[dict], base: list[dict]) -> str:
    """The paired accuracy difference of ``runs`` to ``base`` on the choosing split, with its macro-F1 where scored."""
    return f"{format_diff(paired_runs(runs, base, 'val_accuracy'))}{_choosing_f1(runs, base)}"


def _choosing_f1(runs: list[dict], base: list[dict]) -> str:
    """`` (macro-F1 ...)`` where every run scored the choosing split's macro-F1 (last-checkpoint runs), else ``""``."""
    if not all("val_f1_macro" in r for r in (*runs, *base)):
        return ""
    return f" (macro-F1 {format_diff(paired_runs(runs, base, 'val_f1_macro'))})"


def seed_ranges(seeds: Sequence[int]) -> str:
    """``seeds`` as runs of consecutive integers with their count, for titles: ``[0, 1, 2, 5]`` -> ``"0-2, 5
    (4 seeds)"`` (in the given order; a run breaks wherever the next seed is not one more)."""
    seeds, parts, i = list(seeds), [], 0
    while i < len(seeds):
        j = i
        while j + 1 < len(seeds) and seeds[j + 1] == seeds[j] + 1:
            j += 1
        parts.append(str(seeds[i]) if i == j else f"{seeds[i]}-{seeds[j]}")
        i = j + 1
    return f"{', '.join(parts)} ({len(seeds)} seed{'s' if len(seeds) != 1 else ''})"


def plot(res: dict, path: Path) -> None:
    """Accuracy per N and arm, paired difference to real only, and the learning curves, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = list(res["curve"])
    names = list(next(iter(res["curve"].values()))["arms"])
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.8))
    for i, name in enumerate(names):
        xs = np.arange(len(keys)) + (i - (len(names) - 1) / 2) * 0.05
        style = {"marker": "o", "capsize": 3, "label": name, "color": f"C{i % 10}", "ls": "-" if i < 10 else "--"}
        acc = [res["curve"][k]["arms"][name]["accuracy"] for k in keys]
        axes[0].errorbar(xs, [100 * d["mean"] for d in acc], yerr=[100 * d["half_width"] for d in acc], **style)
        if name != "real":
            diff = [res["curve"][k]["arms"][name]["paired"]["real"] for k in keys]
            axes[1].errorbar(xs, [100 * d["mean"] for d in diff], yerr=[100 * d["half_width"] for d in diff], **style)
    axes[1].axhline(0, color="grey", lw=1)
    low, high = axes[0].get_ylim()  # t-intervals of few seeds can pass 0 or 100 %; accuracy cannot
    axes[0].set_ylim(max(low, 0.0), min(high, 100.0))
    for ax, ylabel in zip(axes[:2], ("test accuracy (%)", "paired difference to real only (points)")):
        ax.set_xticks(np.arange(len(keys)), [f"N={k}" for k in keys])
        ax.set_xlim(-0.5, len(keys) - 0.5)  # else one N's few arms spread over the whole width
        ax.set_xlabel("labelled real tiles per class")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    for j, key in enumerate(keys):
        curve = res["curve"][key]["budget"]["curve"]
        if curve:
            axes[2].plot([int(e) for e in curve], [100 * c["mean"] for c in curve.values()], marker="o", label=f"N={key}", color=f"C{j}")
            axes[2].axvline(res["curve"][key]["budget"]["epochs"], color=f"C{j}", ls=":", lw=1)
    axes[2].set_xscale("log")
    axes[2].set_xlabel("epochs over the real tiles")
    axes[2].set_ylabel("real-only validation accuracy (%)")
    axes[2].set_title("learning curve (dotted: chosen budget)")
    axes[2].grid(alpha=0.3)
    if any(res["curve"][k]["budget"]["curve"] for k in keys):
        axes[2].legend(fontsize=7)
    else:  # a budget given in epochs: say so rather than leave empty axes
        fixed = ", ".join(f"N={k}: {res['curve'][k]['budget']['epochs']}" for k in keys)
        axes[2].text(0.5, 0.5, f"budget fixed, no curve run\n(epochs {fixed})", ha="center", va="center", transform=axes[2].transAxes)
    fig.suptitle(f"Downstream {res['config']['classifier'].upper()}: mean and 95 % interval over seeds {seed_ranges(res['config']['seeds'])}")
    handles, labels = axes[0].get_legend_handles_labels()  # below the panels: inside one, it hides bars
    ncol = min(len(labels), 4)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8)
    fig.tight_layout(rect=(0, 0.05 * -(-len(labels) // ncol), 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(res: dict, out: Path, markdown: Callable[[dict], str] = render_markdown,
                 picture: Callable[[dict, Path], None] | None = plot) -> None:
    """Write ``out.json``, ``out.md`` (``markdown(res)``) and ``out.png`` (``picture(res, path)``; None: no
    picture), creating the folder, and print the Markdown."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    text = markdown(res)
    out.with_suffix(".md").write_text(text)
    if picture is not None:
        picture(res, out.with_suffix(".png"))
    print(text)
