"""Run timm's ``train.py`` on progaug data: ``python -m progaug.timm_train path/to/train.py ARGS``.

``ARGS`` are train.py's own, with ``--dataset progaug/CACHE_DIR`` (a folder from ``progaug precompute``)
and ``--data-dir REAL_ROOT`` holding ``train/<class>/`` (optional, mixed in) and ``validation/<class>/``
real images. See :mod:`progaug.integrations.timm`.
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
    rest = check_timm_args(argv[1:])
    install()
    sys.argv = [str(script), *rest]
    sys.path.insert(0, str(script.parent.resolve()))
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
