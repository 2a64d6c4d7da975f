"""A trained pair: source model (class A, global priority) + target model (class B, local priority) + card.

A pair folder holds ``source.safetensors``, ``target.safetensors`` and ``card.json``, and may hold
``margin_calibration.json`` (:attr:`Pair.margin_calibration`, written by ``progaug calibrate``). The card records
the configs, the attention priorities, the classes and direction, the training budget, the data, the
sha256 of each weight file and the command that produced it. Loading checks the card against a small
schema (required keys and their types), every sha256, and refuses a model whose priority differs from
the card's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import reprlib
from pathlib import Path
from typing import Any

import torch

from progaug.checkpoint import load_unet
from progaug.fileio import atomic_write_bytes, sha256_file
from progaug.config import DiffusionConfig
from progaug.margin import MarginCalibration, read_calibration, weights_sha256
from progaug.nn.unet import UNet

__all__ = ["CARD_FORMAT", "ROLES", "Pair", "check_card", "load_pair_dir", "parse_card", "read_card", "write_card"]

CARD_FORMAT = "progaug.pair/1"
ROLES = ("source", "target")

# Required keys of a loadable card and their types; a nested dict is a nested object with its own keys.
_WEIGHTS = {"file": str, "sha256": str}
CARD_SCHEMA: dict[str, Any] = {
    "format": str,
    "direction": {"source_class": str, "target_class": str},
    "diffusion": dict,
    "source": _WEIGHTS,
    "target": _WEIGHTS,
}
_TYPE_NAMES = {str: "a string", dict: "an object"}
_HEX = frozenset("0123456789abcdef")
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60


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

    @property
    def margin_calibration(self) -> MarginCalibration | None:
        """The calibration of the pair's denoising margin (``margin_calibration.json`` beside the card,
        written by ``progaug calibrate``), or None when the folder has none or the pair has no folder.

        Raises:
            ValueError: The file is there but bad (:func:`progaug.margin.read_calibration`), or it was fitted
                with other weights than the card's (a pair trained further after ``progaug calibrate``): its
                margins are on another scale, so it is refused rather than used.
        """
        calibration = read_calibration(self.path) if self.path is not None else None
        if calibration is None or calibration.weights_sha256 is None:
            return calibration
        now = weights_sha256(self)
        if now is not None and now != calibration.weights_sha256:
            raise ValueError(f"{Path(self.path) / 'margin_calibration.json'} was fitted with other weights of this pair (source sha256 "
                             f"{calibration.weights_sha256[0][:12]}, target {calibration.weights_sha256[1][:12]}; the card now names "
                             f"{now[0][:12]}, {now[1][:12]}): fit it again with `progaug calibrate --pair {self.path} --data ROOT`, "
                             f"or delete it to label by the measure")
        return calibration

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


def _short(value: object) -> str:
    """``repr(value)``, shortened to about 60 characters (a bad value may be a whole nested object)."""
    return _REPR.repr(value)


def _check_keys(value: dict[str, Any], schema: dict[str, Any], where: str, prefix: str = "") -> None:
    for key, kind in schema.items():
        name = prefix + key
        if key not in value:
            raise ValueError(f"{where}: missing key {name!r}")
        expected = dict if isinstance(kind, dict) else kind
        if not isinstance(value[key], expected):
            got = value[key]
            raise ValueError(f"{where}: key {name!r} must be {_TYPE_NAMES[expected]}, got {type(got).__name__} {_short(got)}")
        if isinstance(kind, dict):
            _check_keys(value[key], kind, where, name + ".")


def check_card(card: object, where: str) -> dict[str, Any]:
    """Check a parsed pair card against :data:`CARD_SCHEMA` and return it.

    Beyond the required keys and their types: the format tag must be :data:`CARD_FORMAT`, each weight
    ``file`` a plain file name inside the pair folder, each ``sha256`` 64 lowercase hex digits, an
    ``attention`` entry, where present, ``"global"`` or ``"local"``, and the two classes two different names.

    Args:
        card: The parsed JSON.
        where: The card's path or URL, named in every message.

    Raises:
        ValueError: Not an object, a missing key, a value of the wrong type or a bad value; the message
            names ``where``, the key (dotted for nested keys) and the value.
    """
    if not isinstance(card, dict):
        raise ValueError(f"{where}: a pair card must be a JSON object, got {type(card).__name__} {_short(card)}")
    if "format" in card and card["format"] != CARD_FORMAT:
        raise ValueError(f"{where} is not a progaug pair card (format {_short(card['format'])}, expected {CARD_FORMAT!r})")
    _check_keys(card, CARD_SCHEMA, where)
    for role in ROLES:
        entry = card[role]
        name = entry["file"]
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"{where}: key '{role}.file' must be a plain file name in the pair folder, got {name!r}")
        if len(entry["sha256"]) != 64 or not set(entry["sha256"]) <= _HEX:
            raise ValueError(f"{where}: key '{role}.sha256' must be 64 lowercase hex digits, got {_short(entry['sha256'])}")
        if entry.get("attention", "global") not in ("global", "local"):
            raise ValueError(f"{where}: key '{role}.attention' must be 'global' or 'local', got {_short(entry['attention'])}")
    source, target = card["direction"]["source_class"], card["direction"]["target_class"]
    if not source or source == target:
        raise ValueError(f"{where}: 'direction.source_class' and 'direction.target_class' must be two different class "
                         f"names, got {_short(source)} and {_short(target)}")
    return card


def parse_card(data: bytes | str, where: str) -> dict[str, Any]:
    """Parse ``card.json`` bytes and check them with :func:`check_card`.

    Raises:
        ValueError: Not UTF-8 JSON, or a card that fails :func:`check_card`; the message names ``where``.
    """
    try:
        card = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{where} is not valid JSON: {exc}") from exc
    return check_card(card, where)


def read_card(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a ``card.json`` file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: See :func:`parse_card`; the message names ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pair card not found: {path}")
    return parse_card(path.read_bytes(), str(path))


def load_pair_dir(folder: str | os.PathLike[str], *, device: torch.device | str = "cpu") -> Pair:
    """Load a pair folder, checking the card, each file's sha256 and each model's attention priority.

    Raises:
        FileNotFoundError: The folder, its card or a weight file is missing.
        ValueError: Unreadable or incomplete card (see :func:`check_card`), sha256 mismatch, a model of
            the wrong priority or role (see :func:`progaug.checkpoint.load_unet`), or an ``image_size``
            that differs between the card and the weights or between the two models.
    """
    folder = Path(folder)
    card = read_card(folder / "card.json")
    models = {}
    for role in ROLES:
        entry = card[role]
        path = folder / entry["file"]
        if not path.is_file():
            raise FileNotFoundError(f"pair weight file not found: {path}")
        got = sha256_file(path)
        if got != entry["sha256"]:
            hint = ""
            if (folder / "checkpoint.safetensors").is_file():  # a `progaug train` folder stopped while exporting
                hint = ("; the folder holds a training state, so a `progaug train` was probably stopped between writing "
                        "the weights and card.json: rerun the same train command with --resume to write them again")
            raise ValueError(f"{path}: sha256 mismatch, expected {entry['sha256']} got {got}{hint}")
        models[role] = load_unet(path, attention=entry.get("attention"), role=role, device=device)
        _check_image_size(models[role], entry, f"{folder / 'card.json'}: '{role}'")
    if models["source"].config.image_size != models["target"].config.image_size:
        raise ValueError(f"{folder}: the source model takes {models['source'].config.image_size}-px tiles but the target "
                         f"model {models['target'].config.image_size}-px ones")
    return Pair(models["source"], models["target"], card, folder)


def _check_image_size(model: UNet, entry: dict[str, Any], where: str) -> None:
    """The card's ``config.image_size`` of a model, where it has one, must be the weights' own."""
    config = entry.get("config")
    size = config.get("image_size") if isinstance(config, dict) else None
    if size is not None and size != model.config.image_size:
        raise ValueError(f"{where}: the card says image_size {_short(size)} but the weights were made for "
                         f"{model.config.image_size}-px tiles")
