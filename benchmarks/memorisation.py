"""Does a pair copy its training tiles? Nearest-training-tile distances of samples vs unseen real tiles.

A model trained long on a few hundred tiles can learn to reproduce them (Somepalli et al., CVPR 2023;
Carlini et al., USENIX Security 2023). A low FID alone cannot tell a good model from a copier. For each
class this draws ``--n`` unconditional samples of that class's model and measures, for every sample
and for every held-out real tile of the class (other 250-px blocks, never trained on), the distance to
its nearest training tile under any of the 8 flips / rotations the training saw:

    d(x) = min over training tiles t and dihedral ops g of RMSE(x, g(t)),   pixels in [0, 1]

Held-out real tiles give the reference: how close an *unseen* tile of the class comes to the training
set by chance. A sample closer to a training tile than the closest held-out tile ever comes (below the
held-out minimum) counts as a near-copy; the report gives their share, the medians of both
distributions and a picture of the closest samples beside their nearest training tiles.

    python benchmarks/memorisation.py                      # the embedded pair, 200 samples per class
    python benchmarks/memorisation.py --pair runs/my-pair --data DIR --n 500

Writes ``benchmarks/results/memorisation.{json,md,png}`` (``--out``). Needs no metric weights.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command_line, finish_args, heldout, open_benchmark, pair_sha256, pair_training, repo_relative, write_report
from pair_quality import unconditional
from progaug.data.tiles import dihedral
from progaug.runtime import machine_description


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", default="hgsc-demo", help="embedded pair name or pair folder (default: hgsc-demo)")
    p.add_argument("--data", default="hgsc", help="'hgsc' or ROOT with {train,val,test}/<class>/ (default: hgsc)")
    p.add_argument("--n", type=int, default=200, help="unconditional samples per class (default: 200)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps of the samples (default: 50)")
    p.add_argument("--batch-size", type=int, default=100, help="(default: 100)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="sample under bf16 autocast (default: on)")
    p.add_argument("--seed", type=int, default=0, help="(default: 0)")
    p.add_argument("--show", type=int, default=8, help="closest samples shown per class in the PNG (default: 8)")
    return finish_args(p, argv, "memorisation", ("n", "steps", "batch_size", "show"))


def dihedral_views(train: torch.Tensor) -> torch.Tensor:
    """The 8 flips / rotations of square ``(T, C, H, W)`` tiles, op-major: ``(8 T, C, H, W)``, view
    ``op * T + tile`` is ``dihedral(train, op)[tile]``."""
    return torch.cat([dihedral(train, op) for op in range(8)])


def nearest_distance(queries: torch.Tensor, views: torch.Tensor, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance of each query to its nearest view.

    Args:
        queries: ``(Q, C, H, W)`` float images in [0, 1].
        views: ``(V, C, H, W)`` float images in [0, 1], e.g. :func:`dihedral_views` of the training tiles.

    Returns:
        ``(distance, index)``: ``(Q,)`` RMSE in [0, 1] and ``(Q,)`` the index of the nearest view.
    """
    if queries.shape[1:] != views.shape[1:]:
        raise ValueError(f"queries of shape {tuple(queries.shape[1:])} and views of shape {tuple(views.shape[1:])} differ")
    flat = views.flatten(1).double()
    v2 = (flat ** 2).sum(1)
    best_d, best_i = [], []
    for q in queries.flatten(1).double().split(chunk):
        sq = ((q ** 2).sum(1, keepdim=True) + v2[None] - 2 * q @ flat.T).clamp_min(0)
        d, i = sq.min(1)
        best_d.append((d / flat.shape[1]).sqrt())
        best_i.append(i)
    return torch.cat(best_d).float(), torch.cat(best_i)


