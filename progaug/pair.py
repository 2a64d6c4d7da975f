"""A trained pair: source model (class A, global priority) + target model (class B, local priority) + card.

A pair folder holds ``source.safetensors``, ``target.safetensors`` and ``card.json``. The card records
the configs, the attention priorities, the classes and direction, the training budget, the data, the
sha256 of each weight file and the command that produced it. Loading checks every sha256 and refuses a
model whose priority differs from the card's.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch

from progaug.checkpoint import atomic_write_bytes, load_unet, read_format_json, sha256_file
from progaug.config import DiffusionConfig
from progaug.nn.unet import UNet

__all__ = ["CARD_FORMAT", "Pair", "load_pair_dir", "write_card"]

CARD_FORMAT = "progaug.pair/1"
ROLES = ("source", "target")


@dataclasses.dataclass
class Pair:
    """Two epsilon models and what is known about them.

    Attributes:
        source: U-Net of the source class A (eval mode).
        target: U-Net of the target class B (eval mode).
        card: The parsed ``card.json``.
        path: The folder it was loaded from, if any.
    """

    source: UNet
    target: UNet
    card: dict[str, Any]
    path: Path | None = None

    @property
    def classes(self) -> tuple[str, str]:
        """``(source class, target class)``."""
        d = self.card["direction"]
        return d["source_class"], d["target_class"]

    @property
    def diffusion(self) -> DiffusionConfig:
        """The training noise schedule of both models."""
        return DiffusionConfig.from_dict(self.card["diffusion"])

    @property
    def image_size(self) -> int:
        """Tile side the models were trained on."""
        return self.source.config.image_size

    def to(self, device: torch.device | str) -> Pair:
        """Move both models to ``device`` (in place) and return self."""
        self.source.to(device)
        self.target.to(device)
        return self


def write_card(folder: str | os.PathLike[str], card: dict[str, Any]) -> None:
    """Write ``card.json`` atomically, filling in the sha256 of each weight file present."""
    folder = Path(folder)
    card = json.loads(json.dumps(card))
    card["format"] = CARD_FORMAT
    for role in ROLES:
        entry = card.setdefault(role, {})
        entry.setdefault("file", f"{role}.safetensors")
        weights = folder / entry["file"]
        if weights.is_file():
            entry["sha256"] = sha256_file(weights)
            entry["bytes"] = weights.stat().st_size
    atomic_write_bytes(folder / "card.json", (json.dumps(card, indent=2, sort_keys=True) + "\n").encode())


def load_pair_dir(folder: str | os.PathLike[str], *, device: torch.device | str = "cpu") -> Pair:
    """Load a pair folder, checking the card, each file's sha256 and each model's attention priority.

    Raises:
        FileNotFoundError: The folder, its card or a weight file is missing.
        ValueError: Unreadable card, sha256 mismatch, or a model of the wrong priority.
    """
    folder = Path(folder)
    card_path = folder / "card.json"
    if not card_path.is_file():
        raise FileNotFoundError(f"pair card not found: {card_path}")
    card = read_format_json(card_path, CARD_FORMAT, "pair card")
    models = {}
    for role in ROLES:
        entry = card[role]
        path = folder / entry["file"]
        if not path.is_file():
            raise FileNotFoundError(f"pair weight file not found: {path}")
        got = sha256_file(path)
        if got != entry.get("sha256"):
            raise ValueError(f"{path}: sha256 mismatch, expected {entry.get('sha256')} got {got}")
        models[role] = load_unet(path, attention=entry.get("attention"), device=device)
    return Pair(models["source"], models["target"], card, folder)
