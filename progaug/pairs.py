"""Pairs shipped inside the package, and resolving a pair argument (a name or a folder)."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import torch

from progaug.pair import Pair, load_pair_dir

__all__ = ["EMBEDDED_PAIRS", "embedded_pair_dir", "resolve_pair"]

EMBEDDED_PAIRS = ("hgsc-demo",)
"""Pairs whose files are installed with progaug (``progaug/pairs/<name>/``)."""


def embedded_pair_dir(name: str) -> Path:
    """Folder of an embedded pair.

    Raises:
        ValueError: ``name`` is not an embedded pair.
        FileNotFoundError: Its files are not installed.
    """
    if name not in EMBEDDED_PAIRS:
        raise ValueError(f"unknown pair name {name!r}; the embedded pairs are {list(EMBEDDED_PAIRS)}")
    folder = Path(str(resources.files("progaug").joinpath("pairs", name)))
    if not (folder / "card.json").is_file():
        raise FileNotFoundError(f"the embedded pair {name!r} is not installed at {folder}")
    return folder


def resolve_pair(name_or_path: str | os.PathLike[str], *, device: torch.device | str = "cpu") -> Pair:
    """Load a pair from an embedded name (e.g. ``"hgsc-demo"``) or a pair folder."""
    text = str(name_or_path)
    if text in EMBEDDED_PAIRS:
        return load_pair_dir(embedded_pair_dir(text), device=device)
    path = Path(text)
    if path.is_dir():
        return load_pair_dir(path, device=device)
    raise FileNotFoundError(f"pair {text!r} is neither an embedded pair {list(EMBEDDED_PAIRS)} nor a folder")
