"""Which results in ``benchmarks/results/`` were measured on another pair than the one that ships?

Every result JSON records the sha256 of the pair files it measured under ``pair_sha256``
(``{"source": ..., "target": ...}``). This compares them with the card of ``--pair`` and prints one line
per file: ``current``, ``STALE`` or ``UNKNOWN`` (no key). A result measured on one of the pairs committed
under ``benchmarks/pairs/`` (``--pairs``; e.g. the no-leak pair, another pair by design) prints
``pair:NAME`` and is not stale. Exit status 1 when any file is STALE or UNKNOWN.

    python benchmarks/stale_results.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT


def card_sha256(folder: Path) -> dict:
    """``{"source": sha256, "target": sha256}`` from a pair folder's ``card.json``."""
    card = json.loads((folder / "card.json").read_text())
    return {r: card[r]["sha256"] for r in ("source", "target")}


def status(result: dict, shipped: dict, others: dict[str, dict] | None = None) -> str:
    """``current`` / ``STALE`` / ``UNKNOWN`` for one result JSON against the shipped pair's sha256, or
    ``pair:NAME`` when it measured the pair ``NAME`` of ``others`` (``{name: sha256 dict}``); a result that
    measured no pair says so with ``"uses_pair": false`` and is ``current``."""
    if result.get("uses_pair") is False:
        return "current"
    recorded = result.get("pair_sha256")
    if not isinstance(recorded, dict) or not {"source", "target"} <= set(recorded):
        return "UNKNOWN"
    def measured(sha: dict) -> bool:
        return all(recorded[r] == sha[r] for r in ("source", "target"))

    if measured(shipped):
        return "current"
    return next((f"pair:{name}" for name, sha in (others or {}).items() if measured(sha)), "STALE")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", default="hgsc-demo", help="embedded pair name or pair folder (default: hgsc-demo)")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"), help="folder of result JSONs")
    p.add_argument("--pairs", default=str(ROOT / "benchmarks" / "pairs"),
                   help="folder of other committed pairs (one folder with a card.json each) that results may measure by design")
    args = p.parse_args(argv)
    from progaug.hub import pair_dir

    folder = Path(args.pair) if Path(args.pair).is_dir() else pair_dir(args.pair)
    shipped = card_sha256(folder)
    others = {d.name: card_sha256(d) for d in sorted(Path(args.pairs).glob("*")) if (d / "card.json").is_file()}
    worst = 0
    for path in sorted(Path(args.results).glob("*.json")):
        state = status(json.loads(path.read_text()), shipped, others)
        worst = max(worst, state in ("STALE", "UNKNOWN"))
        print(f"{state:8s} {path.name}")
    return worst


if __name__ == "__main__":
    raise SystemExit(main())
