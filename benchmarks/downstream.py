"""Downstream classification, the paper's Table 2 on a label-scarce curve: does progaug make a better
classifier from a few labelled real tiles than the augmentations pathology users already use?

Protocol (the same for every arm, seed and N):
- Data: the HGSC demo split (train / val / test by spatial block, both classes from one crop), or
  ``--data ROOT`` with ``ROOT/{train,val,test}/<class>/`` images.
- N labelled real tiles per class (``--n 25 50 100 all``): for each seed a fixed random order of each
  class's training tiles, N = its first N tiles, so the subsets are nested. ADD sources are taken only
  from the N class-A tiles of that subset.
- Model: a small timm ViT trained from scratch (the paper's Table 2 uses a ViT), AdamW + one-cycle,
  ``--steps`` optimiser steps of ``--batch-size`` images drawn uniformly from the arm's training set,
  random flips / rotations for every arm, soft-target cross-entropy; the validation split picks the
  checkpoint, the test split is reported.
- The seed sets the subset, the initialisation (the same for every arm: differences are paired), the
  batch order and every random draw (flips, stain jitter, Mixup / CutMix, IDDPM samples chosen).

Arms: ``real`` (real tiles only); ``+stain`` (HED-light stain jitter, Tellez et al.: see stain.py);
``+Mixup/CutMix`` (timm Mixup, mixup 0.8, cutmix 1.0, switch 0.5); ``+ADD-final`` (the full-depth ADD
translation of each of the N class-A tiles, hard class-B label); ``+ADD-Pro[<measure>]`` for each label
measure of progaug.labels (10 progressive images per class-A tile, soft labels); ``+IDDPM-style`` (as many
unconditional samples of model B as ``+ADD-final`` adds, hard labels); ``+ADD-Pro[<default>]+stain``.
``--nohas-pair`` adds ``+ADD-final (no HAS)``.

Figures per N and arm: mean test accuracy with a 95 % t-interval over seeds, and the paired difference
to ``real`` (and to ``+stain`` and ``+Mixup/CutMix``) per seed with its 95 % t-interval. A pair trained on
more tiles than the classifier sees leaks data into the comparison: the report prints the leak beside
each N (the demo pair saw every training tile; at N < all compare the generated arms with each other).

Generated images are made once per class-A tile and kept in ``benchmarks/cache/`` under the pair's
sha256, so a second run (other seeds, other N) only trains classifiers.

    python benchmarks/downstream.py                 # defaults: 5 seeds, N = 25 50 100 all, every arm
    python benchmarks/downstream.py --quick         # smoke run: 2 seeds, N = 25, few steps
    python benchmarks/downstream.py --data ROOT --pair PAIR

Writes ``benchmarks/results/downstream.{json,md,png}``; JSON keys in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, command_line, final_stage, load_splits, pair_sha256, pair_training, progressive_bank, repo_relative, require_positive, unconditional, write_report
from progaug.cli_args import add_config_arguments, config_from_args
from progaug.data.tiles import TileSet, dihedral
from progaug.hub import load_pair
from progaug.labels import DEFAULT_MEASURE, MEASURES
from progaug.losses import SoftLabelCrossEntropy
from progaug.runtime import CPU_MAX_BATCH, RuntimeConfig, apply_runtime
from stain import hed_jitter

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179,
        13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000}
"""Two-sided 95 % quantiles of Student's t by degrees of freedom (df between the keys: the next lower key,
a slightly wider interval; above 60: 1.96)."""
COMPARED_WITH = ("real", "+stain", "+Mixup/CutMix", "+ADD-Pro[paper]", "+ADD-final")
"""Arms every arm is compared with, per seed: the baselines, and the generated arms among themselves (where
the pair saw more tiles than the classifier, only the latter comparisons are fair)."""
QUICK = {"seeds": [0, 1], "n": ["25"], "steps": 30, "eval_every": 15, "levels": 4, "gen_steps": 10}


@dataclasses.dataclass(frozen=True)
class Arm:
    """One way of training the classifier.

    Attributes:
        name: Name in the reports.
        generated: Generated images added to the real tiles: ``None``, ``"final"`` (ADD full-depth
            translations), ``"pro"`` (ADD progressive images), ``"iddpm"`` (unconditional model-B samples)
            or ``"nohas"`` (full-depth translations of ``--nohas-pair``).
        measure: Label measure of a ``"pro"`` arm.
        stain: Apply HED stain jitter to every training batch.
        mixup: Apply timm's Mixup / CutMix to every training batch.
    """

    name: str
    generated: str | None = None
    measure: str | None = None
    stain: bool = False
    mixup: bool = False


def all_arms(nohas: bool = False) -> dict[str, Arm]:
    """Every arm, in report order."""
    arms = [Arm("real"), Arm("+stain", stain=True), Arm("+Mixup/CutMix", mixup=True), Arm("+ADD-final", "final")]
    arms += [Arm(f"+ADD-Pro[{m}]", "pro", m) for m in MEASURES]
    arms += [Arm("+IDDPM-style", "iddpm"), Arm(f"+ADD-Pro[{DEFAULT_MEASURE}]+stain", "pro", DEFAULT_MEASURE, stain=True)]
    if nohas:
        arms.append(Arm("+ADD-final (no HAS)", "nohas"))
    return {a.name: a for a in arms}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", default="hgsc-demo", help="embedded pair name or pair folder (default: hgsc-demo)")
    p.add_argument("--nohas-pair", default=None, help="pair trained with --target-attention global: adds '+ADD-final (no HAS)'")
    p.add_argument("--data", default="hgsc", help="'hgsc' or ROOT with {train,val,test}/<class>/ (default: hgsc)")
    p.add_argument("--arms", nargs="+", default=None, help="arms to run (default: all; 'real' is always run, the paired differences need it)")
    p.add_argument("--n", nargs="+", default=["25", "50", "100", "all"], help="labelled real tiles per class (default: 25 50 100 all)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="(default: 0 1 2 3 4)")
    p.add_argument("--steps", type=int, default=300, help="optimiser steps per run (default: 300)")
    p.add_argument("--batch-size", type=int, default=32, help="(default: 32)")
    p.add_argument("--lr", type=float, default=1e-3, help="(default: 1e-3)")
    p.add_argument("--width", type=int, default=64, help="ViT embedding width (default: 64)")
    p.add_argument("--depth", type=int, default=4, help="ViT depth (default: 4)")
    p.add_argument("--patch", type=int, default=8, help="(default: 8)")
    p.add_argument("--eval-every", type=int, default=50, help="validation every this many steps (default: 50)")
    p.add_argument("--generated-share", type=float, default=None,
                   help="share of each batch drawn from the generated images (default: none, batches drawn uniformly from real + generated)")
    p.add_argument("--stain-sigma", type=float, default=0.05, help="HED jitter strength of the stain arms (default: 0.05, HED-light)")
    p.add_argument("--gen-steps", type=int, default=50, help="DDIM steps of the generated sets (default: 50)")
    p.add_argument("--levels", type=int, default=10, help="progressive images per class-A tile (default: 10)")
    p.add_argument("--max-batch", type=int, default=CPU_MAX_BATCH, help=f"rows per U-Net call when generating (default: {CPU_MAX_BATCH})")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                   help="generate under bf16 autocast (1.6-2x faster on CPUs; default: on)")
    p.add_argument("--quick", action="store_true", help="smoke run: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items())
                   + " (flags given explicitly win)")
    p.add_argument("--pretrained", default=None, help="safetensors ViT weights to start from")
    p.add_argument("--device", default="cpu", help="(default: cpu)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "downstream"), help="path stem of the outputs")
    add_config_arguments(p, RuntimeConfig, exclude=("channels_last", "compile"))
    args = p.parse_args(argv)
    if args.quick:
        given = {a.split("=")[0] for a in (sys.argv[1:] if argv is None else argv) if a.startswith("--")}
        for key, value in QUICK.items():
            if f"--{key.replace('_', '-')}" not in given:
                setattr(args, key, value)
    known = all_arms(args.nohas_pair is not None)
    args.arms = list(known) if args.arms is None else ["real", *[a for a in args.arms if a != "real"]]
    unknown = [a for a in args.arms if a not in known]
    if unknown:
        p.error(f"--arms {unknown} unknown; the arms are {list(known)}")
    try:
        args.n = [parse_n(v) for v in args.n]
    except ValueError as exc:
        p.error(str(exc))
    require_positive(p, args, ("steps", "batch_size", "eval_every", "levels", "gen_steps", "max_batch"))
    if args.generated_share is not None and not 0 < args.generated_share < 1:
        p.error(f"--generated-share must lie in (0, 1), got {args.generated_share}")
    if len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds must differ, got {args.seeds}")
    return args


def parse_n(value: str) -> int | None:
    """``'all'`` -> None, a positive integer string -> int."""
    if value == "all":
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"--n takes positive integers or 'all', got {value!r}")
    return int(value)


def n_name(n: int | None) -> str:
    return "all" if n is None else str(n)


# ---------------------------------------------------------------- statistics


def interval(values: list[float]) -> dict:
    """Mean and two-sided 95 % t-interval of ``values`` over seeds (half width 0 for a single value)."""
    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if len(x) < 2:
        return {"mean": mean, "low": mean, "high": mean, "half_width": 0.0, "n": int(len(x))}
    df = len(x) - 1
    t = 1.96 if df > max(T975) else T975[max(k for k in T975 if k <= df)]
    half = t * float(x.std(ddof=1)) / np.sqrt(len(x))
    return {"mean": mean, "low": mean - half, "high": mean + half, "half_width": half, "n": int(len(x))}


def verdict(diff: dict) -> str:
    """``better`` / ``worse`` when the 95 % interval of a paired difference excludes 0, else ``not told apart``."""
    if diff["low"] > 0:
        return "better"
    if diff["high"] < 0:
        return "worse"
    return "not told apart"


# ---------------------------------------------------------------- data


def class_orders(train: TileSet, seed: int) -> dict[str, torch.Tensor]:
    """A fixed random order of each class's training-tile indices for ``seed`` (indices into ``train``)."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    return {c: torch.nonzero(train.labels == i).flatten()[torch.randperm(int((train.labels == i).sum()), generator=gen)]
            for i, c in enumerate(train.classes)}


