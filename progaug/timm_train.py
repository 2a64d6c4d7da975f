"""Run timm's ``train.py`` on progaug data: ``python -m progaug.timm_train path/to/train.py ARGS``.

``ARGS`` are train.py's own, with ``--dataset progaug/CACHE_DIR`` (a folder from ``progaug precompute``)
and ``--data-dir REAL_ROOT`` holding ``train/<class>/`` (optional, mixed in) and ``validation/<class>/``
real images. ``--progaug-replace-prob P`` (progaug's own, removed before train.py sees the arguments;
default 0.3) adds the cache by per-draw replacement; ``--progaug-replace-prob none`` concatenates it.
See :mod:`progaug.integrations.timm`.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    """Check the options, install the dataset hook, then run the script as ``__main__``."""
    from progaug.integrations.timm import check_timm_args, install

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or not argv[0].endswith(".py"):
        raise SystemExit("usage: python -m progaug.timm_train path/to/train.py [train.py arguments]")
    script = Path(argv[0])
    if not script.is_file():
        raise SystemExit(f"progaug.timm_train: training script not found: {script}")
    rest, replace_prob = _progaug_options(argv[1:])
    rest = check_timm_args(rest)
    install(replace_prob=replace_prob)
    sys.argv = [str(script), *rest]
    sys.path.insert(0, str(script.parent.resolve()))
    runpy.run_path(str(script), run_name="__main__")


def _progaug_options(argv: list[str]) -> tuple[list[str], float | None]:
    """Take ``--progaug-replace-prob P|none`` out of ``argv``; the rest goes to train.py."""
    import argparse
    import math

    from progaug.replacement import DEFAULT_REPLACE_PROB

    p = argparse.ArgumentParser(prog="progaug.timm_train", add_help=False)
    p.add_argument("--progaug-replace-prob", default=str(DEFAULT_REPLACE_PROB))
    known, rest = p.parse_known_args(argv)
    text = known.progaug_replace_prob
    if text.lower() == "none":
        return rest, None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise SystemExit(f"progaug.timm_train: --progaug-replace-prob must lie in [0, 1] or be 'none', got {text}")
    return rest, value


if __name__ == "__main__":
    main()
