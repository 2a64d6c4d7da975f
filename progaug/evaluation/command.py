"""``progaug evaluate``: the downstream protocol on a user's own classes and pair, with progress bars and
the report (``OUT/report.{json,md,png}``).

    progaug evaluate --data ROOT --pair PAIR            # ROOT/{train,val,test}/<class>/ images
    progaug evaluate --data ROOT --pair PAIR --classifier vit --arms all

Finished trainings are logged in ``OUT/runs.jsonl`` and generated sets kept in ``OUT/generated/``: the same
command again after a stop resumes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from progaug.cli_args import add_config_arguments, config_from_args
from progaug.labels import DEFAULT_MEASURE

__all__ = ["DEFAULT_ARMS", "MARGIN_ARM", "add_evaluate", "default_arms", "run_evaluate"]

DEFAULT_ARMS = ("real", "+stain", "+Mixup/CutMix", "+ADD-final", f"+ADD-Pro[{DEFAULT_MEASURE}]", f"+ADD-Pro[{DEFAULT_MEASURE}] filtered")
"""What a user checks first: the standard augmentations and the ways of adding the pair's images."""

MARGIN_ARM = f"+ADD-Pro[{DEFAULT_MEASURE}] margin labels"
"""Added to :data:`DEFAULT_ARMS` for a pair that carries a margin calibration: the images that ``progaug
precompute`` makes by default with such a pair (``labels="auto"``)."""


def default_arms(pair) -> list[str]:
    """:data:`DEFAULT_ARMS`, plus :data:`MARGIN_ARM` where ``pair`` carries a margin calibration."""
    return [*DEFAULT_ARMS, *([MARGIN_ARM] if getattr(pair, "margin_calibration", None) is not None else [])]


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    """Register ``progaug evaluate``."""
    from progaug.evaluation.pipeline import GenerationSettings
    from progaug.evaluation.arms import all_arms
    from progaug.evaluation.protocol import ProtocolConfig
    from progaug.runtime import RuntimeConfig

    p = sub.add_parser("evaluate", help="does the pair's augmentation help a classifier of your classes? (the downstream protocol)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="hgsc", help="'hgsc' (the demo split) or ROOT with {train,val,test}/<class>/ images (default: hgsc)")
    p.add_argument("--pair", default="hgsc-demo", help="registry name, pair folder or URL (default: hgsc-demo)")
    p.add_argument("--arms", nargs="+", default=None,
                   help=f"arms to run, or 'all' (default: {' '.join(repr(a) for a in DEFAULT_ARMS)}, and {MARGIN_ARM!r} where the pair "
                        f"carries a margin calibration); the arms are {list(all_arms())}")
    p.add_argument("--out", default="progaug-evaluation", help="output folder: report.{json,md,png}, runs.jsonl, generated/ (default: %(default)s)")
    add_config_arguments(p, ProtocolConfig)
    add_config_arguments(p, GenerationSettings)
    add_config_arguments(p, RuntimeConfig, exclude=("channels_last", "compile"))
    p.set_defaults(func=run_evaluate)


def _arms(names: list[str]):
    from progaug.evaluation.arms import all_arms, arm_named

    if names == ["all"]:
        return list(all_arms().values())
    try:
        return [arm_named(a) for a in dict.fromkeys(["real", *names])]
    except ValueError as exc:
        raise SystemExit(f"progaug: error: --arms: {exc}") from None


def _tiles_to_generate(splits: dict, a_class: str, config, arms) -> int:
    """Source tiles the generation bar will count: every needed class-A tile, once per measure."""
    from progaug.evaluation.protocol import needed_positions

    train = splits.get("train")
    if train is None or a_class not in train.classes:
        return 0  # evaluate_pair names what is missing
    measures = {a.measure for a in arms if a.generated == "pro"} or ({DEFAULT_MEASURE} if any(a.generated == "final" for a in arms) else set())
    tiles = len(needed_positions(train, a_class, config))
    return len(measures) * tiles


def run_evaluate(args: argparse.Namespace) -> int:
    """Run the protocol and write the report; one line per error (rc 2)."""
    from tqdm import tqdm

    from progaug.evaluation.pipeline import EvaluationData, GenerationSettings, evaluate_pair, leak
    from progaug.evaluation.protocol import ProtocolConfig, planned_runs
    from progaug.evaluation.report import write_report
    from progaug.hub import load_pair
    from progaug.runtime import RuntimeConfig, apply_runtime, command_line

    try:
        config = config_from_args(ProtocolConfig, args)
        settings = config_from_args(GenerationSettings, args, base=GenerationSettings(cache_dir=str(Path(args.out) / "generated")))
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"progaug: error: {exc}") from None
    arms = None if args.arms is None else _arms(args.arms)
    apply_runtime(config_from_args(RuntimeConfig, args), config.device)
    pair = load_pair(args.pair, device=config.device)
    arms = _arms(default_arms(pair)) if arms is None else arms
    data = EvaluationData.load(args.data, pair.image_size)
    contamination = leak(pair, data.name, None, data.splits)
    if contamination.startswith("CONTAMINATED"):  # before hours of training, not only in the report's leak line
        print(f"progaug: warning: {contamination}", file=sys.stderr)
    out = Path(args.out)
    bars = {"generate": tqdm(total=_tiles_to_generate(data.splits, pair.classes[0], config, arms), desc="generating (source tiles)", unit="tile"),
            "train": tqdm(total=planned_runs(config, arms), desc="training classifiers", unit="run")}

    def progress(kind: str, k: int, text: str) -> None:
        if kind == "plan":  # a budget doubling: more trainings than planned
            bars["train"].total += k
            bars["train"].refresh()
            return
        bars[kind].update(k)
        bars[kind].set_postfix_str(text[:60], refresh=False)

    try:
        res = evaluate_pair(pair, data, arms, config, settings, progress=progress, log=out / "runs.jsonl",
                            on_partial=lambda partial: write_report(partial, out / "report"))
    except ValueError as exc:
        raise SystemExit(f"progaug: error: {exc}") from None
    finally:
        for bar in bars.values():
            bar.close()
    argv = getattr(args, "argv", None)
    res["command"] = command_line(["progaug", *(sys.argv[1:] if argv is None else argv)])
    write_report(res, out / "report")
    print(f"report: {out / 'report.md'}")
    return 0
