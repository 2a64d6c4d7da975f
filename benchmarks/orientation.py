"""Do the tiles share a dominant orientation? A cue that flips and rotations take away.

A classifier trained without flips and rotations may read *which way* a texture runs: on tiles cut from one
slide, stroma fibres can run the same way in every block, and then "no flips" can beat "flips" on a held-out
block of the same slide while the cue would not survive a second slide scanned another way round. The
downstream report's sanity block reads "flips and rotations lose" as under-training; this check says whether
the data offer that cue at all. Nothing is trained; seconds on a CPU.

Per tile, :func:`progaug.data.orientation.tile_orientation` (the grey image's structure tensor) gives
``z = coherence x exp(2i x dominant gradient angle)`` (the fibres run across the gradient). Per split
and class the table gives the mean of ``z`` over tiles: its modulus, the **orientation bias** in [0, 1] (0 when
directions cancel, as they do under random flips and rotations), the mean gradient angle (degrees in (-90, 90],
counter-clockwise from the x axis), and the mean coherence.

    python benchmarks/orientation.py --data hgsc --subsets 0 1 --n 25 --out benchmarks/results/orientation

``--data``: ``hgsc`` or a ROOT with ``{train,val,test}/<class>/``. ``--subsets``: also the training subsets that
``downstream.py --subset-seed S --n N`` trains on. Writes OUT.{json,md,png} (a rose plot per row).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command_line, load_splits, repo_relative, save_figure, write_report
from progaug.data.orientation import summarise_orientations, tile_orientation

SPLITS = ("train", "val", "test")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="hgsc", help="'hgsc' or ROOT with {train,val,test}/<class>/ (default: hgsc)")
    p.add_argument("--size", type=int, default=64, help="tile side the splits are read at (default: 64)")
    p.add_argument("--subsets", type=int, nargs="*", default=[], help="subset seeds of downstream.py's --subset-seed")
    p.add_argument("--n", type=int, default=25, help="tiles per class of each subset (default: 25)")
    p.add_argument("--out", type=Path, default=None, help="write OUT.json, OUT.md and OUT.png (default: print only)")
    return p.parse_args(argv)


def measure(splits: dict, subsets: list[int], n: int) -> list[dict]:
    """One row per (group, class): every split of ``splits`` and each training subset of ``subsets``."""
    from progaug.evaluation.protocol import real_subset

    rows = []
    for name, tiles in splits.items():
        for c, cls in enumerate(tiles.classes):
            rows.append(_row(name, cls, tile_orientation(tiles.images[tiles.labels == c])))
    for seed in subsets:
        _, chosen = real_subset(splits["train"], seed, n)
        for cls, index in chosen.items():
            rows.append(_row(f"train subset {seed} (N = {n})", cls, tile_orientation(splits["train"].images[index])))
    return rows


def _row(group: str, cls: str, z: torch.Tensor) -> dict:
    """One table row from the group's per-tile orientations ``z`` (each tile's structure tensor read once)."""
    return {"group": group, "class": cls, **summarise_orientations(z), "angles": _angles(z)}


def _angles(z: torch.Tensor) -> list[list[float]]:
    """Per tile ``[gradient angle in degrees, coherence]``, for the plot."""
    return [[round(math.degrees(math.atan2(float(v.imag), float(v.real))) / 2, 1), round(float(v.abs()), 3)] for v in z]


def markdown(res: dict) -> str:
    lines = [f"# Orientation of the tiles ({res['data']})", "", f"`{res['command']}`", "",
             "| group | class | tiles | orientation bias (0-1) | mean gradient angle (deg) | mean coherence |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in res["rows"]:
        lines.append(f"| {r['group']} | {r['class']} | {r['tiles']} | {r['bias']:.3f} | {r['angle']:+.1f} | {r['coherence']:.3f} |")
    lines += ["", "Bias: modulus of the mean of coherence x exp(2i angle) over the tiles; 0 when the directions cancel "
              "(as under random flips and rotations). A class whose tiles share an angle in every split offers a "
              "classifier trained without flips a cue that a slide scanned the other way round would not."]
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = sorted({r["class"] for r in res["rows"]})
    groups = list(dict.fromkeys(r["group"] for r in res["rows"]))
    fig, axes = plt.subplots(len(classes), len(groups), subplot_kw={"projection": "polar"},
                             figsize=(2.4 * len(groups), 2.6 * len(classes)), squeeze=False)
    bins = torch.linspace(-math.pi, math.pi, 37)
    for i, cls in enumerate(classes):
        for j, group in enumerate(groups):
            ax = axes[i][j]
            row = next((r for r in res["rows"] if r["class"] == cls and r["group"] == group), None)
            if row is None:
                ax.set_axis_off()
                continue
            a = torch.tensor([[math.radians(2 * t), w] for t, w in row["angles"]]).reshape(-1, 2)
            hist = torch.histogram(a[:, 0], bins=bins, weight=a[:, 1]).hist / max(len(a), 1)
            ax.bar(bins[:-1].numpy() + math.pi / 36, hist.numpy(), width=2 * math.pi / 36)
            ax.set_xticks([0, math.pi / 2, math.pi, 3 * math.pi / 2], ["0", "45", "+-90", "-45"])
            ax.set_yticklabels([])
            ax.set_title(f"{group}\n{cls}: bias {row['bias']:.2f}", fontsize=8)
    fig.suptitle("coherence-weighted gradient angle (doubled); 0 = horizontal gradient", fontsize=9)
    save_figure(fig, path)


def main(argv=None) -> int:
    args = parse_args(argv)
    splits = load_splits(args.data, args.size)
    missing = [s for s in SPLITS if s not in splits]
    if missing:
        raise ValueError(f"--data {args.data!r} lacks the split(s) {missing}")
    rows = measure({s: splits[s] for s in SPLITS}, args.subsets, args.n)
    res = {"data": repo_relative(args.data), "size": args.size, "uses_pair": False,
           "command": command_line("orientation.py", argv), "rows": rows}
    write_report(res, args.out, markdown, plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
