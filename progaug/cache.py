"""The precomputed-set format: written by :mod:`progaug.precomputation`, read by :class:`ProgressiveCache`.

Layout of a folder::

    run.json             the settings (checked by --resume; written by progaug.precomputation)
    images/NNNNNN.png    sample i = source group i // L, level i % L
    records/GGGGGG.json  per source group: the rows of labels.csv (written after its PNGs)
    labels.csv           file, source, level, soft_label, depth, amplitudes, measure, ... (:data:`COLUMNS`)
    manifest.json        versions, pair sha256, settings, sha256 of every file
    preview.png          the first source groups as a strip (source, progressive images, labels)

Every file goes through :func:`progaug.fileio.atomic_write_bytes`. A group's record carries the sha256
of its images and of its rows, so a record edited by hand, or an image altered since, is found on
``--resume``; the manifest, written last, carries the sha256 of every file for :meth:`ProgressiveCache.open`.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from progaug.fileio import atomic_write_bytes, read_format_json, sha256_file
from progaug.labels import LEGACY_MEASURE

__all__ = ["ADDED_COLUMNS", "COLUMNS", "CSV_FIELDS", "MANIFEST_FORMAT", "RECORD_FORMAT", "ProgressiveCache"]

MANIFEST_FORMAT = "progaug.cache/1"
RECORD_FORMAT = "progaug.records/1"

COLUMNS: tuple[tuple[str, type], ...] = (
    ("file", str), ("source", str), ("source_class", str), ("target_class", str), ("level", float), ("soft_label", float),
    ("depth", int), ("steps", int), ("measured_source", float), ("measured_state", float), ("measured_latent", float),
    ("dihedral", int), ("seed", int), ("measure", str),
)
"""The columns of ``labels.csv`` (and of the rows of a record), in order, with their types. The three
``measured_*`` columns hold the label measure's value at the source, the chosen state and the latent
(an amplitude for ``"paper"`` and ``"reference"``, a distance for ``"preview"`` and ``"decoded"``)."""

ADDED_COLUMNS: dict[str, Any] = {"measure": LEGACY_MEASURE}
"""Columns added after the first format, with the value that rows written before them read as."""

CSV_FIELDS = tuple(name for name, _ in COLUMNS)
_NUMBERS = {name: kind for name, kind in COLUMNS if kind is not str}
_REQUIRED_COLUMNS = tuple(name for name in CSV_FIELDS if name not in ADDED_COLUMNS)

RUN_FILE = "run.json"
"""The settings of a run, written first (:func:`write_run_settings`) and compared on ``--resume``."""

IMAGE_NAME = re.compile(r"images/[0-9]{6,}\.png")
"""The only names of images a cache may list (:func:`image_name`): nothing else is ever opened."""


def image_name(sample: int) -> str:
    """The file of sample ``sample``, relative to the folder."""
    return f"images/{sample:06d}.png"


def record_path(out: Path, group: int) -> Path:
    """The record of source group ``group``."""
    return out / "records" / f"{group:06d}.json"


# ------------------------------------------------------------------------------------------ writing


def _rows_digest(rows: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


def write_record(out: Path, group: int, rows: list[dict[str, Any]], images: dict[str, str]) -> None:
    """A group's record: its ``labels.csv`` rows, the sha256 of its images and of the rows themselves
    (so a record edited by hand, or an image altered since, is found on ``--resume``)."""
    record = {"format": RECORD_FORMAT, "rows": rows, "images": images, "rows_sha256": _rows_digest(rows)}
    atomic_write_bytes(record_path(out, group), json.dumps(record).encode())


def write_labels(out: Path, rows: list[dict[str, Any]]) -> None:
    """``labels.csv``: one line per sample, the columns of :data:`CSV_FIELDS`."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "labels.csv", buf.getvalue().encode())


