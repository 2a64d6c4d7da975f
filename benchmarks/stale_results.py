"""Which results in ``benchmarks/results/`` were measured on another pair than the one that ships?

Every result JSON records the sha256 of the pair files it measured under ``pair_sha256``
(``{"source": ..., "target": ...}``). This compares them with the card of ``--pair`` and prints one line
per file: ``current``, ``STALE`` or ``UNKNOWN`` (no key). Exit status 1 when any file is not current.

    python benchmarks/stale_results.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT


def status(result: dict, shipped: dict) -> str:
    """``current`` / ``STALE`` / ``UNKNOWN`` for one result JSON against the shipped pair's sha256; a result
    that measured no pair says so with ``"uses_pair": false`` and is ``current``."""
    if result.get("uses_pair") is False:
        return "current"
    recorded = result.get("pair_sha256")
    if not isinstance(recorded, dict) or not {"source", "target"} <= set(recorded):
        return "UNKNOWN"
    return "current" if all(recorded[r] == shipped[r] for r in ("source", "target")) else "STALE"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", default="hgsc-demo", help="embedded pair name or pair folder (default: hgsc-demo)")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"), help="folder of result JSONs")
    args = p.parse_args(argv)
    from progaug.hub import pair_dir

    folder = Path(args.pair) if Path(args.pair).is_dir() else pair_dir(args.pair)
    card = json.loads((folder / "card.json").read_text())
    shipped = {r: card[r]["sha256"] for r in ("source", "target")}
    worst = 0
    for path in sorted(Path(args.results).glob("*.json")):
        state = status(json.loads(path.read_text()), shipped)
        worst = max(worst, state != "current")
        print(f"{state:8s} {path.name}")
    return worst


if __name__ == "__main__":
    raise SystemExit(main())
