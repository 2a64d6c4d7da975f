"""Do the soft labels follow what each progressive image shows? (issue: soft labels)

An independent judge, a small CNN trained here on the real training tiles of classes A and B only
(never on a generated image), scores every progressive image with p(B | image). For each label
measure the generator offers (``paper``: eq. 7-9 as today; others where progaug has them), progressive
images of ``--n`` held-out class-A tiles are generated and compared with the judge and with LPIPS:

- per level: mean soft label, its spread across sources, mean depth, mean judge p(B), mean LPIPS share
  (LPIPS(image, source) / LPIPS(full translation, source));
- per measure: Spearman(label, judge p) over all images, mean |label - judge p|, the share of images
  labelled >= 0.5 that the judge calls A, the share of sources whose depth list differs from the most
  common one, the LPIPS-share step ratio (max / min mean step from the source through the levels),
  and U-Net evaluations per output.

``--measures preview+margin`` labels the ``preview`` images by the pair's calibrated denoising margin
(``labels="margin"``) instead of the measure.

Needs the LPIPS weights (``--metric-weights DIR`` or ``$PROGAUG_METRIC_WEIGHTS``).

    python benchmarks/label_fidelity.py --metric-weights ../shared/weights

Writes ``benchmarks/results/label_fidelity.{json,md,png}`` and ``label_fidelity_strip_<measure>.png``.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, command_line, final_stage, heldout, open_benchmark, pair_sha256, pair_training, repo_relative, require_positive, write_report
from progaug.cli_args import add_config_arguments
from progaug.data.tiles import dihedral, to_model_range, to_uint8
from progaug.frequency import default_levels
from progaug.generator import GenerationConfig, ProgressiveGenerator, parse_variant
from progaug.metrics import load_lpips
from progaug.runtime import CPU_MAX_BATCH, default_device, machine_description, RuntimeConfig

GOALS = {
    "depths_differ": "depths differ between images (share of sources off the most common depth list > 0)",
    "spearman": "Spearman(label, judge p) >= 0.8 and above the paper measure's",
    "lpips_steps": "LPIPS-share steps between consecutive levels within 3x of each other",
    "high_label_judged_a": "at most 5 % of images labelled >= 0.5 that the judge calls A",
}
MARGIN = "+margin"
"""Suffix of a variant whose images are labelled by the pair's calibrated denoising margin (``labels="margin"``)."""
STRIP_SOURCES = 4
BOOTSTRAP_DRAWS = 1000