def write_manifest(out: Path, rows: list[dict[str, Any]], **fields: Any) -> None:
    """``manifest.json``, written last: ``fields`` (settings, pair card, command, execution), the
    versions, and the sha256 of the images of ``rows`` and of ``labels.csv``."""
    import platform

    import progaug

    files = {r["file"]: sha256_file(out / r["file"]) for r in rows}
    files["labels.csv"] = sha256_file(out / "labels.csv")
    manifest = {
        "format": MANIFEST_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": {"progaug": progaug.__version__, "torch": torch.__version__, "python": platform.python_version()},
        **fields,
        "samples": len(rows),
        "files": files,
    }
    atomic_write_bytes(out / "manifest.json", (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())


# ------------------------------------------------------------------------------------------ reading


def read_record(out: Path, group: int, files: list[str], run: tuple[Any, Any, Any, Any]) -> list[dict[str, Any]]:
    """The rows of a group's record, checked against the run and against its images.

    Args:
        out: The folder.
        group: The source group.
        files: The image names the record must list (:func:`image_name` of its samples).
        run: ``(source, dihedral, steps, seed)`` every row must carry.

    Raises:
        ValueError: The record is unreadable, edited, not this run's, or an image is missing or altered;
            the message names the file.
    """
    path = record_path(out, group)
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is unreadable: {exc}") from exc
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise ValueError(f"{path} is not a {RECORD_FORMAT} record")
    rows, images = record.get("rows"), record.get("images")
    if not isinstance(rows, list) or not isinstance(images, dict) or record.get("rows_sha256") != _rows_digest(rows):
        raise ValueError(f"{path} was edited after it was written (its rows do not match their sha256)")
    if [r.get("file") for r in rows] != files or sorted(images) != files:
        raise ValueError(f"{path} lists {[r.get('file') for r in rows]}, expected {files}")
    for r in rows:
        if (r.get("source"), r.get("dihedral"), r.get("steps"), r.get("seed")) != run:
            raise ValueError(f"{path} belongs to another run (source, flip, steps or seed differ)")
    for name in files:
        file = out / name
        if not file.is_file():
            raise ValueError(f"{file} is missing")
        if sha256_file(file) != images[name]:
            raise ValueError(f"{file} is not the image that was written (sha256 differs; truncated or altered)")
    return [_with_added_columns(r) for r in rows]


def write_run_settings(out: Path, settings: dict[str, Any]) -> None:
    """Write the settings of a run as ``out/run.json`` (sorted keys, atomically), before any sample."""
    atomic_write_bytes(out / RUN_FILE, (json.dumps(settings, indent=2, sort_keys=True) + "\n").encode())


def not_resumable(run_file: Path, exc: Exception) -> str:
    """The message for a ``run.json`` that is not valid JSON."""
    return f"{run_file} is not valid JSON ({exc}): this folder cannot be resumed; choose another --out"


def read_run_settings(run_file: Path) -> Any:
    """The stored settings of a run's ``run.json`` (``run_file``), a run made before ``measure`` existed read as
    :data:`progaug.labels.LEGACY_MEASURE`, one made before ``decode_stride`` existed as 1, before ``decode_fine`` as 0 and before ``labels`` as
    ``"measure"`` (what they used). A corrupt
    ``run.json`` beside a ``manifest.json`` is read from the manifest's copy of the settings.

    Raises:
        ValueError: Not valid JSON, and no manifest to read the settings from.
    """
    try:
        stored = json.loads(run_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        stored = _settings_of_manifest(run_file, exc)
    if isinstance(stored, dict) and isinstance(stored.get("config"), dict):
        stored["config"].setdefault("measure", LEGACY_MEASURE)
        stored["config"].setdefault("decode_stride", 1)
        stored["config"].setdefault("decode_fine", 0)
        stored["config"].setdefault("labels", "measure")
    return stored


def _settings_of_manifest(run_file: Path, exc: Exception) -> Any:
    """The settings a finished run's manifest holds, when ``run_file`` is not valid JSON (``exc``).

    Raises:
        ValueError: No readable manifest with settings either.
    """
    import sys

    manifest = finished_manifest(run_file.parent)
    settings = manifest.get("settings") if isinstance(manifest, dict) else None
    if not isinstance(settings, dict):
        raise ValueError(not_resumable(run_file, exc)) from exc
    print(f"progaug precompute: {run_file} is not valid JSON ({exc}); the settings are read from manifest.json",
          file=sys.stderr)
    return settings


def finished_manifest(out: Path) -> dict[str, Any] | None:
    """The manifest of a finished run in ``out`` as it is (unchecked), or None when there is none or it
    is unreadable."""
    try:
        return json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


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
        _refuse_link(manifest_path)
        manifest = read_format_json(manifest_path, MANIFEST_FORMAT, "cache manifest")
        files = _listed_files(manifest, manifest_path)
        for name, digest in files.items():
            path = _own_file(root, name)
            if not path.is_file():
                raise FileNotFoundError(f"cache file listed in the manifest is missing: {path}")
            if verify or name == "labels.csv":
                got = sha256_file(path)
                if got != digest:
                    raise ValueError(f"cache file {path} was altered: sha256 expected {digest} got {got}")
        rows = _read_labels(root / "labels.csv", files)
        if len(rows) != manifest.get("samples"):
            raise ValueError(f"{root / 'labels.csv'} has {len(rows)} rows but the manifest lists {manifest.get('samples')!r} samples")
        cache = cls(root, manifest, rows)
        _ = cache.classes  # checked here, before any image is read
        return cache

    @property
    def measure(self) -> str:
        """The label measure of the set (``"paper"`` for sets made before the setting existed)."""
        config = self.manifest.get("settings", {}).get("config", {})
        return config.get("measure", LEGACY_MEASURE) if isinstance(config, dict) else LEGACY_MEASURE

    @property
    def classes(self) -> tuple[str, str]:
        """``(source class, target class)`` of the pair that made the set.

        Raises:
            ValueError: The manifest does not hold two different class names.
        """
        settings = self.manifest.get("settings")
        names = settings.get("classes") if isinstance(settings, dict) else None
        if not (isinstance(names, list) and len(names) == 2 and all(isinstance(n, str) and n for n in names)
                and names[0] != names[1]):
            raise ValueError(f"{self.root / 'manifest.json'}: settings.classes must be two different class names, got {names!r}")
        return names[0], names[1]

    def __len__(self) -> int:
        return len(self.rows)

    def soft_labels(self) -> torch.Tensor:
        """``(N,)`` float32 soft labels (share of the target class)."""
        return torch.tensor([r["soft_label"] for r in self.rows], dtype=torch.float32)

    def read_image(self, row: dict[str, Any]) -> np.ndarray:
        """The ``(S, S, 3)`` uint8 image of one of :attr:`rows` (only through :func:`_own_file`, never
        through a symbolic link).

        Raises:
            ValueError: The file is not a readable image; the message names it.
        """
        from PIL import Image, UnidentifiedImageError

        path = _own_file(self.root, row["file"])
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            with os.fdopen(fd, "rb") as f, Image.open(f) as im:
                return np.array(im.convert("RGB"))
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise ValueError(f"{path}: not a readable cache image ({exc})") from exc

    def load_images(self) -> torch.Tensor:
        """``(N, 3, S, S)`` uint8 images, in row order (see :meth:`read_image`)."""
        arrays = [self.read_image(r) for r in self.rows]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


# ------------------------------------------------------------------------- the trust boundary


def _cache_name(name: object) -> bool:
    """Whether ``name`` is a name a cache may hold: ``labels.csv`` or one of :data:`IMAGE_NAME`."""
    return name == "labels.csv" or (isinstance(name, str) and IMAGE_NAME.fullmatch(name) is not None)


def _refuse_link(path: Path) -> None:
    """Refuse a symbolic link: a cache is shared and downloaded, so it only ever opens its own files."""
    if path.is_symlink():
        raise ValueError(f"{path} is a symbolic link; a cache is only read from its own files, so it was not opened")


def _own_file(root: Path, name: str) -> Path:
    """``root / name`` for a name a cache may hold (``labels.csv`` or :data:`IMAGE_NAME`), neither it nor
    ``images/`` a symbolic link.

    Raises:
        ValueError: Another name (``../x``, an absolute path, ...) or a symbolic link.
    """
    if not _cache_name(name):
        raise ValueError(f"{name!r} is not a file of a progaug cache (only labels.csv and images/NNNNNN.png are read)")
    if name != "labels.csv":
        _refuse_link(root / "images")
    _refuse_link(root / name)
    return root / name


def _listed_files(manifest: dict[str, Any], where: Path) -> dict[str, str]:
    """``manifest["files"]``, checked: labels.csv and names of :data:`IMAGE_NAME` only, sha256 strings.

    Raises:
        ValueError: Not an object of such names, or without ``labels.csv``; the message names ``where``.
    """
    files = manifest.get("files")
    if not isinstance(files, dict) or "labels.csv" not in files:
        raise ValueError(f"{where}: 'files' must be an object listing labels.csv and the images")
    for name, digest in files.items():
        if not _cache_name(name):
            raise ValueError(f"{where} lists {name!r}, which is not a file of a progaug cache "
                             f"(only labels.csv and images/NNNNNN.png); nothing was read")
        if not isinstance(digest, str):
            raise ValueError(f"{where}: the sha256 of {name!r} must be a string, got {digest!r}")
    return files


def _read_labels(path: Path, files: dict[str, str]) -> list[dict[str, Any]]:
    """The rows of ``labels.csv``, each checked by :func:`_parse` against the manifest's ``files``.

    Raises:
        ValueError: No rows, a required column missing, or a bad row; the message names the file.
    """
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in _REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} lacks the column(s) {missing} (a labels.csv has {list(CSV_FIELDS)})")
        rows = [_parse(r, f"{path}: row {i}", files) for i, r in enumerate(reader, start=1)]
    if not rows:
        raise ValueError(f"{path} has no rows: the cache holds no sample")
    return rows


def _parse(row: dict[str, str], where: str = "labels.csv", files: dict[str, str] | None = None) -> dict[str, Any]:
    """A ``labels.csv`` row with its numbers parsed; a column added since the file was written gets
    the value of :data:`ADDED_COLUMNS`.

    Raises:
        ValueError: A number column that does not parse, a ``soft_label`` that is not finite in [0, 1],
            or a ``file`` that is not an image the manifest lists (``files``); the message names ``where``.
    """
    parsed = {}
    for key, value in row.items():
        try:
            parsed[key] = _NUMBERS[key](value) if key in _NUMBERS else value
        except (TypeError, ValueError):
            raise ValueError(f"{where}: column {key!r} must be a number, got {value!r}") from None
    label = parsed.get("soft_label")
    if not (isinstance(label, float) and math.isfinite(label) and 0 <= label <= 1):
        raise ValueError(f"{where}: soft_label must be a finite number in [0, 1], got {row.get('soft_label')!r}")
    name = parsed.get("file")
    if files is not None and (not _cache_name(name) or name == "labels.csv" or name not in files):
        raise ValueError(f"{where}: file {name!r} is not an image the manifest lists (images/NNNNNN.png); nothing was read")
    return _with_added_columns(parsed)


def _with_added_columns(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with the columns of :data:`ADDED_COLUMNS` it lacks (a row written before them)."""
    return {**row, **{k: v for k, v in ADDED_COLUMNS.items() if k not in row}}
