"""Reading a precomputed folder (``progaug precompute``) with every file checked against its manifest."""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from progaug.fileio import read_format_json, sha256_file

__all__ = ["ProgressiveCache"]

MANIFEST_FORMAT = "progaug.cache/1"


@dataclasses.dataclass
class ProgressiveCache:
    """A verified precomputed set.

    Attributes:
        root: The folder.
        manifest: The parsed ``manifest.json``.
        rows: The rows of ``labels.csv`` (numbers parsed).
    """

    root: Path
    manifest: dict[str, Any]
    rows: list[dict[str, Any]]

    @classmethod
    def open(cls, root: str | os.PathLike[str], *, verify: bool = True) -> ProgressiveCache:
        """Open and check a precomputed folder.

        Args:
            root: Folder written by ``progaug precompute``.
            verify: Check the sha256 of every file against the manifest (otherwise only that it exists).

        Raises:
            FileNotFoundError: The folder, its manifest or a listed file is missing.
            ValueError: The manifest is not a progaug cache manifest, a file was altered, or
                ``labels.csv`` does not match the manifest.
        """
        root = Path(root)
        manifest_path = root / "manifest.json"
        if not root.is_dir():
            raise FileNotFoundError(f"cache folder not found: {root}")
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{manifest_path} is missing: the precompute run did not finish (use --resume) or this is not a cache")
        manifest = read_format_json(manifest_path, MANIFEST_FORMAT, "cache manifest")
        for name, digest in manifest["files"].items():
            path = root / name
            if not path.is_file():
                raise FileNotFoundError(f"cache file listed in the manifest is missing: {path}")
            if verify or name == "labels.csv":
                got = sha256_file(path)
                if got != digest:
                    raise ValueError(f"cache file {path} was altered: sha256 expected {digest} got {got}")
        with open(root / "labels.csv", newline="") as f:
            rows = [_parse(r) for r in csv.DictReader(f)]
        if len(rows) != manifest["samples"]:
            raise ValueError(f"{root / 'labels.csv'} has {len(rows)} rows but the manifest lists {manifest['samples']} samples")
        return cls(root, manifest, rows)

    @property
    def classes(self) -> tuple[str, str]:
        """``(source class, target class)`` of the pair that made the set."""
        a, b = self.manifest["settings"]["classes"]
        return a, b

    def __len__(self) -> int:
        return len(self.rows)

    def soft_labels(self) -> torch.Tensor:
        """``(N,)`` float32 soft labels (share of the target class)."""
        return torch.tensor([r["soft_label"] for r in self.rows], dtype=torch.float32)

    def load_images(self) -> torch.Tensor:
        """``(N, 3, S, S)`` uint8 images, in row order."""
        from PIL import Image

        arrays = []
        for r in self.rows:
            with Image.open(self.root / r["file"]) as im:
                arrays.append(np.array(im.convert("RGB")))
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


_NUMBERS = {"level": float, "soft_label": float, "depth": int, "steps": int, "amplitude_source": float,
            "amplitude_state": float, "amplitude_latent": float, "dihedral": int, "seed": int}


def _parse(row: dict[str, str]) -> dict[str, Any]:
    return {k: _NUMBERS[k](v) if k in _NUMBERS else v for k, v in row.items()}
