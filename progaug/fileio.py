"""File helpers shared by every format progaug writes: hashing, atomic writes, JSON with a format tag,
byte-stable safetensors and file locks.

Every file progaug writes (downloads included) goes to a temporary name in the destination folder first
and is moved into place with ``os.replace`` (:func:`atomic_writer`), so a crash never leaves a
half-written file under the real name. Every lock is a POSIX ``flock`` taken by :func:`file_lock`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import struct
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "LOCK_NAME", "OutputLocked", "atomic_write_bytes", "atomic_writer", "file_lock", "lock_folder", "parse_format_json", "read_format_json",
    "remove_temporary_files", "safetensors_bytes", "sha256_file",
]


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], *, prefix: str | None = None, suffix: str = ".tmp") -> Iterator[IO[bytes]]:
    """Write ``path`` through a temporary file in the same folder: the ``with`` block writes the file it
    yields; on a clean exit the file is flushed, fsynced, made ``0o644`` and moved onto ``path`` with
    ``os.replace``; on an error (or an interrupt) it is deleted and ``path`` is left as it was.

    Args:
        path: The destination (its folder is created if missing).
        prefix: Start of the temporary file's name (default ``".<name>."``); a random part and ``suffix``
            follow (``tempfile.mkstemp``).
        suffix: End of the temporary file's name.

    Raises:
        NotADirectoryError: A parent of ``path`` is a file.
        OSError: The folder is not writable or the disk is full (the temporary file is removed); an
            ``OSError`` with an errno, from this function or the block, is raised again naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}." if prefix is None else prefix, suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise _naming(exc, path) from exc
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.errno is None:  # an error that says what it is about (e.g. progaug.download.DownloadError)
            raise
        raise _naming(exc, path) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_writer`.

    Raises:
        NotADirectoryError: A parent of ``path`` is a file.
        OSError: The folder is not writable or the disk is full (the temporary file is removed); the
            error names ``path``.
    """
    with atomic_writer(path) as f:
        f.write(data)


def _naming(exc: OSError, path: Path) -> OSError:
    """``exc`` as the same kind of error naming ``path`` (a write or fsync error names no file, and the
    temporary file's name means nothing to a user)."""
    if exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))


_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")  # what atomic_writer names its temporary files by default


def remove_temporary_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files :func:`atomic_writer` left in ``folder`` when its process was killed
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
    return parse_format_json(Path(path).read_bytes(), str(path), expected_format, what)


def parse_format_json(body: bytes, where: str, expected_format: str, what: str) -> dict:
    """:func:`read_format_json` of bytes that came from ``where`` (a file or a URL, named in the errors)."""
    try:
        data = json.loads(body.decode())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != expected_format:
        got = data.get("format") if isinstance(data, dict) else None
        raise ValueError(f"{where} is not a progaug {what} (format {got!r}, expected {expected_format!r})")
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


_LOCK_POLL_S = 0.05  # how often a waiting file_lock tries again


def _same_file(handle: IO[bytes], path: Path) -> bool:
    """Whether the open ``handle`` is still the file at ``path``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(handle.fileno())
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _flock(handle: IO[bytes], path: Path, wait: float) -> bool:
    """Take an exclusive ``flock`` on ``handle`` within ``wait`` seconds; False on a filesystem without locks.

    Raises:
        BlockingIOError: Another process still holds it after ``wait`` seconds.
    """
    import fcntl

    end = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= end:
                raise BlockingIOError(errno.EWOULDBLOCK, f"held by another process after {wait:g} s", str(path)) from None
            time.sleep(_LOCK_POLL_S)
        except OSError:  # a filesystem without locks
            return False


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str], *, wait: float = 0.0, remove: bool = False) -> Iterator[bool]:
    """Hold an exclusive lock on the file ``path`` (POSIX ``flock``, created with its folder if missing).

    The lock dies with its process, so a crash never leaves it held.

    Args:
        path: The lock file.
        wait: Seconds to wait for another holder to let go (tried every 50 ms); 0: not at all.
        remove: Delete the lock file on release, after success or failure. A waiter that then holds the
            deleted file lets it go and locks the file now at ``path``.

    Yields:
        True while the lock is held; False where none can be taken (no ``fcntl``, as on Windows, or a
        filesystem that refuses locks).

    Raises:
        BlockingIOError: Another process still holds the lock after ``wait`` seconds.
    """
    try:
        import fcntl  # noqa: F401 - only whether it exists
    except ImportError:  # pragma: no cover - Windows: no lock
        yield False
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = open(path, "a+b")
        try:
            locked = _flock(handle, path, wait)
        except BaseException:
            handle.close()
            raise
        if not locked or _same_file(handle, path):
            break
        handle.close()
    try:
        yield locked
    finally:
        if remove and locked:
            with contextlib.suppress(OSError):
                path.unlink()  # still held: a waiter that locks the deleted file retries (see above)
        handle.close()


LOCK_NAME = ".progaug.lock"
"""The lock file :func:`lock_folder` keeps in an output folder."""


class OutputLocked(RuntimeError):
    """Another process holds the lock of an output folder."""


@contextlib.contextmanager
def lock_folder(folder: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Hold an exclusive :func:`file_lock` on ``folder/.progaug.lock`` (non-blocking), so that two
    processes never write one output folder at once.

    Args:
        folder: The output folder (created if missing).
        what: The command, for the message (e.g. ``"progaug precompute"``).

    Raises:
        NotADirectoryError: ``folder`` is a file.
        OutputLocked: Another process holds the lock.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file, not a folder: choose another --out")
    path = folder / LOCK_NAME
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(path))
        except BlockingIOError:
            raise OutputLocked(f"{folder} is in use by another {what} process (lock {path}); wait for it or choose another --out") from None
        yield