def first_n(order: torch.Tensor, n: int | None) -> torch.Tensor:
    return order if n is None else order[:n]


def leak(pair, data: str, n: int | None, counts: dict[str, int]) -> str:
    """How the pair's training data relates to the classifier's N tiles per class (a sentence)."""
    card = pair.card.get("data", {})
    seen = card.get("counts")
    if card.get("name") != data or card.get("split") != "train" or not seen:
        return f"unknown: the pair card names its data as {card.get('name')!r}, this run uses {data!r}"
    if n is None or all(n >= counts.get(c, 0) for c in seen):
        return "none: the pair saw exactly the classifier's training tiles"
    return (f"the pair was trained on {seen} training tiles, the classifier sees {min(n, min(counts.values()))} per class: "
            f"the generated arms hold information from tiles the real arms never see; compare them with each other")


# ---------------------------------------------------------------- generated sets


def generated_sets(pair, arms: list[Arm], sources: torch.Tensor, needed: torch.Tensor, args) -> tuple[dict, dict]:
    """Images for every generated arm, made for the class-A tiles ``needed`` (indices into ``sources``).

    Returns:
        ``(sets, cost)``: ``sets[key]`` holds per-source tensors indexed like ``needed``: ``"pro:<measure>"``
        -> (images ``(M, L, 3, S, S)`` uint8, labels ``(M, L)``), ``"final"`` / ``"nohas"`` -> ``(M, 3, S, S)``
        uint8, ``"iddpm"`` -> a pool of ``len(sources)`` unconditional samples; ``cost`` per set: seconds and
        U-Net evaluations per image where they were made in this run.
    """
    kinds = {a.generated for a in arms} - {None}
    measures = sorted({a.measure for a in arms if a.generated == "pro"}, key=list(MEASURES).index)
    if "final" in kinds and not measures:
        measures = [DEFAULT_MEASURE]  # the full translation is level 1.0 of any measure's set
    picked = sources[needed]
    sets, cost = {}, {}
    for m in measures:
        t0 = time.time()
        bank = progressive_bank(pair, picked, m, steps=args.gen_steps, levels=args.levels, bf16=args.bf16, device=args.device,
                                max_batch=args.max_batch)
        sets[f"pro:{m}"] = (bank["images"], bank["labels"])
        cost[f"pro:{m}"] = {"seconds": round(time.time() - t0, 1), "unet_evals_per_image": bank["evals_per_image"],
                            "depth_mean": float(bank["depths"].double().mean())}
    if "final" in kinds:
        pro = sets[f"pro:{DEFAULT_MEASURE}" if f"pro:{DEFAULT_MEASURE}" in sets else f"pro:{measures[0]}"]
        sets["final"] = pro[0][:, -1]  # level 1.0 is always depth S: the eq. 4 translation
    if "iddpm" in kinds:
        t0 = time.time()
        sets["iddpm"] = unconditional(pair, len(sources), steps=args.gen_steps, device=args.device, bf16=args.bf16, batch_size=args.max_batch)
        cost["iddpm"] = {"seconds": round(time.time() - t0, 1), "unet_evals_per_image": args.gen_steps}
    if "nohas" in kinds:
        other = load_pair(args.nohas_pair, device=args.device)
        sets["nohas"] = final_stage(other, picked, len(picked), steps=args.gen_steps, device=args.device, bf16=args.bf16, batch_size=args.max_batch)
    return sets, cost


