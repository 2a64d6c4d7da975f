"""Where the metric networks' weights come from: a local folder of safetensors files, sha256-pinned,
or, for the FID Inception with no folder given, pytorch-fid's official release address.

The folder is given as an argument or by ``PROGAUG_METRIC_WEIGHTS``. The files are the standard
weights converted to safetensors (provenance in the README of the folder shipped with the project's
workspace): pytorch-fid's Inception (TF 2015-12-05 graph), torchvision AlexNet features and the LPIPS
v0.1 linear heads.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from progaug.fileio import atomic_write_bytes, sha256_file

__all__ = ["METRIC_FILES", "OFFICIAL_INCEPTION", "download_official_inception", "load_metric_weights", "metric_weights_dir"]

METRIC_FILES = {
    "inception": ("pt_inception-2015-12-05.safetensors", "6c4f264fd4a4c24b9061ba1a25f1937f96c894ebaf3beec0f745b6b17b9c09eb"),
    "alexnet": ("lpips_alexnet_features.safetensors", "9f97fd313f4da83dbe6bbfbe6effca1241de9edfcd7c53386261ed9697286dd9"),
    "lpips_alex": ("lpips_v0.1_alex_linear.safetensors", "255d6454292d155a069f693a111769acec003d588617b250f24775369c816e04"),
}
ENV = "PROGAUG_METRIC_WEIGHTS"

OFFICIAL_INCEPTION = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    "6726825d",
)
"""pytorch-fid's release file and the sha256 prefix its name publishes (torch.hub's convention)."""


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
    if kind == "inception" and folder is None and os.environ.get(ENV) is None:
        return download_official_inception()
    path = metric_weights_dir(folder) / name
    if not path.is_file():
        raise FileNotFoundError(f"metric weights file not found: {path}")
    got = sha256_file(path)
    if got != expected:
        raise ValueError(f"{path}: sha256 mismatch, expected {expected} got {got}")
    return load_file(str(path))


def download_official_inception(url: str = OFFICIAL_INCEPTION[0], sha256_prefix: str = OFFICIAL_INCEPTION[1]) -> dict[str, torch.Tensor]:
    """pytorch-fid's Inception weights from their official release address, for machines with a network.

    The release file is a PyTorch pickle whose name carries the first 8 hex digits of its sha256 (the
    only hash its authors publish). It is downloaded into ``$PROGAUG_HOME/metrics`` through the hub's
    verified download, its sha256 prefix is checked, it is read with ``torch.load(weights_only=True)``
    (tensors only, never arbitrary objects) and stored beside it as safetensors (written atomically,
    :func:`progaug.fileio.atomic_write_bytes`), which later calls load.

    Raises:
        FileNotFoundError: ``PROGAUG_OFFLINE`` is set and the file is not cached.
        ValueError: The sha256 prefix differs (the file is deleted).
    """
    from safetensors.torch import load_file, save

    from progaug.hub import cache_dir, download

    folder = cache_dir() / "metrics"
    converted = folder / "pt_inception-2015-12-05.safetensors"
    if converted.is_file():
        return load_file(str(converted))
    raw = download(url, folder / url.rsplit("/", 1)[-1], None)
    got = sha256_file(raw)
    if not got.startswith(sha256_prefix):
        raw.unlink(missing_ok=True)
        raise ValueError(f"{url}: sha256 mismatch, expected a hash starting {sha256_prefix} got {got}; the download was deleted")
    state = torch.load(raw, map_location="cpu", weights_only=True)
    atomic_write_bytes(converted, save({k: v.contiguous() for k, v in state.items()}))
    return state
