"""Where the metric networks' weights come from: a local folder of safetensors files, sha256-pinned.

The folder is given as an argument or by ``PROGAUG_METRIC_WEIGHTS``. The files are the standard
weights converted to safetensors (provenance in the README of the folder shipped with the project's
workspace): pytorch-fid's Inception (TF 2015-12-05 graph), torchvision AlexNet features and the LPIPS
v0.1 linear heads.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from progaug.checkpoint import sha256_file

__all__ = ["METRIC_FILES", "load_metric_weights", "metric_weights_dir"]

METRIC_FILES = {
    "inception": ("pt_inception-2015-12-05.safetensors", "6c4f264fd4a4c24b9061ba1a25f1937f96c894ebaf3beec0f745b6b17b9c09eb"),
    "alexnet": ("lpips_alexnet_features.safetensors", "9f97fd313f4da83dbe6bbfbe6effca1241de9edfcd7c53386261ed9697286dd9"),
    "lpips_alex": ("lpips_v0.1_alex_linear.safetensors", "255d6454292d155a069f693a111769acec003d588617b250f24775369c816e04"),
}
ENV = "PROGAUG_METRIC_WEIGHTS"


def metric_weights_dir(folder: str | os.PathLike[str] | None = None) -> Path:
    """The folder argument, else ``$PROGAUG_METRIC_WEIGHTS``.

    Raises:
        FileNotFoundError: Neither is set, or the folder does not exist.
    """
    chosen = folder if folder is not None else os.environ.get(ENV)
    if chosen is None:
        raise FileNotFoundError(
            f"no metric weights folder: pass --metric-weights DIR or set {ENV}; it must hold "
            + ", ".join(name for name, _ in METRIC_FILES.values())
        )
    path = Path(chosen)
    if not path.is_dir():
        raise FileNotFoundError(f"metric weights folder not found: {path}")
    return path


def load_metric_weights(kind: str, folder: str | os.PathLike[str] | None = None) -> dict[str, torch.Tensor]:
    """Load one metric network's state dict after checking its sha256.

    Raises:
        ValueError: Unknown kind, or the file's sha256 differs from the pinned one.
        FileNotFoundError: The file is missing.
    """
    from safetensors.torch import load_file

    if kind not in METRIC_FILES:
        raise ValueError(f"unknown metric weights {kind!r}; known: {sorted(METRIC_FILES)}")
    name, expected = METRIC_FILES[kind]
    path = metric_weights_dir(folder) / name
    if not path.is_file():
        raise FileNotFoundError(f"metric weights file not found: {path}")
    got = sha256_file(path)
    if got != expected:
        raise ValueError(f"{path}: sha256 mismatch, expected {expected} got {got}")
    return load_file(str(path))
