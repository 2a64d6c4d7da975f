"""Reference schedule (the paper's code) vs progaug's schedule, same weights and inputs, one process.

(a) reference: per image at batch 1 — an S_ref-step inversion with the frequency measured after every
    step, the inversion again in segments up to each chosen depth, one decode per depth;
(b) progaug: one inversion per image keeping the states, one batched FFT, all branches of all images
    decoded in shared batches (``generate_progressive`` with the reference's ``measure="paper"``), at
    S = S_ref and at S = 50;
(c) progaug's math one image at a time, every U-Net call on one row, at S = 50 (the batching gain alone).

Execution settings (``--threads``, ``--channels-last``, ``--compile``, ``--malloc-tuning``, ``--bf16``)
apply to every schedule alike.

    python benchmarks/speed.py --quick          # CPU, about 3 minutes (writes speed_quick.*)
    python benchmarks/speed.py --images 8 --device cuda

Prints and writes ``benchmarks/results/speed.json``, ``benchmarks/results/speed.md`` and
``benchmarks/results/speed.png``. Keys of the JSON are documented in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, command_line, load_splits, pair_sha256, pair_training
from progaug.cli_args import add_config_arguments, config_from_args
from progaug.data.tiles import to_model_range
from progaug.diffusion import DDIMSchedule, ddim_step, sample
from progaug.frequency import adaptive_depths, default_levels, highpass_amplitude, soft_labels
from progaug.generator import GenerationConfig, generate_progressive
from progaug.hub import load_pair
from progaug.metrics import psnr
from progaug.runtime import apply_runtime, auto_max_batch, autocast, autocast_dtype, machine_description, prepare_model, RuntimeConfig



class Counted:
    """Counts U-Net evaluations (rows) of a model."""

    def __init__(self, model) -> None:
        self.model, self.rows, self.config = model, 0, model.config

    def __call__(self, x, t):
        self.rows += x.shape[0]
        return self.model(x, t)


class PeakMemory:
    """Memory a block needs, MiB: on CUDA the peak allocated memory; on CPU the growth of the resident set
    above its level at the start of the block (sampled every 5 ms; freed memory that is reused hides)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak, self._stop = device, 0.0, threading.Event()

    @staticmethod
    def _rss() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.005)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak = self._start = self._rss()
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak -= self._start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def reference_schedule(source, target, x: torch.Tensor, levels: torch.Tensor, schedule: DDIMSchedule, clip: bool):
    """The paper's code's schedule for one image ``(1, 3, S, S)``: returns ``(L, 3, S, S)``, labels, depths."""
    amplitudes, state = [highpass_amplitude(x)], x
    for k in range(schedule.num_steps):  # full inversion, measured after every step at batch 1
        state = _move(source, state, schedule, k, k + 1, clip)
        amplitudes.append(highpass_amplitude(state))
    labels = soft_labels(torch.stack(amplitudes, dim=-1))
    depths = adaptive_depths(labels, levels)[0].tolist()
    latents, state, at = [], x, 0
    for d in depths:  # the inversion again, in segments up to each chosen depth
        state = _move(source, state, schedule, at, d, clip)
        latents.append(state)
        at = d
    outs = [sample(target, lat.clone(), schedule, start=d, clip=clip) for lat, d in zip(latents, depths)]
    return torch.cat(outs), labels[0, depths], torch.tensor(depths)


def _move(model, x, schedule: DDIMSchedule, start: int, stop: int, clip: bool) -> torch.Tensor:
    for k in range(start, stop):
        x = ddim_step(model, x, timestep=int(schedule.timesteps[k]), alpha_bar_from=float(schedule.alpha_bar[k]),
                      alpha_bar_to=float(schedule.alpha_bar[k + 1]), clip=clip)
    return x


