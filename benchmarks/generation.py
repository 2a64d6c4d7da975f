"""Generation quality, the paper's Table 1: FID, sFID and LPIPS diversity of 500 images per method.

Methods (all against the real training tiles of the target class B):
- ``ADD``: full-depth translations (eq. 4) of source-class tiles with the pair;
- ``ADD (no HAS)``: the same with a pair whose two models share one attention priority (``--nohas-pair``);
- ``IDDPM-style``: unconditional DDIM samples of model B;
- ``real held-out``: held-out real tiles of class B (the floor at this set size).

FID uses the Inception pool features, sFID the first 7 channels of Mixed_6d's 1x1 branch (ADM suite);
LPIPS diversity is the mean LPIPS (AlexNet) over random pairs of generated images. Needs the metric
weights (``--metric-weights ../shared/weights`` here).

    python benchmarks/generation.py --metric-weights ../shared/weights
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from progaug.data import TileSpec, folder_tiles, hgsc_tiles
from progaug.data.tiles import dihedral, to_model_range
from progaug.diffusion import DDIMSchedule, bridge, sample
from progaug.hub import load_pair
from progaug.metrics import frechet_distance, inception_features, load_inception, load_lpips, lpips_diversity

ROOT = Path(__file__).resolve().parents[1]
PAPER = {  # Table 1 of the paper (ROSE / pRCC), for comparison in spirit only
    "ADD": {"ROSE": (67.83, 70.29, 0.6267), "pRCC": (58.31, 81.26, 0.6078)},
    "ADD (no HAS)": {"ROSE": (61.71, 74.64, 0.4398), "pRCC": (67.93, 84.64, 0.4125)},
    "IDDPM-style": {"ROSE": (74.52, 83.96, 0.5109), "pRCC": (64.52, 83.96, 0.5328)},
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", default="hgsc-demo", help="(default: hgsc-demo)")
    p.add_argument("--nohas-pair", default=None, help="pair trained with --target-attention global (optional)")
    p.add_argument("--data", default="hgsc", help="'hgsc' or class folders root/<class>/ (default: hgsc)")
    p.add_argument("--metric-weights", default=None)
    p.add_argument("--n", type=int, default=500, help="images per method (default: 500)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default: 50)")
    p.add_argument("--batch-size", type=int, default=100, help="(default: 100)")
    p.add_argument("--lpips-pairs", type=int, default=1000, help="(default: 1000)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "generation"))
    return p.parse_args(argv)


def tiles_of(data: str, size: int, cls: str):
    if data == "hgsc":
        spec = TileSpec(tile_size=size, stride=size // 2)
        held = torch.cat([hgsc_tiles(s, spec).of_class(cls).images for s in ("val", "test")])
        return hgsc_tiles("train", spec).of_class(cls).images, held
    tiles = folder_tiles(data, tile_size=size).of_class(cls).images
    half = len(tiles) // 2
    return tiles[:half], tiles[half:]


def dihedral_cycle(x: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` images from ``x``, repeating it with flips and rotations when ``n > len(x)``."""
    return torch.stack([dihedral(x[i % len(x)], (i // len(x)) % 8) for i in range(n)])


@torch.no_grad()
def translate(pair, sources: torch.Tensor, args) -> torch.Tensor:
    sched = DDIMSchedule.from_config(pair.diffusion, args.steps)
    return torch.cat([bridge(pair.source, pair.target, chunk.to(args.device), sched, clip=pair.diffusion.clip_denoised).cpu()
                      for chunk in sources.split(args.batch_size)])


@torch.no_grad()
def unconditional(model, n: int, args, diffusion) -> torch.Tensor:
    sched = DDIMSchedule.from_config(diffusion, args.steps)
    gen = torch.Generator().manual_seed(args.seed)
    size = model.config.image_size
    out = []
    for start in range(0, n, args.batch_size):
        noise = torch.randn(min(args.batch_size, n - start), 3, size, size, generator=gen).to(args.device)
        out.append(sample(model, noise, sched, clip=diffusion.clip_denoised).cpu())
    return torch.cat(out)


def main(argv=None) -> int:
    args = parse_args(argv)
    began = time.time()
    pair = load_pair(args.pair, device=args.device)
    a, b = pair.classes
    src_train, _ = tiles_of(args.data, pair.image_size, a)
    tgt_train, tgt_held = tiles_of(args.data, pair.image_size, b)
    sources = to_model_range(dihedral_cycle(src_train, args.n))
    sets = {"ADD": translate(pair, sources, args)}
    if args.nohas_pair:
        sets["ADD (no HAS)"] = translate(load_pair(args.nohas_pair, device=args.device), sources, args)
    sets["IDDPM-style"] = unconditional(pair.target, args.n, args, pair.diffusion)
    sets["real held-out"] = to_model_range(tgt_held[: args.n])
    inception = load_inception(args.metric_weights, device=args.device)
    lpips = load_lpips(args.metric_weights, device=args.device)
    ref = inception_features(inception, to_model_range(tgt_train))
    res = {"classes": [a, b], "n": args.n, "steps": args.steps, "device": args.device, "machine": platform.platform(),
           "reference_tiles": len(tgt_train), "command": " ".join(["python", "benchmarks/generation.py", *(argv or sys.argv[1:])]),
           "methods": {}}
    for name, images in sets.items():
        feats = inception_features(inception, images)
        res["methods"][name] = {
            "count": len(images),
            "fid": frechet_distance(feats["pool"], ref["pool"]),
            "sfid": frechet_distance(feats["spatial"], ref["spatial"]),
            "lpips_diversity": lpips_diversity(lpips, images, pairs=args.lpips_pairs, seed=args.seed),
        }
        print(name, {k: round(v, 4) for k, v in res["methods"][name].items()}, flush=True)
    res["seconds"] = round(time.time() - began, 1)
    write(res, Path(args.out))
    return 0


def write(res: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [f"# Generation quality ({res['classes'][0]} -> {res['classes'][1]}, {res['n']} images per method, DDIM {res['steps']} steps)", "",
             f"`{res['command']}` on {res['machine']} ({res['device']}), {res['seconds']} s. Reference: {res['reference_tiles']} real "
             f"training tiles of {res['classes'][1]}.", "",
             "| method | FID (lower better) | sFID | LPIPS diversity (higher = more diverse) | paper ROSE FID / sFID / LPIPS | paper pRCC |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, m in res["methods"].items():
        paper = PAPER.get(name)
        cells = [" / ".join(f"{v:g}" for v in paper[d]) if paper else "-" for d in ("ROSE", "pRCC")]
        lines.append(f"| {name} | {m['fid']:.1f} | {m['sfid']:.1f} | {m['lpips_diversity']:.4f} | {cells[0]} | {cells[1]} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res["methods"])
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, key in zip(axes, ("fid", "sfid", "lpips_diversity")):
        ax.bar(names, [res["methods"][n][key] for n in names], color="tab:blue")
        ax.set_title(key)
        ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