def copy_statistics(d_samples: torch.Tensor, d_heldout: torch.Tensor) -> dict:
    """Summary of the two nearest-distance distributions; a near-copy is a sample below the held-out minimum."""
    floor = float(d_heldout.min())
    return {
        "median_sample": float(d_samples.median()), "median_heldout": float(d_heldout.median()),
        "median_ratio": float(d_samples.median() / d_heldout.median()),
        "heldout_min": floor, "near_copy_share": float((d_samples < floor).float().mean()),
        "sample_quantiles": {q: float(d_samples.quantile(float(q))) for q in ("0.01", "0.05", "0.5")},
        "heldout_quantiles": {q: float(d_heldout.quantile(float(q))) for q in ("0.01", "0.05", "0.5")},
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    began = time.time()
    _, pair, splits = open_benchmark(args)
    res = {"pair": repo_relative(str(pair.path)), "pair_sha256": pair_sha256(pair), "pair_training": pair_training(pair),
           "n_samples": args.n, "sample_steps": args.steps, "bf16": args.bf16, "seed": args.seed,
           "machine": machine_description(args.device), "device": args.device, "torch_threads": torch.get_num_threads(),
           "distance": "RMSE of [0, 1] pixels to the nearest training tile under 8 flips / rotations", "per_class": {}}
    pictures = []
    for role, cls in zip(("source", "target"), pair.classes):
        train = splits["train"].of_class(cls).images
        views = dihedral_views(train.float() / 255)
        held = heldout(splits, cls)
        if held is None:
            raise ValueError(f"--data {args.data!r} has no val/test tiles of class {cls!r}: held-out tiles are the reference")
        held = held.float() / 255
        t0 = time.time()
        fake = (unconditional(getattr(pair, role), args.n, args.steps, args, pair.diffusion).clamp(-1, 1) + 1) / 2
        seconds = time.time() - t0
        d_fake, i_fake = nearest_distance(fake, views)
        d_held, _ = nearest_distance(held, views)
        stats = copy_statistics(d_fake, d_held)
        stats.update(n_train=len(train), n_heldout=len(held), sample_seconds=round(seconds, 1))
        res["per_class"][cls] = stats
        print(f"{cls}: median nearest distance samples {stats['median_sample']:.4f} vs held-out real {stats['median_heldout']:.4f} "
              f"(ratio {stats['median_ratio']:.2f}); near-copies {100 * stats['near_copy_share']:.1f} %", flush=True)
        order = d_fake.argsort()[: args.show]
        pictures.append((cls, fake[order], views[i_fake[order]], d_fake[order]))
    res["seconds"] = round(time.time() - began, 1)
    res["command"] = command_line("memorisation.py", argv)
    write_report(res, Path(args.out), render_markdown, lambda r, path: plot(pictures, path))
    return 0


def render_markdown(res: dict) -> str:
    lines = ["# Does the pair copy its training tiles?", "",
             f"Pair `{res['pair']}` ({res['pair_training'].get('steps_done', '?')} steps per model). Produced by "
             f"`{res['command']}` on {res['machine']} ({res['device']}, {res['torch_threads']} threads), {res['seconds']} s.", "",
             f"Distance: {res['distance']}. Samples: {res['n_samples']} per class, DDIM {res['sample_steps']} steps. "
             "A near-copy is a sample closer to a training tile than any held-out real tile of its class comes.", "",
             "| class | samples | held-out real tiles | median distance, samples | median, held-out | ratio | held-out minimum | near-copies |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for cls, s in res["per_class"].items():
        lines.append(f"| {cls} | {res['n_samples']} | {s['n_heldout']} | {s['median_sample']:.4f} | {s['median_heldout']:.4f} | "
                     f"{s['median_ratio']:.2f} | {s['heldout_min']:.4f} | {100 * s['near_copy_share']:.1f} % |")
    lines += ["", "Picture (`memorisation.png`): per class, the closest samples (top) above their nearest training tiles "
              "(bottom), distance printed.", ""]
    return "\n".join(lines)


def plot(pictures, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(len(p[1]) for p in pictures)
    fig, axes = plt.subplots(2 * len(pictures), cols, figsize=(1.3 * cols, 2.9 * len(pictures)), squeeze=False)
    for k, (cls, fakes, nearest, dist) in enumerate(pictures):
        for j in range(cols):
            for r, img in ((2 * k, fakes), (2 * k + 1, nearest)):
                ax = axes[r][j]
                ax.axis("off")
                if j < len(img):
                    ax.imshow(img[j].permute(1, 2, 0).numpy())
            if j < len(dist):
                axes[2 * k][j].set_title(f"{dist[j]:.3f}", fontsize=7)
        axes[2 * k][0].text(-8, 32, f"{cls}\nsample", fontsize=7, ha="right", va="center")
        axes[2 * k + 1][0].text(-8, 32, "nearest\ntrain", fontsize=7, ha="right", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
