"""Pretrained pairs: a registry, a download cache, and ``load_pair(name_or_path_or_url)``.

- Registry entries map a name to files (URL, size, sha256); the embedded demo pair resolves to the
  files installed inside the package.
- Downloads stream with ``requests`` into a unique temporary file in the cache folder, hashing as they
  go, are checked against the pinned sha256 and moved into place with ``os.replace``; a failure deletes
  the temporary file, a mismatch raises an error naming expected and got. A file lock makes concurrent
  processes (DataLoader workers, torchrun ranks) download once; each still writes its own temporary
  file, because locks silently succeed on some network filesystems.
- Cache folder: ``$PROGAUG_HOME`` or ``platformdirs.user_cache_dir("progaug")``. ``PROGAUG_OFFLINE=1``
  never touches the network and says which file is missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import torch

from progaug.pair import Pair, load_pair_dir

__all__ = ["PAIRS", "PairEntry", "RemoteFile", "cache_dir", "download", "embedded_pair_dir", "load_pair", "pair_dir"]

ENV_HOME = "PROGAUG_HOME"
ENV_OFFLINE = "PROGAUG_OFFLINE"


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """A file to download: where from, how big, and its sha256."""

    name: str
    url: str
    sha256: str
    size: int | None = None


@dataclasses.dataclass(frozen=True)
class PairEntry:
    """A registry entry: either embedded in the package or a set of remote files."""

    name: str
    description: str
    embedded: bool = False
    files: tuple[RemoteFile, ...] = ()


PAIRS: dict[str, PairEntry] = {
    "hgsc-demo": PairEntry(
        "hgsc-demo",
        "HGSC stroma -> tumour, 64 px, trained on the bundled demo tiles (installed with progaug)",
        embedded=True,
    ),
}


def cache_dir() -> Path:
    """``$PROGAUG_HOME`` or the platform's user cache folder for progaug (not created here)."""
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("progaug"))


def _offline() -> bool:
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in ("1", "true", "yes", "on")


def embedded_pair_dir(name: str) -> Path:
    """Installed folder of an embedded pair."""
    folder = Path(str(resources.files("progaug").joinpath("pairs", name)))
    if not (folder / "card.json").is_file():
        raise FileNotFoundError(f"the embedded pair {name!r} is not installed at {folder}")
    return folder


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (POSIX ``flock``; no lock where unavailable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        try:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        except (ImportError, OSError):  # Windows or a filesystem without locks: temp files still keep it safe
            pass
        yield


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: str | os.PathLike[str], sha256: str | None, *, size: int | None = None, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` once, checked against ``sha256`` (None: no pinned hash).

    Returns:
        ``dest``, complete and verified.

    Raises:
        FileNotFoundError: ``PROGAUG_OFFLINE`` is set and ``dest`` is missing.
        ValueError: The downloaded bytes have another sha256 or size (the file is deleted).
        OSError: The transfer failed (nothing is left behind).
    """
    dest = Path(dest)
    if dest.is_file() and (sha256 is None or _sha256(dest) == sha256):
        return dest
    if _offline():
        raise FileNotFoundError(
            f"{dest} is missing and {ENV_OFFLINE} is set, so it was not downloaded from {url}; "
            f"put the file there (sha256 {sha256}) or unset {ENV_OFFLINE}"
        )
    with _file_lock(dest.with_name(dest.name + ".lock")):
        if dest.is_file() and (sha256 is None or _sha256(dest) == sha256):
            return dest  # another process finished it while we waited
        _fetch(url, dest, sha256, size, timeout)
    return dest


def _fetch(url: str, dest: Path, sha256: str | None, size: int | None, timeout: float) -> None:
    import requests

    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest, written = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out, requests.get(url, stream=True, timeout=timeout) as response:
            response.raise_for_status()
            expected_len = response.headers.get("Content-Length")
            for chunk in response.iter_content(chunk_size=1 << 20):
                out.write(chunk)
                digest.update(chunk)
                written += len(chunk)
            if expected_len is not None and written != int(expected_len):
                raise OSError(f"{url}: connection closed after {written} of {expected_len} bytes")
        got = digest.hexdigest()
        if sha256 is not None and got != sha256:
            raise ValueError(f"{url}: sha256 mismatch, expected {sha256} got {got}; the download was deleted")
        if size is not None and written != size:
            raise ValueError(f"{url}: size mismatch, expected {size} bytes got {written}; the download was deleted")
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except requests.RequestException as exc:
        raise OSError(f"{url}: download failed: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def pair_dir(name_or_url: str) -> Path:
    """Local folder of a registry pair or a pair URL, downloading what is missing."""
    if name_or_url in PAIRS:
        entry = PAIRS[name_or_url]
        if entry.embedded:
            return embedded_pair_dir(entry.name)
        folder = cache_dir() / "pairs" / entry.name
        for f in entry.files:
            download(f.url, folder / f.name, f.sha256, size=f.size)
        return folder
    if name_or_url.startswith(("http://", "https://")):
        return _pair_from_url(name_or_url.rstrip("/"))
    raise ValueError(f"unknown pair {name_or_url!r}: not a registry name {sorted(PAIRS)}, a folder or an http(s) URL")


def _pair_from_url(base: str) -> Path:
    """A pair published as ``BASE/card.json`` + the weight files it names (checked by the card's sha256)."""
    folder = cache_dir() / "pairs" / ("url-" + hashlib.sha256(base.encode()).hexdigest()[:16])
    card_path = download(f"{base}/card.json", folder / "card.json", None)
    try:
        card = json.loads(card_path.read_text())
        files = [(card[role]["file"], card[role]["sha256"]) for role in ("source", "target")]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        card_path.unlink(missing_ok=True)
        raise ValueError(f"{base}/card.json is not a progaug pair card: {exc}") from exc
    for name, digest in files:
        if "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"{base}/card.json names an unsafe file {name!r}")
        download(f"{base}/{name}", folder / name, digest)
    return folder


def load_pair(name_or_path: str | os.PathLike[str], *, device: torch.device | str = "cpu") -> Pair:
    """Load a pair from a registry name (e.g. ``"hgsc-demo"``), a pair folder or an http(s) URL.

    Every weight file is checked against its sha256 and loaded from safetensors only.
    """
    text = str(name_or_path)
    if text in PAIRS or text.startswith(("http://", "https://")):
        return load_pair_dir(pair_dir(text), device=device)
    path = Path(text)
    if path.is_dir():
        return load_pair_dir(path, device=device)
    raise FileNotFoundError(f"pair {text!r} is neither a registry name {sorted(PAIRS)}, a folder, nor an http(s) URL")