def available_measures() -> tuple[str, ...]:
    """The label measures progaug offers (``progaug.labels.MEASURES``), looked up when called."""
    return tuple(str(n) for n in importlib.import_module("progaug.labels").MEASURES)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", default="hgsc-demo", help="embedded pair name or pair folder (default: hgsc-demo)")
    p.add_argument("--data", default="hgsc", help="'hgsc' or class folders (root/{train,val,test}/<class>/ or root/<class>/) (default: hgsc)")
    p.add_argument("--metric-weights", default=None, help="folder of the LPIPS safetensors (or $PROGAUG_METRIC_WEIGHTS)")
    p.add_argument("--measures", nargs="+", default=None,
                   help="label measures to compare (default: all the generator offers); MEASURE/S decodes with "
                        "GenerationConfig.decode_stride S (e.g. decoded/2: the same labels, ceil(depth / 2) decode moves), MEASURE/S:F "
                        "the last F states one per move (GenerationConfig.decode_fine; e.g. preview/2:10); "
                        f"VARIANT{MARGIN} labels that variant's images by the pair's calibrated denoising margin (labels='margin')")
    p.add_argument("--n", type=int, default=100, help="source tiles of class A (default: 100)")
    p.add_argument("--num-levels", type=int, default=10, help="progressive levels per source (default: 10)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps S (default: 50)")
    p.add_argument("--max-batch", type=int, default=CPU_MAX_BATCH, help=f"rows per U-Net call (default: {CPU_MAX_BATCH})")
    p.add_argument("--chunk", type=int, default=50, help="source tiles per generate_progressive call (default: 50)")
    p.add_argument("--bf16", action="store_true", help="run the U-Nets under bf16 autocast (judge and LPIPS stay float32)")
    p.add_argument("--judge-steps", type=int, default=300, help="AdamW steps of the judge (default: 300)")
    p.add_argument("--judge-seed", type=int, default=1, help="seed of the judge's weights and batches (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the choice of source tiles (default: 0)")
    p.add_argument("--device", default=default_device(), help="(default: cuda where available, else cpu)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "label_fidelity"), help="path stem of the outputs")
    add_config_arguments(p, RuntimeConfig, exclude=("channels_last", "compile"))
    args = p.parse_args(argv)
    offered = available_measures()
    args.measures = list(offered) if args.measures is None else args.measures
    unknown = [m for m in args.measures if not _offered(m, offered)]
    if unknown:
        p.error(f"--measures {unknown} not offered by this progaug; available: {list(offered)}")
    require_positive(p, args, ("n", "num_levels", "steps", "max_batch", "chunk", "judge_steps"))
    return args


def _offered(variant: str, offered: tuple[str, ...]) -> bool:
    try:
        parse_variant(variant.removesuffix(MARGIN), offered)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------- figures (pure helpers)


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of a 1-D tensor, tied values sharing the mean of their ranks (float64)."""
    x = x.double().flatten()
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(1, len(x) + 1, dtype=torch.float64)
    _, inverse, counts = torch.unique(x, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, inverse, ranks)
    return (sums / counts)[inverse]


def spearman(x: torch.Tensor, y: torch.Tensor) -> float | None:
    """Spearman rank correlation (Pearson on average ranks); None when either side is constant."""
    if x.numel() != y.numel() or x.numel() < 2:
        raise ValueError(f"need two 1-D sets of equal size >= 2, got {x.numel()} and {y.numel()}")
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = float(rx.norm() * ry.norm())
    return None if den == 0 else float((rx * ry).sum()) / den


def depth_lists_differ(depths: torch.Tensor) -> tuple[float, int]:
    """Share of rows of ``(B, L)`` depths unlike the most common row, and the number of distinct rows."""
    rows = collections.Counter(tuple(r) for r in depths.tolist())
    return 1.0 - rows.most_common(1)[0][1] / depths.shape[0], len(rows)


def lpips_steps(share_means: list[float]) -> tuple[list[float], float | None]:
    """Steps of the mean LPIPS share from the source (share 0) through the levels, and max / min step
    (None when a step is not positive: the images do not move away from the source level by level)."""
    values = [0.0, *share_means]
    steps = [b - a for a, b in zip(values, values[1:])]
    return steps, (max(steps) / min(steps) if min(steps) > 0 else None)


LABEL_BANDS = (0.5, 0.7, 0.9)  # the goal's threshold and two stricter ones


def summarise(labels, judge_p, depths, shares, levels) -> dict:
    """Per-level rows and overall figures of one measure; all inputs ``(B, L)`` tensors except ``levels``."""
    rows = [{"level": round(float(levels[j]), 6), "label_mean": float(labels[:, j].mean()),
             "label_std": float(labels[:, j].std(unbiased=False)), "depth_mean": float(depths[:, j].double().mean()),
             "judge_p_mean": float(judge_p[:, j].mean()), "lpips_share_mean": float(shares[:, j].mean())}
            for j in range(labels.shape[1])]
    bands = {f"{t:g}": judged_a_at_or_above(labels, judge_p, t) for t in LABEL_BANDS}  # "0.5": the goal's share
    differ, distinct = depth_lists_differ(depths)
    steps, ratio = lpips_steps([r["lpips_share_mean"] for r in rows])
    overall = {"spearman_label_judge": spearman(labels.flatten(), judge_p.flatten()),
               "mean_abs_label_minus_judge": float((labels - judge_p).abs().mean()),
               "high_label_count": bands["0.5"]["count"],
               "high_label_judged_a": bands["0.5"]["judged_a"],
               "judged_a_by_label": bands,
               "depth_lists_differ": differ, "distinct_depth_lists": distinct,
               "lpips_steps": steps, "lpips_step_ratio": ratio}
    return {"per_level": rows, "overall": overall}


def judged_a_at_or_above(labels: torch.Tensor, judge_p: torch.Tensor, threshold: float) -> dict:
    """Of the images labelled >= ``threshold``: how many, and the share the judge calls A (p(B) < 0.5).

    A label of 0.55 read as a probability says the image is nearly as likely A as B, so the goal's share at
    0.5 mixes such images with confident ones; the stricter thresholds show where the disagreement lies.

    Args:
        labels: ``(B, L)`` soft labels in [0, 1].
        judge_p: ``(B, L)`` the judge's p(B) of the same images.
        threshold: Lowest label counted.

    Returns:
        ``{"count": int, "judged_a": share in [0, 1] or None when no image is labelled that high}``.
    """
    high = labels.flatten() >= threshold
    share = float((judge_p.flatten()[high] < 0.5).double().mean()) if high.any() else None
    return {"count": int(high.sum()), "judged_a": share}


def bootstrap_intervals(res: dict, draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> None:
    """Add 95 % bootstrap intervals over *sources* (each source's images stay together; the same draws for
    every measure, so differences are paired): ``overall.spearman_ci95``, ``overall.high_label_judged_a_ci95``
    ``spearman_minus_paper`` / ``spearman_minus_preview`` and ``high_label_judged_a_minus_paper`` /
    ``high_label_judged_a_minus_preview`` (mean and ``ci95``) per measure. Uses the
    stored ``scatter``."""
    entries = res["measures"]
    if not entries:
        return
    n, levels = res["n"], len(next(iter(entries.values()))["per_level"])
    data = {m: (torch.tensor(e["scatter"]["label"]).view(n, levels), torch.tensor(e["scatter"]["judge_p"]).view(n, levels))
            for m, e in entries.items()}
    gen = torch.Generator().manual_seed(seed)
    rho = {m: [] for m in data}
    wrong = {m: [] for m in data}
    for _ in range(draws):
        idx = torch.randint(0, n, (n,), generator=gen)
        for m, (labels, p) in data.items():
            lab, pj = labels[idx].flatten(), p[idx].flatten()
            rho[m].append(spearman(lab, pj))
            high = lab >= 0.5
            wrong[m].append(float((pj[high] < 0.5).double().mean()) if high.any() else None)

    def ci(values) -> list[float] | None:
        v = torch.tensor([x for x in values if x is not None], dtype=torch.float64).sort().values
        return None if len(v) < draws // 2 else [float(v[int(0.025 * (len(v) - 1))]), float(v[int(0.975 * (len(v) - 1))])]

    for m, e in entries.items():
        e["overall"]["spearman_ci95"] = ci(rho[m])
        e["overall"]["high_label_judged_a_ci95"] = ci(wrong[m])
        for other in ("paper", "preview"):
            if other in rho and m != other:
                e["overall"][f"spearman_minus_{other}"] = _paired(rho[m], rho[other], ci)
                e["overall"][f"high_label_judged_a_minus_{other}"] = _paired(wrong[m], wrong[other], ci)
        base = m.partition("/")[0]
        if base != m and base in rho:  # a decode-stride variant against its measure at stride 1
            e["overall"]["minus_stride_1"] = {"spearman": _paired(rho[m], rho[base], ci),
                                              "high_label_judged_a": _paired(wrong[m], wrong[base], ci)}
    res["bootstrap"] = {"draws": draws, "seed": seed, "unit": "source tile (its images resampled together)"}


def _paired(values: list, others: list, ci: Callable[[list], list[float] | None]) -> dict:
    """Mean and 95 % interval of per-draw differences ``values - others`` (draws where either is None skipped)."""
    diffs = [None if a is None or b is None else a - b for a, b in zip(values, others)]
    kept = [d for d in diffs if d is not None]
    return {"mean": sum(kept) / len(kept) if kept else None, "ci95": ci(diffs)}


def goals(overall: dict, paper_spearman: float | None, is_paper: bool) -> dict:
    """Each goal of the issue: True / False, or None where it cannot be decided."""
    rho, ratio, wrong = overall["spearman_label_judge"], overall["lpips_step_ratio"], overall["high_label_judged_a"]
    above_paper = True if is_paper else (None if paper_spearman is None or rho is None else rho > paper_spearman)
    return {"depths_differ": overall["depth_lists_differ"] > 0,
            "spearman": None if rho is None or above_paper is None else bool(rho >= 0.8 and above_paper),
            "lpips_steps": ratio is not None and ratio <= 3.0,
            "high_label_judged_a": None if wrong is None else wrong <= 0.05}


# ---------------------------------------------------------------- the judge


def make_judge(width: int = 16) -> nn.Module:
    """Three conv blocks (conv 3x3, GroupNorm of 4 groups, ReLU, max-pool 2) and global average pooling
    to two logits (A, B); ``(N, 3, S, S)`` in [-1, 1] -> ``(N, 2)``."""
    layers, c = [], 3
    for w in (width, 2 * width, 4 * width):
        layers += [nn.Conv2d(c, w, 3, padding=1), nn.GroupNorm(4, w), nn.ReLU(), nn.MaxPool2d(2)]
        c = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 2))


def train_judge(tiles_a: torch.Tensor, tiles_b: torch.Tensor, *, steps: int, seed: int, device: str, batch: int = 64) -> nn.Module:
    """Train the judge on real uint8 tiles only: class-balanced batches, random flips / rotations, AdamW
    with cosine decay. Returns it in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    judge = make_judge().to(device)
    opt = torch.optim.AdamW(judge.parameters(), lr=2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    half = batch // 2
    target = torch.cat([torch.zeros(half), torch.ones(half)]).long().to(device)
    judge.train()
    for _ in range(steps):
        pick = [t[torch.randint(0, len(t), (half,), generator=gen)] for t in (tiles_a, tiles_b)]
        ops = torch.randint(0, 8, (2 * half,), generator=gen).tolist()
        x = torch.stack([dihedral(img, op) for img, op in zip(torch.cat(pick), ops)])
        loss = nn.functional.cross_entropy(judge(to_model_range(x).to(device)), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return judge.eval()


@torch.no_grad()
def judge_p(judge: nn.Module, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """p(B | image) of ``(N, 3, S, S)`` images (uint8, or float in [-1, 1]) as a ``(N,)`` float32 tensor."""
    device = next(judge.parameters()).device
    x = to_model_range(images) if images.dtype == torch.uint8 else images.float()
    return torch.cat([judge(c.to(device)).softmax(-1)[:, 1].cpu() for c in x.split(batch)])


def judge_accuracy(judge: nn.Module, tiles_a: torch.Tensor, tiles_b: torch.Tensor) -> dict:
    """Accuracy on real tiles of both classes, overall and per class."""
    hit_a = judge_p(judge, tiles_a) < 0.5
    hit_b = judge_p(judge, tiles_b) >= 0.5
    return {"accuracy": float(torch.cat([hit_a, hit_b]).double().mean()), "accuracy_a": float(hit_a.double().mean()),
            "accuracy_b": float(hit_b.double().mean()), "tiles": len(tiles_a) + len(tiles_b)}


# ---------------------------------------------------------------- generation


def pick_sources(splits, cls: str, n: int, seed: int) -> tuple[torch.Tensor, str]:
    """``n`` uint8 tiles of ``cls``: held-out (val + test) tiles when there are any, else training tiles,
    in a seeded order, cycled with flips / rotations when ``n`` exceeds them."""
    held = heldout(splits, cls)
    tiles, split = (held, "heldout") if held is not None and len(held) else (splits["train"].of_class(cls).images, "train")
    index = source_indices(len(tiles), n, seed)
    return torch.stack([dihedral(tiles[int(k)], (i // len(tiles)) % 8) for i, k in enumerate(index)]), split


def source_indices(count: int, n: int, seed: int) -> torch.Tensor:
    """Which of ``count`` tiles each of the ``n`` sources of :func:`pick_sources` is: ``(n,)`` int64."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return order[torch.arange(n) % count]


def relabel_by_margin(pair, gen: dict, args) -> dict:
    """``gen`` (of :func:`generate`) with each image labelled by the pair's calibrated denoising margin, read from
    the stored 8-bit images (:func:`progaug.evaluation.generated.margin_relabelled`, as the evaluation's margin arms);
    its cost adds the margin's U-Net evaluations."""
    from progaug.evaluation.generated import margin_relabelled

    began = time.time()
    labels = margin_relabelled(pair, gen["images"], device=args.device, max_batch=args.max_batch)
    return {**gen, "labels": labels, "evals": gen["evals"] + pair.margin_calibration.evaluations_per_image * labels.numel(),
            "seconds": gen["seconds"] + time.time() - began}


def generate(pair, sources: torch.Tensor, variant: str, args) -> dict:
    """Progressive images of uint8 ``sources`` under one label measure (``MEASURE``, ``MEASURE/S`` or ``MEASURE/S:F``):
    uint8 images ``(B, L, 3, S, S)``, labels and depths ``(B, L)``, U-Net evaluations and seconds."""
    parts, evals, began = [], 0, time.time()
    measure, stride, fine = parse_variant(variant, available_measures())
    # labels="measure": a variant reports its measure's labels even where the pair carries a margin calibration
    # (labels="auto" would label by the margin; VARIANT+margin does that, from the stored images, at its own cost)
    generator = ProgressiveGenerator(pair, GenerationConfig(steps=args.steps, measure=measure, max_batch=args.max_batch, bf16=args.bf16,
                                                            decode_stride=stride, decode_fine=fine, labels="measure"))
    for i, chunk in enumerate(sources.split(args.chunk)):
        r = generator(to_model_range(chunk).to(args.device), default_levels(args.num_levels))
        parts.append((to_uint8(r.images).cpu(), r.soft_labels.float().cpu(), r.depths.cpu()))
        evals += r.model_evaluations
        print(f"{variant}: {min((i + 1) * args.chunk, len(sources))}/{len(sources)} sources", flush=True)
    images, labels, depths = (torch.cat(p) for p in zip(*parts))
    return {"images": images, "labels": labels, "depths": depths, "evals": evals, "seconds": time.time() - began}


@torch.no_grad()
def lpips_shares(lpips, images: torch.Tensor, sources: torch.Tensor, full: torch.Tensor, batch: int = 100) -> torch.Tensor:
    """LPIPS(image, source) / LPIPS(full translation, source) for uint8 ``(B, L, 3, S, S)`` images: ``(B, L)``."""
    device = next(lpips.parameters()).device
    b, n_levels = images.shape[:2]

    def dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.cat([lpips(to_model_range(u).to(device), to_model_range(v).to(device)).cpu() for u, v in zip(x.split(batch), y.split(batch))])

    near = dist(images.flatten(0, 1), sources.repeat_interleave(n_levels, 0)).view(b, n_levels)
    return near / dist(full, sources).clamp_min(1e-8)[:, None]


# ---------------------------------------------------------------- main and reports


def main(argv=None) -> int:
    args = parse_args(argv)
    began = time.time()
    applied, pair, splits = open_benchmark(args)
    a, b = pair.classes
    if any(m.endswith(MARGIN) for m in args.measures) and pair.margin_calibration is None:
        raise SystemExit(f"--measures ...{MARGIN}: the pair {args.pair} has no margin_calibration.json (fit one with `progaug calibrate`)")
    train_a, train_b = (splits["train"].of_class(c).images for c in (a, b))
    judge = train_judge(train_a, train_b, steps=args.judge_steps, seed=args.judge_seed, device=args.device)
    held_a, held_b = heldout(splits, a), heldout(splits, b)
    judged = judge_accuracy(judge, held_a, held_b) if held_a is not None and held_b is not None else None
    sources, split = pick_sources(splits, a, args.n, args.seed)
    full = final_stage(pair, sources, len(sources), steps=args.steps, device=args.device, bf16=args.bf16, batch_size=args.max_batch)
    lpips = load_lpips(args.metric_weights, device=args.device)
    res = {"classes": [a, b], "pair": repo_relative(str(pair.path) if pair.path else args.pair),
           "pair_sha256": pair_sha256(pair), "pair_training": pair_training(pair),
           "command": command_line("label_fidelity.py", argv), "machine": machine_description(args.device), "device": args.device,
           "threads": applied["threads"], "n": len(sources), "sources_split": split, "levels": args.num_levels, "steps": args.steps,
           "bf16": args.bf16, "seed": args.seed, "measures_available": list(available_measures()),
           "judge": {"train_tiles": len(train_a) + len(train_b), "train_per_class": {a: len(train_a), b: len(train_b)},
                     "steps": args.judge_steps, "seed": args.judge_seed, "params": sum(p.numel() for p in judge.parameters()),
                     "heldout": judged, "train": judge_accuracy(judge, train_a, train_b), "trained_on": "real training tiles only"},
           "goals": GOALS, "measures": {}}
    print(f"judge: {res['judge']['train_tiles']} real training tiles, held-out accuracy "
          f"{'n/a (no val/test tiles)' if judged is None else round(judged['accuracy'], 4)}", flush=True)
    out, strips = Path(args.out), {}
    out.parent.mkdir(parents=True, exist_ok=True)
    made: dict[str, dict] = {}
    for measure in args.measures:
        base = measure.removesuffix(MARGIN)
        if base not in made:
            made[base] = generate(pair, sources, base, args)
        gen = made[base] if base == measure else relabel_by_margin(pair, made[base], args)
        if base != measure:
            res["margin_calibration"] = pair.margin_calibration.to_dict()
        p = judge_p(judge, gen["images"].flatten(0, 1)).view_as(gen["labels"])
        entry = summarise(gen["labels"], p, gen["depths"], lpips_shares(lpips, gen["images"], sources, full), default_levels(args.num_levels))
        entry["overall"]["unet_evals_per_output"] = gen["evals"] / gen["labels"].numel()
        entry["overall"]["seconds"] = round(gen["seconds"], 1)
        entry["scatter"] = {"label": gen["labels"].flatten().tolist(), "judge_p": p.flatten().tolist()}
        res["measures"][measure] = entry
        strips[measure] = out.with_name(f"{out.name}_strip_{measure.replace('/', '_stride').replace(':', '_fine')}.png")
        write_strip(sources, gen, strips[measure], pair.classes)
    bootstrap_intervals(res)
    paper = res["measures"].get("paper", {}).get("overall", {}).get("spearman_label_judge")
    for measure, entry in res["measures"].items():
        entry["goals_met"] = goals(entry["overall"], paper, measure == "paper")
    res["files"] = {"strips": {m: repo_relative(str(p)) for m, p in strips.items()}, "plot": repo_relative(str(out.with_suffix(".png")))}
    res["seconds"] = round(time.time() - began, 1)
    write(res, out)
    return 0


def write_strip(sources: torch.Tensor, gen: dict, path: Path, classes) -> None:
    from progaug.strip import progressive_strip

    k = min(STRIP_SOURCES, len(sources))
    progressive_strip(to_model_range(sources[:k]), to_model_range(gen["images"][:k]), gen["labels"][:k], path, classes=tuple(classes))


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _ci(pair) -> str:
    return "" if pair is None else f"[{pair[0]:.3f}, {pair[1]:.3f}]"


def _mark(ok) -> str:
    return "n/a" if ok is None else "met" if ok else "NOT met"


def _band_lines(res: dict) -> list[str]:
    """The judged-A share by label threshold, beside the judge's own miss rate on held-out real B tiles."""
    held = res["judge"]["heldout"]
    floor = "n/a (no val/test tiles)" if held is None else f"{_fmt(1 - held['accuracy_b'])} of the held-out real {res['classes'][1]} tiles"
    head = " | ".join(f"labelled >= {t:g}: judged A (of)" for t in LABEL_BANDS)
    lines = ["", f"Judged A by how high the label is (the judge itself calls A {floor}):", "",
             f"| measure | {head} |", "| --- | " + "--- | " * len(LABEL_BANDS)]
    for m, e in res["measures"].items():
        bands = e["overall"].get("judged_a_by_label", {})
        cells = [f"{_fmt(b['judged_a'])} ({b['count']})" if (b := bands.get(f"{t:g}")) else "-" for t in LABEL_BANDS]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def render_markdown(res: dict) -> str:
    j = res["judge"]
    held = j["heldout"]
    lines = [f"# Do soft labels follow the image? ({res['classes'][0]} -> {res['classes'][1]}, {res['n']} {res['sources_split']} sources, "
             f"{res['levels']} levels, DDIM {res['steps']} steps{', bf16' if res['bf16'] else ''})", "",
             f"`{res['command']}` on {res['machine']} ({res['device']}), {res['seconds']} s.", "",
             f"Judge: a {j['params']}-parameter CNN trained {j['steps']} steps on {j['train_tiles']} real training tiles only; "
             f"held-out accuracy {'n/a' if held is None else _fmt(held['accuracy'])} "
             f"({'no val/test tiles' if held is None else str(held['tiles']) + ' real tiles'}), training accuracy {_fmt(j['train']['accuracy'])}.", "",
             "| measure | Spearman(label, judge p) | mean abs(label - judge p) | labelled >= 0.5 judged A | sources off the common depth list | "
             "LPIPS-share step ratio | U-Net evals / output |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for m, e in res["measures"].items():
        o, g = e["overall"], e["goals_met"]
        lines.append(f"| {m} | {_fmt(o['spearman_label_judge'])} ({_mark(g['spearman'])}) | {_fmt(o['mean_abs_label_minus_judge'])} | "
                     f"{_fmt(o['high_label_judged_a'])} of {o['high_label_count']} images ({_mark(g['high_label_judged_a'])}) | "
                     f"{_fmt(o['depth_lists_differ'])}, {o['distinct_depth_lists']} distinct ({_mark(g['depths_differ'])}) | "
                     f"{_fmt(o['lpips_step_ratio'], 2)} ({_mark(g['lpips_steps'])}) | {_fmt(o['unet_evals_per_output'], 1)} |")
    lines += _band_lines(res)
    if res.get("bootstrap"):
        lines += ["", f"95 % bootstrap intervals ({res['bootstrap']['draws']} draws over source tiles, the same draws for every measure):", "",
                  "| measure | Spearman [95 %] | minus paper's [95 %] | minus preview's [95 %] | labelled >= 0.5 judged A [95 %] | "
                  "minus paper's [95 %] | minus preview's [95 %] |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for m, e in res["measures"].items():
            o = e["overall"]
            shown = ["-" if d is None else _fmt(d["mean"]) + " " + _ci(d["ci95"])
                     for d in (o.get(f"{key}_minus_{other}") for key in ("spearman", "high_label_judged_a") for other in ("paper", "preview"))]
            lines.append(f"| {m} | {_fmt(o['spearman_label_judge'])} {_ci(o.get('spearman_ci95'))} | {shown[0]} | {shown[1]} | "
                         f"{_fmt(o['high_label_judged_a'])} {_ci(o.get('high_label_judged_a_ci95'))} | {shown[2]} | {shown[3]} |")
    strided = {m: e["overall"]["minus_stride_1"] for m, e in res["measures"].items() if "minus_stride_1" in e["overall"]}
    if strided:
        lines += ["", "Strided decodes against the same measure at stride 1 (paired over the same draws; the labels are "
                  "the same, the images differ):", "", "| measure | Spearman minus stride 1's [95 %] | labelled >= 0.5 judged A minus "
                  "stride 1's [95 %] |", "| --- | --- | --- |"]
        lines += [f"| {m} | {_fmt(d['spearman']['mean'])} {_ci(d['spearman']['ci95'])} | {_fmt(d['high_label_judged_a']['mean'])} "
                  f"{_ci(d['high_label_judged_a']['ci95'])} |" for m, d in strided.items()]
    lines += ["", "Goals: " + "; ".join(GOALS.values()) + ".", ""]
    for m, e in res["measures"].items():
        lines += [f"## {m}", "", "| level | label mean | label std | depth mean | judge p(B) mean | LPIPS share mean |",
                  "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r['level']:g} | {r['label_mean']:.3f} | {r['label_std']:.3f} | {r['depth_mean']:.2f} | {r['judge_p_mean']:.3f} | "
                  f"{r['lpips_share_mean']:.3f} |" for r in e["per_level"]]
        lines += ["", f"![strip]({Path(res['files']['strips'][m]).name})", ""]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res["measures"])
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 4), squeeze=False)
    for ax, m in zip(axes[0], names):
        s = res["measures"][m]["scatter"]
        ax.scatter(s["label"], s["judge_p"], s=8, alpha=0.5)
        ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel="soft label (share of B)", ylabel="judge p(B | image)",
               title=f"{m}: Spearman {_fmt(res['measures'][m]['overall']['spearman_label_judge'], 2)}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(res: dict, out: Path) -> None:
    write_report(res, out, render_markdown, plot)


if __name__ == "__main__":
    raise SystemExit(main())
