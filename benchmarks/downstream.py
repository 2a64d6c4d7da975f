"""Downstream classification, the paper's Table 2 on a label-scarce curve, under a converged and fair
protocol: does adding ADD images make a better classifier from a few labelled real tiles than the
augmentations pathology users already use?

The protocol (progaug/evaluation/protocol.py, docs/benchmarks.md) is the same for every arm, seed and N:
budget in epochs over the real tiles chosen at the plateau of a real-only validation learning curve (every
arm gets the same optimiser steps); generated images by per-draw replacement with a tuned probability p
(the old uniform concatenation kept as one arm); every tuned arm (p, Mixup/CutMix alpha, stain sigma) gets
the same tuning budget on the validation split; the test split is scored once per evaluation seed. One run
is one classifier (``--classifier cnn``, ``vit`` or ``probe``, the last a linear probe on frozen ImageNet features); the report opens with a sanity block (flips/rotations,
Mixup/CutMix and stain against real only at the largest N).

Arms: real; real, no flips (sanity); +stain; +Mixup/CutMix; +ADD-final; +ADD-Pro[paper];
+ADD-Pro[<default>]; +ADD-Pro[<default>] filtered (teacher CNN on the same real tiles, progaug.selection);
+ADD-Pro[<default>] uniform (the old protocol); +IDDPM-style; +ADD-Pro[<default>]+stain. Named with --arms:
any +ADD-Pro[...] form followed by +stain or +Mixup/CutMix (at that standard arm's tuned setting) and/or
" margin labels".

Generated images are made once for each class-A training tile some subset of the run uses (at N = 25, 142 of
288) and kept in ``benchmarks/cache/`` under the pair's sha256 and the tiles, so a second run with the same N and
seeds (the other classifier, more arms) only trains classifiers.

    python benchmarks/downstream.py --classifier cnn          # the CNN grid
    python benchmarks/downstream.py --classifier vit          # the ViT grid
    python benchmarks/downstream.py --quick                   # smoke run: a few minutes
    python benchmarks/downstream.py --data ROOT --pair PAIR   # your own classes (or: progaug evaluate)

Writes ``benchmarks/results/downstream_<classifier>.{json,md,png}`` after each N (``complete`` says whether
every N is in); JSON keys in docs/benchmarks.md. Finished trainings are logged beside them in
``downstream_<classifier>.runs.jsonl`` (committed with the results): a stopped run, started again with the
same command, skips them, in a later session too (the log names the data, pair and generated images it
belongs to, and the device kind when it is not the CPU; images regenerated on another CPU can differ in their
last bits, and their arms are then trained again rather than mixed with the old set's runs). Runs that split the arms between processes share one ``--log``; a last run with every arm then
writes the whole report from the log.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CACHE, ROOT, command_line, repo_relative, write_report
from progaug.cli_args import add_config_arguments, config_from_args
from progaug.evaluation.pipeline import EvaluationData, GenerationSettings, evaluate_pair
from progaug.evaluation.arms import all_arms, arm_named
from progaug.evaluation.protocol import ProtocolConfig, planned_runs
from progaug.evaluation.report import plot, render_markdown
from progaug.hub import load_pair
from progaug.runtime import RuntimeConfig, apply_runtime

QUICK = {"n": ("25",), "seeds": (0, 1), "tune_seeds": (100,), "curve_epochs": (2, 4), "p_grid": (0.1, 0.5), "mixup_grid": (0.5,),
         "stain_grid": (0.05,), "num_levels": 4, "steps": 10}
"""``--quick``: what it sets unless the flag is given explicitly."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", default="hgsc-demo", help="embedded pair name or pair folder (default: hgsc-demo)")
    p.add_argument("--data", default="hgsc", help="'hgsc' or ROOT with {train,val,test}/<class>/ (default: hgsc)")
    p.add_argument("--arms", nargs="+", default=None, help="arms to run (default: all; 'real' is always run, the paired differences need it)")
    p.add_argument("--quick", action="store_true", help="smoke run: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items())
                   + " (flags given explicitly win)")
    p.add_argument("--out", default=None, help="path stem of the outputs (default: benchmarks/results/downstream_<classifier>)")
    p.add_argument("--log", default=None, help="run log of finished trainings, shared by runs that split the arms (default: OUT.runs.jsonl)")
    add_config_arguments(p, ProtocolConfig)
    add_config_arguments(p, GenerationSettings)
    add_config_arguments(p, RuntimeConfig, exclude=("channels_last", "compile"))
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            if getattr(args, key) is None:
                setattr(args, key, list(value) if isinstance(value, tuple) else value)
    args.arms = list(all_arms()) if args.arms is None else ["real", *[a for a in args.arms if a != "real"]]
    for name in args.arms:
        try:
            arm_named(name)
        except ValueError as exc:
            p.error(f"--arms: {exc}")
    try:
        # float32 classifiers unless asked: every committed result is float32, and its command must find its runs in the log
        args.protocol = config_from_args(ProtocolConfig, args, base=ProtocolConfig(train_channels_last=False, train_bf16=False))
        args.generation = config_from_args(GenerationSettings, args, base=GenerationSettings(cache_dir=str(CACHE)))
    except ValueError as exc:
        p.error(str(exc))
    if args.out is None:
        args.out = str(ROOT / "benchmarks" / "results" / f"downstream_{args.protocol.classifier}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    applied = apply_runtime(config_from_args(RuntimeConfig, args), args.protocol.device)
    pair = load_pair(args.pair, device=args.protocol.device)
    data = EvaluationData.load(args.data, pair.image_size)
    arms = [arm_named(name) for name in args.arms]

    total, done = [planned_runs(args.protocol, arms)], [0]

    def progress(kind: str, k: int, text: str) -> None:
        if kind == "plan":
            total[0] += k
            print(text, flush=True)
        if kind == "train":
            done[0] += k
            print(f"[{done[0]}/{total[0]}] {text}", flush=True)

    def report(res: dict) -> dict:
        res.update(pair=repo_relative(str(pair.path) if pair.path else args.pair), command=command_line("downstream.py", argv),
                   threads=applied["threads"], args={k: repo_relative(v) for k, v in vars(args).items() if k not in ("protocol", "generation")})
        write_report(res, Path(args.out), render_markdown, plot)
        return res

    log = Path(args.log) if args.log else Path(args.out).with_suffix(".runs.jsonl")
    try:
        res = evaluate_pair(pair, data, arms, args.protocol, args.generation, progress=progress, log=log, on_partial=report)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    report(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
