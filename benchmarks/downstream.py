"""Downstream classification, the paper's Table 2: does progaug make a better classifier on real tissue?

Data: the HGSC demo split (train <= 500 tiles per class, validation for model selection, test held out
by spatial block), or ``--data ROOT`` with ``ROOT/{train,val,test}/<class>/`` images. Model: a small
timm ViT for 64-px tiles trained from scratch (``--pretrained PATH`` loads safetensors weights), the
same recipe for every arm, soft-target cross-entropy, best validation accuracy kept.

Arms:
- ``baseline``: real training tiles only;
- ``+ADD-500``: plus 500 final-stage ADD images (full-depth translations, hard target-class labels);
- ``+ADD-Pro``: plus the progressive set (``--cache DIR`` from ``progaug precompute``, or made here:
  500 sources x 10 levels = 5000 soft-labelled samples);
- ``+Mixup/CutMix``: real tiles only, timm's Mixup (mixup 0.8, cutmix 1.0, switch 0.5);
- ``+IDDPM-style``: plus 500 unconditional samples of model B (hard labels);
- ``+ADD (no HAS)-500``: with ``--nohas-pair``.

    python benchmarks/downstream.py --seeds 0 1 2             # CPU defaults, under an hour
    python benchmarks/downstream.py --device cuda --steps 3000 --width 192 --depth 12

Writes ``benchmarks/results/downstream.json``, ``.md`` and ``.png`` (accuracy / F1 bars, mean +- std).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CACHE, ROOT, bar_plot, command_line, final_stage, load_splits, pair_training, repo_relative, unconditional
from progaug.cli_args import add_config_arguments, config_from_args
from progaug.data.tiles import TileSet, dihedral
from progaug.hub import load_pair
from progaug.losses import SoftLabelCrossEntropy
from progaug.runtime import RuntimeConfig, apply_runtime

ARMS = ("baseline", "+ADD-500", "+ADD-Pro", "+Mixup/CutMix", "+IDDPM-style")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", default="hgsc-demo", help="(default: hgsc-demo)")
    p.add_argument("--nohas-pair", default=None, help="pair trained with --target-attention global: adds '+ADD (no HAS)-500'")
    p.add_argument("--data", default="hgsc", help="'hgsc' or ROOT with {train,val,test}/<class>/ (default: hgsc)")
    p.add_argument("--cache", default=None, help="progressive set from `progaug precompute` (default: made here, kept in benchmarks/cache)")
    p.add_argument("--arms", nargs="+", default=list(ARMS), help=f"(default: {' '.join(ARMS)})")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="(default: 0 1 2)")
    p.add_argument("--steps", type=int, default=400, help="optimiser steps per run (default: 400)")
    p.add_argument("--batch-size", type=int, default=64, help="(default: 64)")
    p.add_argument("--lr", type=float, default=1e-3, help="(default: 1e-3)")
    p.add_argument("--width", type=int, default=128, help="ViT embedding width (default: 128)")
    p.add_argument("--depth", type=int, default=4, help="ViT depth (default: 4)")
    p.add_argument("--patch", type=int, default=8, help="(default: 8)")
    p.add_argument("--eval-every", type=int, default=50, help="(default: 50)")
    p.add_argument("--gen-steps", type=int, default=50, help="DDIM steps for generated sets (default: 50)")
    p.add_argument("--pro-n", type=int, default=5000, help="size of the progressive set made here (default: 5000)")
    p.add_argument("--levels", type=int, default=10, help="levels per source in the progressive set (default: 10)")
    p.add_argument("--gen-n", type=int, default=500, help="final-stage / unconditional images (default: 500)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                   help="generate under bf16 autocast (1.6-2x faster on CPUs; default: on)")
    p.add_argument("--pretrained", default=None, help="safetensors ViT weights to start from")
    p.add_argument("--device", default="cpu", help="(default: cpu)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "downstream"))
    add_config_arguments(p, RuntimeConfig, exclude=("channels_last", "compile"))
    return p.parse_args(argv)


def hard_rows(labels: torch.Tensor, k: int) -> torch.Tensor:
    return F.one_hot(labels, k).float()


def progressive_set(pair, sources: TileSet, args, k: int, classes) -> tuple[torch.Tensor, torch.Tensor]:
    """The ADD-Pro set: images and soft-label rows ``(1 - L)`` on class A, ``L`` on class B."""
    from progaug.cache import ProgressiveCache

    cache_dir = args.cache
    if cache_dir is None:
        from progaug.precompute import PrecomputeConfig, precompute

        config = PrecomputeConfig(n=args.pro_n, levels=args.levels, steps=args.gen_steps, bf16=args.bf16)
        key = "-".join([pair.card["source"]["sha256"][:8], pair.card["target"]["sha256"][:8], str(args.pro_n), str(args.levels), str(args.gen_steps),
                        "bf16" if args.bf16 else "fp32"])
        cache_dir = CACHE / f"progressive-{key}"
        if not (cache_dir / "manifest.json").is_file():
            precompute(pair, sources.images, list(sources.sources), cache_dir, config, resume=(cache_dir / "run.json").is_file(),
                       device=args.device)
    cache = ProgressiveCache.open(cache_dir)
    soft = cache.soft_labels()
    rows = torch.zeros(len(soft), k)
    rows[:, classes.index(cache.classes[0])] = 1 - soft
    rows[:, classes.index(cache.classes[1])] = soft
    return cache.load_images(), rows


def make_model(args, k: int, size: int):
    import timm

    model = timm.create_model("vit_tiny_patch16_224", img_size=size, patch_size=args.patch, embed_dim=args.width,
                              depth=args.depth, num_heads=max(1, args.width // 32), num_classes=k)
    if args.pretrained:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(args.pretrained), strict=False)
    return model.to(args.device)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    ops = torch.randint(0, 8, (x.shape[0],), generator=gen).tolist()
    return torch.stack([dihedral(img, op) for img, op in zip(x, ops)])


def evaluate(model, images: torch.Tensor, labels: torch.Tensor, args) -> dict[str, float]:
    model.eval()
    preds = []
    with torch.no_grad():
        for chunk in images.split(256):
            x = (chunk.float() / 255 - 0.5) / 0.25
            preds.append(model(x.to(args.device)).argmax(-1).cpu())
    pred = torch.cat(preds)
    acc = float((pred == labels).float().mean())
    f1s = []
    for c in range(int(labels.max()) + 1):
        tp = int(((pred == c) & (labels == c)).sum())
        fp, fn = int(((pred == c) & (labels != c)).sum()), int(((pred != c) & (labels == c)).sum())
        f1s.append(2 * tp / max(1, 2 * tp + fp + fn))
    return {"accuracy": acc, "f1_macro": float(np.mean(f1s)), "f1_target": f1s[-1]}


def train_arm(images, rows, splits, args, seed: int, mixup: bool) -> dict[str, float]:
    torch.manual_seed(seed)
    k = rows.shape[1]
    model = make_model(args, k, images.shape[-1])
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    loss_fn = SoftLabelCrossEntropy()
    mix = None
    if mixup:
        from timm.data import Mixup

        mix = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, num_classes=k, label_smoothing=0.0)
    gen = torch.Generator().manual_seed(seed)
    val, test = splits["val"], splits["test"]
    best, best_state = -1.0, None
    for step in range(args.steps):
        model.train()
        idx = torch.randint(0, len(images), (args.batch_size,), generator=gen)
        x = (augment(images[idx], gen).float() / 255 - 0.5) / 0.25
        y = rows[idx]
        x, y = x.to(args.device), y.to(args.device)
        if mix is not None:
            x, y = mix(x, y.argmax(-1))
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            acc = evaluate(model, val.images, val.labels, args)["accuracy"]
            if acc > best:
                best, best_state = acc, {k_: v.detach().clone() for k_, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return {"val_accuracy": best, **evaluate(model, test.images, test.labels, args)}


def main(argv=None) -> int:
    args = parse_args(argv)
    began = time.time()
    applied = apply_runtime(config_from_args(RuntimeConfig, args), args.device)
    pair = load_pair(args.pair, device=args.device)
    splits = load_splits(args.data, pair.image_size)
    if not {"val", "test"} <= set(splits):
        raise SystemExit(f"--data {args.data}: needs train/, val/ and test/ class folders (model selection and a held-out test)")
    train = splits["train"]
    classes = list(train.classes)
    k = len(classes)
    real_x, real_y = train.images, hard_rows(train.labels, k)
    sources = train.of_class(pair.classes[0])
    tgt = classes.index(pair.classes[1])
    arms: dict[str, tuple[torch.Tensor, torch.Tensor, bool]] = {}
    for arm in args.arms:
        t0 = time.time()
        if arm == "baseline":
            arms[arm] = (real_x, real_y, False)
        elif arm == "+Mixup/CutMix":
            arms[arm] = (real_x, real_y, True)
        elif arm in ("+ADD-500", "+ADD (no HAS)-500"):
            p = pair if arm == "+ADD-500" else load_pair(args.nohas_pair, device=args.device)
            gen = final_stage(p, sources.images, args.gen_n, steps=args.gen_steps, device=args.device, bf16=args.bf16)
            arms[arm] = (torch.cat([real_x, gen]), torch.cat([real_y, hard_rows(torch.full((args.gen_n,), tgt), k)]), False)
        elif arm == "+IDDPM-style":
            gen = unconditional(pair, args.gen_n, steps=args.gen_steps, device=args.device, bf16=args.bf16)
            arms[arm] = (torch.cat([real_x, gen]), torch.cat([real_y, hard_rows(torch.full((args.gen_n,), tgt), k)]), False)
        elif arm == "+ADD-Pro":
            gx, gy = progressive_set(pair, sources, args, k, classes)
            arms[arm] = (torch.cat([real_x, gx]), torch.cat([real_y, gy]), False)
        else:
            raise SystemExit(f"unknown arm {arm!r}")
        print(f"{arm}: {len(arms[arm][0])} training images ({time.time() - t0:.0f} s to build)", flush=True)
    res = {"classes": classes, "counts": {s: splits[s].counts() for s in splits}, "args": {k_: repo_relative(v) for k_, v in vars(args).items()},
           "machine": platform.platform(), "threads": applied["threads"], "command": command_line("downstream.py", argv),
           "pair_training": pair_training(pair),
           "seconds_generation": round(time.time() - began, 1), "arms": {}}
    for arm, (x, y, mixup) in arms.items():
        runs = [train_arm(x, y, splits, args, seed, mixup) for seed in args.seeds]
        summary = {m: {"mean": float(np.mean([r[m] for r in runs])), "std": float(np.std([r[m] for r in runs]))} for m in runs[0]}
        res["arms"][arm] = {"runs": runs, "summary": summary, "train_images": len(x)}
        print(arm, {m: f"{v['mean']:.4f}+-{v['std']:.4f}" for m, v in summary.items()}, flush=True)
    res["seconds"] = round(time.time() - began, 1)
    write(res, Path(args.out))
    return 0


def write(res: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    n_test = sum(res["counts"]["test"].values())
    lines = [f"# Downstream ViT on {res['classes']} (test split, mean +- std over seeds {res['args']['seeds']})", "",
             f"`{res['command']}` on {res['machine']}, {res['seconds']} s.", "",
             f"| arm | training images | accuracy (%) | F1 macro (%) | F1 target class (%) | test errors per seed (of {n_test}) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for arm, r in res["arms"].items():
        s = r["summary"]
        errors = ", ".join(str(round((1 - run["accuracy"]) * n_test)) for run in r["runs"])
        lines.append(f"| {arm} | {r['train_images']} | " + " | ".join(
            f"{100 * s[m]['mean']:.1f} +- {100 * s[m]['std']:.1f}" for m in ("accuracy", "f1_macro", "f1_target")) + f" | {errors} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    names = list(res["arms"])
    series = {m: ([100 * res["arms"][n]["summary"][m]["mean"] for n in names], [100 * res["arms"][n]["summary"][m]["std"] for n in names])
              for m in ("accuracy", "f1_macro")}
    low = min(m - e for means, errors in series.values() for m, e in zip(means, errors))
    bar_plot(out.with_suffix(".png"), names, series, ylabel="% on the test split", ylim=(max(0.0, np.floor(low) - 1), 100.5),
             title=f"Downstream ViT, mean +- std over seeds {res['args']['seeds']} (y axis cut)")


if __name__ == "__main__":
    raise SystemExit(main())