def timed(fn, device):
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", default="hgsc-demo", help="(default: hgsc-demo)")
    p.add_argument("--data", default="hgsc", help="'hgsc' (demo test tiles) or class folders, ROOT/{train,val,test}/<class>/ or ROOT/<class>/ (default: hgsc)")
    p.add_argument("--images", type=int, default=4, help="source images (default: 4)")
    p.add_argument("--num-levels", type=int, default=10, help="(default: 10)")
    p.add_argument("--ref-steps", type=int, default=1000, help="steps of the reference schedule (default: 1000)")
    p.add_argument("--steps", type=int, default=50, help="progaug's respaced steps (default: 50)")
    p.add_argument("--max-batch", default="auto", help="rows per U-Net call, or 'auto' (default: auto: 32 on CPU, memory-sized on CUDA)")
    p.add_argument("--bf16", action="store_true", help="run the U-Nets under bf16 autocast (all schedules)")
    p.add_argument("--device", default="cpu", help="(default: cpu)")
    p.add_argument("--metric-weights", default=None, help="folder of the LPIPS weights (optional)")
    p.add_argument("--quick", action="store_true", help="2 images, 5 levels, reference at 500 steps: about 3 min on a 2-core CPU")
    p.add_argument("--out", default=None, help="output path without suffix (default: benchmarks/results/speed, or speed_quick with --quick)")
    add_config_arguments(p, RuntimeConfig)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.images, args.num_levels, args.ref_steps = 2, 5, 500
    args.out = args.out or str(ROOT / "benchmarks" / "results" / ("speed_quick" if args.quick else "speed"))
    device = torch.device(args.device)
    runtime = config_from_args(RuntimeConfig, args)
    applied = apply_runtime(runtime, device)
    pair = load_pair(args.pair, device=device)
    dtype = autocast_dtype(args.bf16)
    models = prepare_model(pair.source, runtime), prepare_model(pair.target, runtime)
    max_batch = auto_max_batch(pair.source, pair.image_size, device, autocast_dtype=dtype) if args.max_batch == "auto" else int(args.max_batch)
    diffusion, clip = pair.diffusion, pair.diffusion.clip_denoised
    splits = load_splits(args.data, pair.image_size)
    tiles = splits["test" if "test" in splits else "train"].of_class(pair.classes[0])
    pick = torch.linspace(0, len(tiles) - 1, args.images).round().long()
    x = to_model_range(tiles.images[pick]).to(device)
    levels = default_levels(args.num_levels)
    outputs = args.images * args.num_levels
    res = {"machine": machine_description(args.device), "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(), "pair_training": pair_training(pair), "pair_sha256": pair_sha256(pair),
           "images": args.images, "levels": args.num_levels, "outputs": outputs, "ref_steps": args.ref_steps, "steps": args.steps,
           "max_batch": max_batch, "bf16": args.bf16, "runtime": runtime.to_dict(), "applied": applied, "paramsA": sum(p.numel() for p in pair.source.parameters()),
           "image_size": pair.image_size, "command": command_line("speed.py", argv)}

    def run_reference():
        src, tgt = Counted(models[0]), Counted(models[1])
        sched = DDIMSchedule.from_config(diffusion, args.ref_steps)
        with PeakMemory(device) as mem, autocast(device, dtype):
            parts, secs = timed(lambda: [reference_schedule(src, tgt, x[i : i + 1], levels, sched, clip) for i in range(args.images)], device)
        imgs = torch.stack([p[0] for p in parts])
        labels = torch.stack([p[1] for p in parts])
        depths = torch.stack([p[2] for p in parts])
        return imgs, labels, depths, {"evals": src.rows + tgt.rows, "seconds": secs, "peak_mib": mem.peak}

    def run_progaug(steps, batched=True, autocast_dtype=dtype):
        src, tgt = Counted(models[0]), Counted(models[1])
        config = GenerationConfig(steps=steps, measure="paper", bf16=autocast_dtype is not None)  # the reference's measure
        call = (lambda: generate_progressive(src, tgt, x, levels, dataclasses.replace(config, max_batch=max_batch), diffusion=diffusion)) \
            if batched else (lambda: [generate_progressive(src, tgt, x[i : i + 1], levels, dataclasses.replace(config, max_batch=1),
                                                           diffusion=diffusion) for i in range(args.images)])
        with PeakMemory(device) as mem:
            r, secs = timed(call, device)
        if not batched:
            imgs = torch.stack([q.images[0] for q in r])
            labels = torch.stack([q.soft_labels[0] for q in r])
            depths = torch.stack([q.depths[0] for q in r])
        else:
            imgs, labels, depths = r.images, r.soft_labels, r.depths
        return imgs, labels, depths, {"evals": src.rows + tgt.rows, "seconds": secs, "peak_mib": mem.peak}

    ref_imgs, ref_labels, ref_depths, ref = run_reference()
    same_imgs, same_labels, same_depths, same = run_progaug(args.ref_steps)
    fast_imgs, fast_labels, fast_depths, fast = run_progaug(args.steps)
    _, _, _, loop = run_progaug(args.steps, batched=False)
    for name, m in (("reference", ref), ("progaug_same_steps", same), ("progaug", fast), ("progaug_one_at_a_time", loop)):
        m["evals_per_output"] = m["evals"] / outputs
        m["seconds_per_output"] = m["seconds"] / outputs
        res[name] = m
    res["ratios"] = {
        "evals_reference_over_progaug_same_steps": ref["evals"] / same["evals"],
        "seconds_reference_over_progaug_same_steps": ref["seconds"] / same["seconds"],
        "evals_reference_over_progaug": ref["evals"] / fast["evals"],
        "seconds_reference_over_progaug": ref["seconds"] / fast["seconds"],
        "throughput_batched_over_one_at_a_time": loop["seconds"] / fast["seconds"],
    }
    res["same_steps_agreement"] = {
        "depths_identical_fraction": float((ref_depths == same_depths.cpu()).float().mean()),
        "max_abs_image_difference": float((ref_imgs.reshape(same_imgs.shape).cpu() - same_imgs.cpu()).abs().max()),
        "max_label_difference": float((ref_labels.cpu() - same_labels.cpu()).abs().max()),
    }
    fidelity = {"psnr_db_steps_vs_ref_steps": float(psnr(fast_imgs.flatten(0, 1), same_imgs.flatten(0, 1)).mean()),
                "mean_abs_soft_label_difference": float((fast_labels - same_labels).abs().mean()),
                "mean_abs_level_error_steps": float((fast_labels.cpu() - levels.float()).abs().mean()),
                "mean_abs_level_error_ref_steps": float((same_labels.cpu() - levels.float()).abs().mean())}
    if dtype is None:  # what bf16 autocast changes, side by side with the float32 run at `steps`
        bf_imgs, bf_labels, bf_depths, bf = run_progaug(args.steps, autocast_dtype=torch.bfloat16)
        res["bf16_vs_float32"] = {
            "seconds_ratio_float32_over_bf16": fast["seconds"] / bf["seconds"],
            "psnr_db": float(psnr(bf_imgs.flatten(0, 1), fast_imgs.flatten(0, 1)).mean()),
            "mean_abs_soft_label_difference": float((bf_labels - fast_labels).abs().mean()),
            "depths_identical_fraction": float((bf_depths == fast_depths).float().mean()),
        }
    if args.metric_weights:
        from progaug.metrics import load_lpips

        lp = load_lpips(args.metric_weights, device=device)
        fidelity["lpips_steps_vs_ref_steps"] = float(lp(fast_imgs.flatten(0, 1).to(device), same_imgs.flatten(0, 1).to(device)).mean())
    res["fidelity"] = fidelity
    report(res, Path(args.out))
    return 0


