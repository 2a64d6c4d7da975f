"""Seconds per classifier training of the evaluation protocol under its layout and precision settings, side by
side in one process: float32 channels-first (the protocol's default), ``--train-channels-last``,
``--train-bf16`` and both (``TrainSpec.channels_last`` / ``bf16``).

The same real training tiles (N per class, one seed's subset), the same seed and optimiser steps for every
setting; the settings take turns, ``--rounds`` times, so that a slow spell of a shared machine hits them alike.
Reported per setting: median seconds per training, the speed-up over float32, and the validation accuracy each
reached (the same training up to float rounding; whether the protocol's *verdicts* hold under a setting is
measured by running ``benchmarks/downstream.py`` with it, ``docs/benchmarks.md``).

    python benchmarks/train_speed.py --threads 1                    # CNN, N = 100 per class, 20 epochs, 3 rounds

Writes ``benchmarks/results/train_speed.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import bar_plot, command_line, finish_args, open_benchmark, write_report
from progaug.evaluation.classifiers import CLASSIFIERS
from progaug.evaluation.protocol import LR, real_subset
from progaug.evaluation.training import LabelledImages, Recipe, TrainSpec, train_classifier
from progaug.runtime import machine_description, native_bf16

SETTINGS = {"float32": {}, "channels-last": {"channels_last": True}, "bf16": {"bf16": True},
            "bf16 + channels-last": {"channels_last": True, "bf16": True}}
"""The settings compared, by report name: ``TrainSpec`` fields."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", default="hgsc-demo", help="embedded pair name or pair folder: only its image size is used (default: hgsc-demo)")
    p.add_argument("--data", default="hgsc", help="'hgsc' or ROOT with {train,val,test}/<class>/ (default: hgsc)")
    p.add_argument("--classifier", choices=CLASSIFIERS, default="cnn", help="(default: cnn)")
    p.add_argument("--n", type=int, default=100, help="real training tiles per class (default: 100)")
    p.add_argument("--epochs", type=int, default=20, help="epochs per training (default: 20)")
    p.add_argument("--rounds", type=int, default=3, help="trainings per setting, taking turns (default: 3)")
    p.add_argument("--seed", type=int, default=0, help="subset and training seed (default: 0)")
    return finish_args(p, argv, "train_speed", ("n", "epochs", "rounds"))


def measure(real: LabelledImages, val, args) -> dict:
    """Seconds and validation accuracy of every setting, ``args.rounds`` trainings each, taking turns."""
    base = TrainSpec(classifier=args.classifier, epochs=args.epochs, lr=LR[args.classifier])
    seconds = {name: [] for name in SETTINGS}
    accuracy = {}
    for r in range(args.rounds):
        for name, fields in SETTINGS.items():
            began = time.perf_counter()
            _, acc = train_classifier(real, None, Recipe(), dataclasses.replace(base, **fields), args.seed, val, args.device)
            seconds[name].append(time.perf_counter() - began)
            accuracy[name] = acc
            print(f"round {r + 1}/{args.rounds} {name}: {seconds[name][-1]:.1f} s, validation accuracy {acc:.3f}", flush=True)
    ref = statistics.median(seconds["float32"])
    return {name: {"seconds": s, "median_s": statistics.median(s), "speedup": ref / statistics.median(s),
                   "val_accuracy": accuracy[name], **SETTINGS[name]} for name, s in seconds.items()}


def render_markdown(res: dict) -> str:
    lines = [f"# Classifier training speed: {res['classifier']}, N = {res['n']} per class, {res['epochs']} epochs", "",
             f"`{res['command']}` on {res['machine']}, {res['threads']} threads, native bf16: {res['native_bf16']}; "
             f"{res['rounds']} trainings per setting, taking turns.", "",
             "| setting | s per training (median) | speed-up over float32 | validation accuracy | seconds of each round |",
             "| --- | --- | --- | --- | --- |"]
    for name, s in res["settings"].items():
        lines.append(f"| {name} | {s['median_s']:.1f} | {s['speedup']:.2f}x | {100 * s['val_accuracy']:.1f} % | "
                     f"{', '.join(f'{v:.1f}' for v in s['seconds'])} |")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    names = list(res["settings"])
    bar_plot(path, names, {"speed-up": ([res["settings"][n]["speedup"] for n in names], None)}, ylabel="speed-up over float32",
             title=f"{res['classifier']} training, N = {res['n']} per class, {res['epochs']} epochs")


def main(argv=None) -> int:
    args = parse_args(argv)
    applied, _, splits = open_benchmark(args)
    real, _ = real_subset(splits["train"], args.seed, args.n)
    val = (splits["val"].images, splits["val"].labels)
    res = {"command": command_line("train_speed.py", argv), "machine": machine_description(args.device),
           "threads": applied["threads"], "native_bf16": native_bf16(args.device), "classifier": args.classifier, "n": args.n,
           "epochs": args.epochs, "rounds": args.rounds, "seed": args.seed, "real_images": len(real),
           "uses_pair": False}  # real tiles only: no generated image, so no pair whose figures these could be
    res["settings"] = measure(real, val, args)
    write_report(res, Path(args.out), render_markdown, plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
