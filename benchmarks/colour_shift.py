"""Can a pair's models see colour? The check that found the first demo pair's wrong-colour samples.

At high noise ``x_t`` is almost all noise, so a good epsilon model returns almost ``x_t`` itself,
including its per-channel spatial mean (a uniform colour). If the network cannot see that mean, the
predicted clean image ``x0 = (x_t - sqrt(1 - a) eps) / sqrt(a)`` inherits the noise's colour times
``sqrt((1 - a) / a)`` (160 at t = 999), the x0 clip saturates it, and samples come out magenta,
green or blue. Two figures per model, each pair side by side in one run:

- **shift response**: output mean change / input mean change for a uniform colour shift of a random
  input at t = 999 (about 1 for a model that sees colour, about 0 for one that cannot);
- **eps channel-mean error**: RMS over images and channels of the spatial mean of
  ``eps_pred - eps`` on noised real tiles of the model's class, beside ``1 / side`` (the error of a
  model that ignores the noise's mean), and the mean |x0 colour error| it implies.

    python benchmarks/colour_shift.py --pair hgsc-demo --pair runs/old/hgsc-demo-legacy-9000

Writes ``benchmarks/results/colour_shift.{json,md}``. Seconds on a CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, command_line, load_splits, pair_sha256, pair_training, repo_relative
from progaug.data.tiles import to_model_range
from progaug.diffusion.schedule import training_alpha_bar
from progaug.hub import load_pair

TIMESTEPS = (999, 900, 600, 200)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", action="append", help="embedded pair name or pair folder; repeat to compare (default: hgsc-demo)")
    p.add_argument("--data", default="hgsc", help="'hgsc' or class folders (default: hgsc)")
    p.add_argument("--count", type=int, default=32, help="real tiles per class (default: 32)")
    p.add_argument("--seed", type=int, default=0, help="(default: 0)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "colour_shift"), help="path stem of the .json / .md")
    return p.parse_args(argv)


@torch.no_grad()
def shift_response(model, size: int, gen: torch.Generator) -> float:
    """Mean over channels of (output mean shift) / (input mean shift) at t = 999; ``(4, 3, side, side)`` input."""
    x = torch.randn(4, 3, size, size, generator=gen)
    shift = torch.tensor([0.2, -0.2, 0.1]).view(1, 3, 1, 1)
    t = torch.full((4,), 999)
    moved = (model(x + shift, t) - model(x, t)).mean((0, 2, 3))
    return float((moved / shift.flatten()).mean())


@torch.no_grad()
def channel_mean_error(model, x0: torch.Tensor, alpha_bar, gen: torch.Generator) -> dict[int, dict[str, float]]:
    """Per timestep: RMS spatial-mean error of the predicted noise and mean |x0 colour error|; ``x0`` in [-1, 1]."""
    out = {}
    for t in TIMESTEPS:
        a = float(alpha_bar[t])
        eps = torch.randn(x0.shape, generator=gen)
        xt = a**0.5 * x0 + (1 - a) ** 0.5 * eps
        pred = model(xt, torch.full((len(x0),), t)).float()
        x0_pred = (xt - (1 - a) ** 0.5 * pred) / a**0.5
        out[t] = {"eps_mean_rms": float((pred - eps).mean((2, 3)).pow(2).mean().sqrt()),
                  "x0_colour_error": float((x0_pred - x0).mean((2, 3)).abs().mean())}
    return out


def measure(name: str, data: str, count: int, seed: int) -> dict:
    pair = load_pair(name)
    splits = load_splits(data, pair.image_size)
    alpha_bar = training_alpha_bar(pair.diffusion)
    result = {"pair": repo_relative(name), "pair_sha256": pair_sha256(pair), "training": pair_training(pair), "models": {}}
    for role, model, cls in (("source", pair.source, pair.classes[0]), ("target", pair.target, pair.classes[1])):
        gen = torch.Generator().manual_seed(seed)
        x0 = to_model_range(splits["train"].of_class(cls).images[:count]).float()
        result["models"][role] = {
            "class": cls,
            "norm_group_channels": model.config.norm_group_channels,
            "shift_response": shift_response(model, pair.image_size, gen),
            "by_timestep": channel_mean_error(model, x0, alpha_bar, gen),
            "ignore_mean_floor": 1.0 / pair.image_size,
        }
    return result


def markdown(results: list[dict], command: str) -> str:
    lines = ["# Colour check: do the models see a uniform colour shift?", "", f"Produced by `{command}`.", "",
             "| pair | steps | model | GroupNorm channels/group (min) | shift response (ideal ~1) | "
             + " | ".join(f"eps mean err t={t}" for t in TIMESTEPS) + " | |x0 colour err| t=999 |",
             "| --- " * (6 + len(TIMESTEPS)) + "|"]
    for r in results:
        for role, m in r["models"].items():
            errs = " | ".join(f"{m['by_timestep'][t]['eps_mean_rms']:.4f}" for t in TIMESTEPS)
            lines.append(f"| {r['pair']} | {r['training'].get('steps_done', '?')} | {role} ({m['class']}) | "
                         f"{m['norm_group_channels']} | {m['shift_response']:.3f} | {errs} | "
                         f"{m['by_timestep'][999]['x0_colour_error']:.2f} |")
    floor = results[0]["models"]["source"]["ignore_mean_floor"]
    lines += ["", f"A model that ignores the noise's mean has an eps mean error of 1/side = {floor:.4f}; "
              "the x0 colour error at t = 999 is that error times sqrt((1 - a) / a) = 160."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    results = [measure(name, args.data, args.count, args.seed) for name in (args.pair or ["hgsc-demo"])]
    command = command_line("colour_shift.py", argv)
    text = markdown(results, command)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"command": command, "pair_sha256": results[0]["pair_sha256"], "results": results}, indent=1, default=str))
    out.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