def report(res: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    rows = [("reference (paper's code)", res["reference"]), (f"progaug, S = {res['ref_steps']}", res["progaug_same_steps"]),
            (f"progaug, S = {res['steps']}", res["progaug"]), (f"progaug, S = {res['steps']}, one image at a time, one row per call", res["progaug_one_at_a_time"])]
    lines = [f"# Speed: reference schedule vs progaug ({res['device']}, {res['machine']}, {res['threads']} threads, "
             f"{'bf16' if res['bf16'] else 'float32'}, {res['max_batch']} rows per call)", "",
             f"`{res['command']}` — {res['images']} source images x {res['levels']} levels = {res['outputs']} outputs, "
             f"{res['image_size']} px, U-Net A {res['paramsA'] / 1e6:.2f} M parameters.", "",
             "| schedule | U-Net evals / output | s / output | memory (MiB, see docs) |", "| --- | --- | --- | --- |"]
    lines += [f"| {n} | {m['evals_per_output']:.0f} | {m['seconds_per_output']:.3f} | {m['peak_mib']:.0f} |" for n, m in rows]
    lines += ["", "| ratio | value |", "| --- | --- |"] + [f"| {k} | {v:.2f} |" for k, v in res["ratios"].items()]
    lines += ["", "| agreement / fidelity | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.4g} |" for k, v in {**res["same_steps_agreement"], **res["fidelity"]}.items()]
    if "bf16_vs_float32" in res:
        lines += ["", f"| bf16 autocast vs float32 at S = {res['steps']} | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4g} |" for k, v in res["bf16_vs_float32"].items()]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    names = ["reference", f"S={res['ref_steps']}", f"S={res['steps']}", f"S={res['steps']} 1-by-1"]
    for ax, key, title in ((axes[0], "evals_per_output", "U-Net evaluations per output"), (axes[1], "seconds_per_output", "seconds per output")):
        ax.bar(names, [m[key] for _, m in rows], color=["grey", "tab:blue", "tab:green", "tab:olive"])
        ax.set_yscale("log")
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
