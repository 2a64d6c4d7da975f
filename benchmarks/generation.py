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
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, bar_panels, command_line, final_stage, heldout, open_benchmark, pair_sha256, pair_training, parse_schedule, unconditional
from progaug.cli_args import add_config_arguments
from progaug.data.tiles import to_model_range
from progaug.hub import load_pair
from progaug.metrics import frechet_distance, inception_features, load_inception, load_lpips, lpips_diversity
from progaug.runtime import machine_description, RuntimeConfig

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
    p.add_argument("--batch-size", type=int, default=64, help="(default: 64)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                   help="generate under bf16 autocast (1.6-2x faster on CPUs; default: on, as in downstream.py, whose sets are reused)")
    p.add_argument("--decode-strides", type=parse_schedule, nargs="*", default=[],
                   help="also the full translations decoded at these strides, as methods 'ADD (decode stride S)'; S:F decodes the "
                        "last F states one per move, 'ADD (decode stride S, fine F)' (default: none)")
    p.add_argument("--iddpm", action=argparse.BooleanOptionalAction, default=True,
                   help="include unconditional samples of model B (default: yes)")
    p.add_argument("--lpips-pairs", type=int, default=1000, help="(default: 1000)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "generation"))
    add_config_arguments(p, RuntimeConfig, exclude=("channels_last", "compile"))
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    began = time.time()
    applied, pair, splits = open_benchmark(args)
    a, b = pair.classes
    gen = dict(steps=args.steps, device=args.device, bf16=args.bf16, batch_size=args.batch_size)
    tgt_train = splits["train"].of_class(b).images
    sets = {"ADD": final_stage(pair, splits["train"].of_class(a).images, args.n, **gen)}
    for stride, fine in args.decode_strides:
        name = f"ADD (decode stride {stride})" if fine == 0 else f"ADD (decode stride {stride}, fine {fine})"
        sets[name] = final_stage(pair, splits["train"].of_class(a).images, args.n, decode_stride=stride, decode_fine=fine, **gen)
    if args.nohas_pair:
        sets["ADD (no HAS)"] = final_stage(load_pair(args.nohas_pair, device=args.device), splits["train"].of_class(a).images, args.n, **gen)
    if args.iddpm:
        sets["IDDPM-style"] = unconditional(pair, args.n, seed=1234 + args.seed, **gen)
    held = heldout(splits, b)
    if held is not None:
        sets["real held-out"] = held[: args.n]
    inception = load_inception(args.metric_weights, device=args.device)
    lpips = load_lpips(args.metric_weights, device=args.device)
    ref = inception_features(inception, to_model_range(tgt_train))
    sets = {name: to_model_range(images) for name, images in sets.items()}
    res = {"classes": [a, b], "n": args.n, "steps": args.steps, "bf16": args.bf16, "device": args.device, "machine": machine_description(args.device),
           "threads": applied["threads"], "reference_tiles": len(tgt_train), "command": command_line("generation.py", argv), "decode_strides": [s if f == 0 else f"{s}:{f}" for s, f in args.decode_strides],
           "pair_training": pair_training(pair), "pair_sha256": pair_sha256(pair),
           "methods": {}}
    equal = min(len(images) for images in sets.values())  # Frechet distances are biased by set size: also compare at one size
    res["equal_n"] = equal
    for name, images in sets.items():
        feats = inception_features(inception, images)
        res["methods"][name] = {
            "count": len(images),
            "fid": frechet_distance(feats["pool"], ref["pool"]),
            "sfid": frechet_distance(feats["spatial"], ref["spatial"]),
            "fid_equal_n": frechet_distance(feats["pool"][:equal], ref["pool"]),
            "sfid_equal_n": frechet_distance(feats["spatial"][:equal], ref["spatial"]),
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
             f"| method | images | FID (lower better) | sFID | FID, first {res['equal_n']} | sFID, first {res['equal_n']} | "
             "LPIPS diversity (higher = more diverse) | paper ROSE FID / sFID / LPIPS | paper pRCC |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, m in res["methods"].items():
        paper = PAPER.get(name)
        cells = [" / ".join(f"{v:g}" for v in paper[d]) if paper else "-" for d in ("ROSE", "pRCC")]
        lines.append(f"| {name} | {m['count']} | {m['fid']:.1f} | {m['sfid']:.1f} | {m['fid_equal_n']:.1f} | {m['sfid_equal_n']:.1f} | "
                     f"{m['lpips_diversity']:.4f} | {cells[0]} | {cells[1]} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    names = list(res["methods"])
    panels = {f"FID, first {res['equal_n']} images": "fid_equal_n", f"sFID, first {res['equal_n']} images": "sfid_equal_n",
              "LPIPS diversity": "lpips_diversity"}
    bar_panels(out.with_suffix(".png"), names, {title: [res["methods"][n][key] for n in names] for title, key in panels.items()})


if __name__ == "__main__":
    raise SystemExit(main())