def training_set(arm: Arm, train: TileSet, chosen: dict[str, torch.Tensor], a_rows: torch.Tensor, sets: dict, pair_classes,
                 seed: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """uint8 images, target rows ``(M, K)`` and the number of generated images of one arm at one subset.

    ``a_rows`` are the rows of the generated sets (positions in ``needed``) of this subset's class-A tiles.
    """
    classes = list(train.classes)
    k = len(classes)
    real = torch.cat(list(chosen.values()))
    x, y = [train.images[real]], [F.one_hot(train.labels[real], k).float()]
    a, b = (classes.index(c) for c in pair_classes)
    if arm.generated == "pro":
        images, labels = sets[f"pro:{arm.measure}"]
        images, labels = images[a_rows].flatten(0, 1), labels[a_rows].flatten().float()
        rows = torch.zeros(len(labels), k)
        rows[:, a], rows[:, b] = 1 - labels, labels
        x.append(images), y.append(rows)
    elif arm.generated in ("final", "nohas"):
        images = sets[arm.generated][a_rows]
        x.append(images), y.append(F.one_hot(torch.full((len(images),), b), k).float())
    elif arm.generated == "iddpm":
        pool = sets["iddpm"]
        pick = torch.randperm(len(pool), generator=torch.Generator().manual_seed(20_000 + seed))[:len(a_rows)]
        x.append(pool[pick]), y.append(F.one_hot(torch.full((len(pick),), b), k).float())
    generated = sum(len(t) for t in x[1:])
    return torch.cat(x), torch.cat(y), generated


# ---------------------------------------------------------------- classifier


def make_model(args, k: int, size: int):
    import timm

    model = timm.create_model("vit_tiny_patch16_224", img_size=size, patch_size=args.patch, embed_dim=args.width,
                              depth=args.depth, num_heads=max(1, args.width // 32), num_classes=k)
    if args.pretrained:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(args.pretrained), strict=False)
    return model.to(args.device)


def normalise(x: torch.Tensor) -> torch.Tensor:
    """``[0, 1]`` images to the ViT's input range (mean 0.5, std 0.25)."""
    return (x - 0.5) / 0.25


def evaluate(model, images: torch.Tensor, labels: torch.Tensor, args) -> dict:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(normalise(c.float() / 255).to(args.device)).argmax(-1).cpu() for c in images.split(256)])
    f1s, recalls = [], []
    for c in range(int(labels.max()) + 1):
        tp = int(((pred == c) & (labels == c)).sum())
        fp, fn = int(((pred == c) & (labels != c)).sum()), int(((pred != c) & (labels == c)).sum())
        f1s.append(2 * tp / max(1, 2 * tp + fp + fn))
        recalls.append(tp / max(1, tp + fn))
    return {"accuracy": float((pred == labels).float().mean()), "balanced_accuracy": float(np.mean(recalls)),
            "f1_macro": float(np.mean(f1s)), "test_errors": int((pred != labels).sum()), "predictions": pred}


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's, numpy's and Python's global generators (timm's Mixup draws from numpy) and return a
    generator for the run's own draws."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def batch_indices(n_total: int, n_generated: int, batch: int, share: float | None, gen: torch.Generator) -> torch.Tensor:
    """Rows of one training batch: uniform over all ``n_total`` rows (``share`` None), or ``round(share *
    batch)`` rows from the generated ones (the last ``n_generated``) and the rest from the real ones."""
    if share is None or n_generated == 0:
        return torch.randint(0, n_total, (batch,), generator=gen)
    k, n_real = round(share * batch), n_total - n_generated
    return torch.cat([torch.randint(0, n_real, (batch - k,), generator=gen), n_real + torch.randint(0, n_generated, (k,), generator=gen)])


