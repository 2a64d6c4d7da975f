"""Evidence that a pair learned its classes: sample grids, FID per class, DDIM reconstruction PSNR.

Uses the bundled HGSC demo tiles (or ``--data DIR`` class folders) and the offline metric weights
(``--metric-weights DIR``, e.g. ``../shared/weights``; this benchmark says so: it needs them).

    python benchmarks/pair_quality.py --pair hgsc-demo --metric-weights ../shared/weights

Writes ``benchmarks/results/pair_quality.json``, ``docs/pair_quality.md`` and
``docs/img/pair_samples.png`` (rows: real A, model A samples, real B, model B samples).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, command_line, heldout, load_splits, pair_sha256, repo_relative
from progaug.data.tiles import to_model_range
from progaug.diffusion import DDIMSchedule, invert, sample
from progaug.hub import load_pair
from progaug.metrics import frechet_distance, inception_features, load_inception, psnr
from progaug.runtime import autocast, autocast_dtype, machine_description


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", default="hgsc-demo", help="embedded pair name or pair folder (default: hgsc-demo)")
    p.add_argument("--data", default="hgsc", help="'hgsc' or class folders root/<class>/*.png (default: hgsc)")
    p.add_argument("--metric-weights", default=None, help="folder of the metric safetensors (or $PROGAUG_METRIC_WEIGHTS)")
    p.add_argument("--n", type=int, default=500, help="unconditional samples per class for FID (default: 500)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps of the samples (default: 50)")
    p.add_argument("--recon-steps", type=int, nargs="+", default=[25, 50, 100, 250], help="(default: 25 50 100 250)")
    p.add_argument("--recon-count", type=int, default=16, help="held-out tiles per class for PSNR (default: 16)")
    p.add_argument("--batch-size", type=int, default=100, help="(default: 100)")
    p.add_argument("--device", default="cpu", help="(default: cpu)")
    p.add_argument("--bf16", action="store_true", help="draw the unconditional samples under bf16 autocast (reconstructions stay float32)")
    p.add_argument("--seed", type=int, default=0, help="(default: 0)")
    p.add_argument("--out-json", default=str(ROOT / "benchmarks" / "results" / "pair_quality.json"))
    p.add_argument("--out-md", default=str(ROOT / "docs" / "pair_quality.md"))
    p.add_argument("--out-png", default=str(ROOT / "docs" / "img" / "pair_samples.png"))
    return p.parse_args(argv)


def real_tiles(data: str, size: int, classes: tuple[str, str]) -> dict[str, dict[str, torch.Tensor]]:
    """``{class: {"train": uint8, "heldout": uint8}}``; data without val / test splits uses its training
    tiles in both roles (the FID floor is then 0 by construction)."""
    splits = load_splits(data, size)
    out = {}
    for c in classes:
        train = splits["train"].of_class(c).images
        held = heldout(splits, c)
        out[c] = {"train": train, "heldout": train if held is None else held}
    return out


@torch.no_grad()
def unconditional(model, n: int, steps: int, args, diffusion) -> torch.Tensor:
    sched = DDIMSchedule.from_config(diffusion, steps)
    size = model.config.image_size
    gen = torch.Generator().manual_seed(args.seed)
    out = []
    for start in range(0, n, args.batch_size):
        noise = torch.randn(min(args.batch_size, n - start), 3, size, size, generator=gen).to(args.device)
        with autocast(args.device, autocast_dtype(args.bf16)):
            out.append(sample(model, noise, sched, clip=diffusion.clip_denoised).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def reconstruction_psnr(model, x: torch.Tensor, steps: int, args, diffusion) -> float:
    sched = DDIMSchedule.from_config(diffusion, steps)
    x = x.to(args.device)
    with torch.no_grad():
        back = sample(model, invert(model, x, sched, clip=diffusion.clip_denoised), sched, clip=diffusion.clip_denoised)
    return float(psnr(back.float(), x).mean())


def save_grid(rows: list[torch.Tensor], path: Path) -> None:
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.cat(rows).clamp(-1, 1) * 0.5 + 0.5, str(path), nrow=rows[0].shape[0], padding=2, pad_value=1.0)


def main(argv=None) -> int:
    args = parse_args(argv)
    began = time.time()
    pair = load_pair(args.pair, device=args.device)
    diffusion = pair.diffusion
    classes = pair.classes
    real = real_tiles(args.data, pair.image_size, classes)
    net = load_inception(args.metric_weights, device=args.device)
    result = {"pair": repo_relative(str(pair.path)), "pair_sha256": pair_sha256(pair), "card_training": pair.card.get("training", {}), "classes": list(classes),
              "n_samples": args.n, "sample_steps": args.steps, "bf16": args.bf16, "machine": machine_description(args.device),
              "device": args.device, "torch_threads": torch.get_num_threads(), "per_class": {}}
    grid_rows, train_features = [], {}
    for role, cls in zip(("source", "target"), classes):
        model = getattr(pair, role)
        t0 = time.time()
        fake = unconditional(model, args.n, args.steps, args, diffusion)
        t_sample = time.time() - t0
        f_fake = inception_features(net, fake)
        f_train = train_features[cls] = inception_features(net, to_model_range(real[cls]["train"]))
        f_held = inception_features(net, to_model_range(real[cls]["heldout"]))
        pick = torch.linspace(0, len(real[cls]["heldout"]) - 1, args.recon_count).round().long()
        held = to_model_range(real[cls]["heldout"][pick])
        recon = {str(s): reconstruction_psnr(model, held, s, args, diffusion) for s in args.recon_steps}
        entry = {
            "model_attention": model.config.attention,
            "fid_samples_vs_train": frechet_distance(f_fake["pool"], f_train["pool"]),
            "fid_heldout_real_vs_train": frechet_distance(f_held["pool"], f_train["pool"]),
            "n_train_real": len(real[cls]["train"]), "n_heldout_real": len(real[cls]["heldout"]),
            "recon_psnr_db": recon, "recon_tiles": args.recon_count, "sample_seconds": round(t_sample, 1),
        }
        result["per_class"][cls] = entry
        print(f"{cls} ({role}, {entry['model_attention']}): FID samples/train {entry['fid_samples_vs_train']:.1f}, "
              f"held-out real/train {entry['fid_heldout_real_vs_train']:.1f}, PSNR {recon}", flush=True)
        show = torch.linspace(0, len(real[cls]["train"]) - 1, 10).round().long()
        grid_rows += [to_model_range(real[cls]["train"][show]), fake[:10]]
    a, b = classes
    result["fid_real_class_a_vs_class_b"] = frechet_distance(train_features[a]["pool"], train_features[b]["pool"])
    result["seconds"] = round(time.time() - began, 1)
    result["command"] = command_line("pair_quality.py", argv)
    Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out_json).write_text(json.dumps(result, indent=2) + "\n")
    save_grid(grid_rows, Path(args.out_png))
    Path(args.out_md).write_text(render_markdown(result, Path(args.out_png), Path(args.out_md)))
    print(f"wrote {args.out_json}, {args.out_md}, {args.out_png} in {result['seconds']} s")
    return 0


def render_markdown(r: dict, png: Path, md: Path) -> str:
    import os

    t = r["card_training"]
    lines = [
        "# Does the pair learn its classes?",
        "",
        f"Pair `{r['pair']}`: {t.get('steps_done', '?')} training steps per model at batch {t.get('batch_size', '?')}, "
        f"{t.get('wall_time_s', '?')} s of training on `{t.get('device', '?')}` (from its card).",
        f"Produced by `{r['command']}` on {r['machine']} ({r['device']}, {r['torch_threads']} torch threads), {r['seconds']} s.",
        "",
        f"![samples]({os.path.relpath(png, md.parent)})",
        "",
        "Rows: real training tiles of class A, unconditional samples of model A, real tiles of B, samples of model B.",
        "",
        f"## FID ({r['n_samples']} samples per class, DDIM {r['sample_steps']} steps, against the training tiles of that class)",
        "",
        "| class | model | FID samples vs train | FID held-out real vs train (floor at these set sizes) |",
        "| --- | --- | --- | --- |",
    ]
    for cls, e in r["per_class"].items():
        lines.append(f"| {cls} | {e['model_attention']} | {e['fid_samples_vs_train']:.1f} | {e['fid_heldout_real_vs_train']:.1f} "
                     f"({e['n_heldout_real']} vs {e['n_train_real']} tiles) |")
    lines += ["", f"Scale reference: FID between the real training tiles of the two classes = {r['fid_real_class_a_vs_class_b']:.1f}.", "",
              "## DDIM invert -> sample reconstruction PSNR (held-out tiles, same model both ways)", "",
              "| class | " + " | ".join(f"S = {s}" for s in next(iter(r["per_class"].values()))["recon_psnr_db"]) + " |",
              "| --- |" + " --- |" * len(next(iter(r["per_class"].values()))["recon_psnr_db"])]
    for cls, e in r["per_class"].items():
        lines.append(f"| {cls} | " + " | ".join(f"{v:.1f} dB" for v in e["recon_psnr_db"].values()) + " |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
