"""File helpers shared by every format progaug writes: hashing, atomic writes, JSON with a format tag,
byte-stable safetensors and a lock that keeps two processes out of one output folder.

Every file progaug writes goes to a temporary name in the destination folder first and is moved into
place with ``os.replace``, so a crash never leaves a half-written file under the real name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "LOCK_NAME", "OutputLocked", "atomic_write_bytes", "lock_folder", "read_format_json", "remove_temporary_files",
    "safetensors_bytes", "sha256_file",
]


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    Raises:
        NotADirectoryError: A parent of ``path`` is a file.
        OSError: The folder is not writable or the disk is full (the temporary file is removed); the
            error names ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _naming(exc, path) from exc
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _naming(exc, path) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _naming(exc: OSError, path: Path) -> OSError:
    """``exc`` as the same kind of error naming ``path`` (a write or fsync error names no file, and the
    temporary file's name means nothing to a user)."""
    if exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))


_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")  # what atomic_write_bytes names its temporary files


def remove_temporary_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files :func:`atomic_write_bytes` left in ``folder`` when its process was killed
    (``kill -9``, power loss); call only while holding the folder's :func:`lock_folder`.

    Returns:
        The files removed.
    """
    removed = []
    for path in Path(folder).glob(".*.tmp"):
        if _TEMPORARY.fullmatch(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def read_format_json(path: Path, expected_format: str, what: str) -> dict:
    """Parse a JSON file that must carry ``"format": expected_format``.

    Raises:
        ValueError: Not valid JSON, or another format; the message names the file and ``what``.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != expected_format:
        got = data.get("format") if isinstance(data, dict) else None
        raise ValueError(f"{path} is not a progaug {what} (format {got!r}, expected {expected_format!r})")
    return data


def safetensors_bytes(tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> bytes:
    """``safetensors.torch.save`` with a canonical header, so the same tensors and metadata always give
    the same bytes (safetensors itself writes the metadata in hash-map order, which changes per call).

    The header is the same JSON with the ``__metadata__`` keys sorted, padded with spaces to a multiple
    of 8 bytes as safetensors does; the tensor data and their offsets are untouched.
    """
    from safetensors.torch import save

    raw = save(tensors, metadata=metadata)
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + raw[8 + length :]


LOCK_NAME = ".progaug.lock"
"""The lock file :func:`lock_folder` keeps in an output folder."""


class OutputLocked(RuntimeError):
    """Another process holds the lock of an output folder."""


@contextlib.contextmanager
def lock_folder(folder: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder/.progaug.lock`` (non-blocking), so that two processes never
    write one output folder at once. The lock dies with its process, so a crash never leaves it held.

    Args:
        folder: The output folder (created if missing).
        what: The command, for the message (e.g. ``"progaug precompute"``).

    Raises:
        OutputLocked: Another process holds the lock.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file, not a folder: choose another --out")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    f = open(path, "a+")
    try:
        try:
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - Windows: no lock
            pass
        except BlockingIOError:
            raise OutputLocked(f"{folder} is in use by another {what} process (lock {path}); wait for it or choose another --out") from None
        yield
    finally:
        f.close()