def train_run(x: torch.Tensor, rows: torch.Tensor, splits: dict[str, TileSet], arm: Arm, args, seed: int, generated: int = 0) -> dict:
    """Train one classifier; returns its validation accuracy and test metrics (best validation checkpoint).
    The last ``generated`` rows of ``x`` are generated images (``args.generated_share`` draws on them)."""
    gen = seed_everything(seed)
    k = rows.shape[1]
    model = make_model(args, k, x.shape[-1])  # same seed -> same initialisation for every arm
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    loss_fn = SoftLabelCrossEntropy()
    mix = None
    if arm.mixup:
        from timm.data import Mixup

        mix = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, num_classes=k, label_smoothing=0.0)
    val, test = splits["val"], splits["test"]
    best, best_state = -1.0, None
    for step in range(args.steps):
        model.train()
        idx = batch_indices(len(x), generated, args.batch_size, args.generated_share, gen)
        ops = torch.randint(0, 8, (args.batch_size,), generator=gen).tolist()
        batch = torch.stack([dihedral(img, op) for img, op in zip(x[idx], ops)]).float() / 255
        if arm.stain:
            batch = hed_jitter(batch, args.stain_sigma, gen)
        inputs, target = normalise(batch).to(args.device), rows[idx].to(args.device)
        if mix is not None:
            inputs, target = mix(inputs, target.argmax(-1))
        loss = loss_fn(model(inputs), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            acc = evaluate(model, val.images, val.labels, args)["accuracy"]
            if acc > best:
                best, best_state = acc, {name: v.detach().clone() for name, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    result = evaluate(model, test.images, test.labels, args)
    predictions = result.pop("predictions")
    return {"seed": seed, "val_accuracy": best, **result, "test_predictions_sha": _short_hash(predictions)}


def _short_hash(t: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(t.to(torch.uint8).numpy().tobytes()).hexdigest()[:12]


# ---------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    began = time.time()
    applied = apply_runtime(config_from_args(RuntimeConfig, args), args.device)
    pair = load_pair(args.pair, device=args.device)
    splits = load_splits(args.data, pair.image_size)
    if not {"val", "test"} <= set(splits):
        raise SystemExit(f"--data {args.data}: needs train/, val/ and test/ class folders (model selection and a held-out test)")
    train = splits["train"]
    missing = [c for c in pair.classes if c not in train.classes]
    if missing:
        raise SystemExit(f"--data {args.data}: no class folder {missing} of the pair's classes {list(pair.classes)}")
    arms = [all_arms(args.nohas_pair is not None)[name] for name in args.arms]
    a_cls = pair.classes[0]
    a_index = torch.nonzero(train.labels == train.classes.index(a_cls)).flatten()  # training tiles of class A
    position = {int(g): i for i, g in enumerate(a_index)}  # global index -> position among class-A tiles
    orders = {seed: class_orders(train, seed) for seed in args.seeds}
    needed = sorted({position[int(g)] for seed in args.seeds for n in args.n for g in first_n(orders[seed][a_cls], n)})
    needed_t = torch.tensor(needed, dtype=torch.long)
    row_of = {p: r for r, p in enumerate(needed)}
    print(f"{len(arms)} arms x {len(args.n)} N x {len(args.seeds)} seeds; generated sets for {len(needed)} {a_cls} tiles", flush=True)
    sets, cost = generated_sets(pair, arms, train.images[a_index], needed_t, args)
    seconds_generation = round(time.time() - began, 1)
    counts = train.counts()
    res = {"classes": list(train.classes), "direction": list(pair.classes), "counts": {s: splits[s].counts() for s in splits},
           "pair": repo_relative(str(pair.path) if pair.path else args.pair),
           "pair_sha256": pair_sha256(pair), "pair_training": pair_training(pair),
           "pair_data": pair.card.get("data"), "args": {k_: repo_relative(v) for k_, v in vars(args).items()},
           "machine": platform.platform(), "threads": applied["threads"], "command": command_line("downstream.py", argv),
           "arms": {a.name: dataclasses.asdict(a) for a in arms}, "generation": cost, "seconds_generation": seconds_generation,
           "curve": {}}
    for n in args.n:
        key = n_name(n)
        entry = {"leak": leak(pair, args.data, n, counts), "arms": {}}
        print(f"N = {key}: pair leak: {entry['leak']}", flush=True)
        for arm in arms:
            runs = []
            for seed in args.seeds:
                chosen = {c: first_n(order, n) for c, order in orders[seed].items()}
                a_rows = torch.tensor([row_of[position[int(g)]] for g in chosen[a_cls]], dtype=torch.long)
                x, y, generated = training_set(arm, train, chosen, a_rows, sets, pair.classes, seed)
                t0 = time.time()
                run = train_run(x, y, splits, arm, args, seed, generated)
                run.update(real_images=len(x) - generated, generated_images=generated, seconds=round(time.time() - t0, 1))
                runs.append(run)
                print(f"  N={key} {arm.name} seed {seed}: test acc {run['accuracy']:.4f} ({run['test_errors']} errors), "
                      f"{len(x)} training images, {run['seconds']} s", flush=True)
            entry["arms"][arm.name] = {"runs": runs, "accuracy": interval([r["accuracy"] for r in runs]),
                                       "balanced_accuracy": interval([r["balanced_accuracy"] for r in runs]),
                                       "f1_macro": interval([r["f1_macro"] for r in runs])}
        add_paired(entry)
        res["curve"][key] = entry
    res["seconds"] = round(time.time() - began, 1)
    write(res, Path(args.out))
    return 0


def add_paired(entry: dict) -> None:
    """Paired differences (same seed: same subset and initialisation) of every arm to each compared arm."""
    arms = entry["arms"]
    for name, arm in arms.items():
        arm["paired"] = {}
        for other in COMPARED_WITH:
            if other == name or other not in arms:
                continue
            diffs = [r["accuracy"] - o["accuracy"] for r, o in zip(arm["runs"], arms[other]["runs"])]
            d = interval(diffs)
            arm["paired"][other] = {**d, "per_seed": diffs, "verdict": verdict(d)}


# ---------------------------------------------------------------- reports


def _pct(d: dict) -> str:
    return f"{100 * d['mean']:.1f} [{100 * d['low']:.1f}, {100 * d['high']:.1f}]"


def _diff(d: dict | None) -> str:
    if d is None:
        return "-"
    return f"{100 * d['mean']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}] {d['verdict']}"


def render_markdown(res: dict) -> str:
    n_test = sum(res["counts"]["test"].values())
    a = res["args"]
    lines = [f"# Downstream ViT, {res['direction'][0]} -> {res['direction'][1]}: test accuracy over seeds {a['seeds']} (95 % t-intervals)", "",
             f"`{res['command']}` on {res['machine']}, {res['threads']} threads, {res['seconds']} s "
             f"({res['seconds_generation']} s making or loading generated sets).", "",
             f"Pair: `{res['pair']}` ({res['pair_training'].get('steps_done')} steps per model), sha256 source "
             f"`{str(res['pair_sha256']['source'])[:12]}`, target `{str(res['pair_sha256']['target'])[:12]}`; trained on {res['pair_data']}.", "",
             f"Classifier: timm ViT width {a['width']}, depth {a['depth']}, patch {a['patch']}, {a['steps']} steps of {a['batch_size']}, "
             f"lr {a['lr']}; batches drawn {'uniformly from real + generated images' if a.get('generated_share') is None else str(round(100 * a['generated_share'])) + ' % from the generated images'}; "
             f"test split {res['counts']['test']}.", "",
             "Paired differences are per seed (same subset, same initialisation); 'better' / 'worse' only when the 95 % interval "
             "excludes 0.", ""]
    for key, entry in res["curve"].items():
        others = [o for o in COMPARED_WITH if o in entry["arms"]]
        lines += [f"## N = {key} real tiles per class", "", f"Pair leak: {entry['leak']}.", "",
                  "| arm | real + generated images | accuracy % [95 % CI] | " + " | ".join(f"vs {o} (points)" for o in others)
                  + f" | test errors per seed (of {n_test}) |", "| --- " * (4 + len(others)) + "|"]
        for name, arm in entry["arms"].items():
            r0 = arm["runs"][0]
            errors = ", ".join(str(r["test_errors"]) for r in arm["runs"])
            lines.append(f"| {name} | {r0['real_images']} + {r0['generated_images']} | {_pct(arm['accuracy'])} | "
                         + " | ".join(_diff(arm["paired"].get(o)) for o in others) + f" | {errors} |")
        lines.append("")
    if res.get("generation"):
        lines += ["Generated sets: " + "; ".join(f"{k}: {v.get('unet_evals_per_image'):.1f} U-Net evals per image, {v['seconds']} s"
                                                for k, v in res["generation"].items()) + ".", ""]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(res["curve"])
    names = list(next(iter(res["curve"].values()))["arms"])
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
    for i, name in enumerate(names):
        offset = (i - (len(names) - 1) / 2) * 0.05
        xs = np.arange(len(keys)) + offset
        acc = [res["curve"][k]["arms"][name]["accuracy"] for k in keys]
        style = {"marker": "o", "capsize": 3, "label": name, "color": f"C{i % 10}"}  # one colour per arm in both panels
        axes[0].errorbar(xs, [100 * d["mean"] for d in acc], yerr=[100 * d["half_width"] for d in acc], **style)
        if name != "real":
            diff = [res["curve"][k]["arms"][name]["paired"]["real"] for k in keys]
            axes[1].errorbar(xs, [100 * d["mean"] for d in diff], yerr=[100 * d["half_width"] for d in diff], **style)
    axes[1].axhline(0, color="grey", lw=1)
    for ax, ylabel in zip(axes, ("test accuracy (%)", "paired difference to real only (points)")):
        ax.set_xticks(np.arange(len(keys)), [f"N={k}" for k in keys])
        ax.set_xlabel("labelled real tiles per class")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Downstream ViT, mean and 95 % interval over seeds {res['args']['seeds']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(res: dict, out: Path) -> None:
    write_report(res, out, render_markdown, plot)


if __name__ == "__main__":
    raise SystemExit(main())
