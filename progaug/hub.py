"""Pretrained pairs: a registry, a download cache, and ``load_pair(name_or_path_or_url)``.

- Registry entries map a name to files (URL, size, sha256); the embedded demo pair resolves to the
  files installed inside the package.
- Files are downloaded by :func:`progaug.download.download` (pinned sha256, time limits, a lock and
  per-process temporary files; every network failure is a :class:`DownloadError`, an ``OSError``).
- A pair published at a URL is ``BASE/card.json`` plus the weight files it names, and optionally
  ``BASE/margin_calibration.json`` (fetched with the card, so that its margin labels are the default too). Online, every load
  fetches the card again (it is small) and downloads the files whose sha256 changed, so a pair replaced
  on the server is never loaded stale; if the server cannot be reached, a valid cached pair is used with
  a warning. A cached card that fails validation is fetched again.
- Cache folder: ``$PROGAUG_HOME`` or ``platformdirs.user_cache_dir("progaug")``. ``PROGAUG_OFFLINE=1``
  never touches the network, says which file is missing, and warns that a cached URL pair is unchecked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from progaug.download import ENV_OFFLINE, DownloadError, DownloadTimeout, download, download_deadline, fetch_bytes, offline
from progaug.fileio import atomic_write_bytes
from progaug.margin import CALIBRATION_FILE, parse_calibration
from progaug.pair import ROLES, Pair, load_pair_dir, parse_card, read_card

__all__ = [
    "PAIRS", "DownloadError", "DownloadTimeout", "PairEntry", "RemoteFile", "cache_dir", "download",
    "download_deadline", "embedded_pair_dir", "load_pair", "pair_dir",
]

ENV_HOME = "PROGAUG_HOME"
CARD_MAX_BYTES = 1 << 20


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


def embedded_pair_dir(name: str) -> Path:
    """Installed folder of an embedded pair."""
    folder = Path(str(resources.files("progaug").joinpath("pairs", name)))
    if not (folder / "card.json").is_file():
        raise FileNotFoundError(f"the embedded pair {name!r} is not installed at {folder}")
    return folder


# ------------------------------------------------------------------------------------------- pairs


def pair_dir(name_or_url: str) -> Path:
    """Local folder of a registry pair or a pair URL, downloading what is missing or changed.

    Raises:
        ValueError: Unknown name, an invalid card, or a file with the wrong sha256.
        FileNotFoundError: Offline and a file is not cached.
        DownloadError: A file could not be downloaded.
    """
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


def _cached_card(card_path: Path, why: Exception) -> dict[str, Any]:
    """The cached card when the server cannot be asked; ``why`` is raised if there is no valid one."""
    try:
        return read_card(card_path)
    except (OSError, ValueError) as exc:
        raise why from exc


def _pair_from_url(base: str) -> Path:
    """A pair published as ``BASE/card.json`` + the weight files it names (checked by the card's sha256).

    The card is fetched on every call (unless offline) and written to the cache only after the files it
    names are in place, so the cached card always describes files that were verified.
    """
    folder = cache_dir() / "pairs" / ("url-" + hashlib.sha256(base.encode()).hexdigest()[:16])
    card_url, card_path = f"{base}/card.json", folder / "card.json"
    fresh: bytes | None = None
    if offline():
        if not card_path.is_file():
            raise FileNotFoundError(f"{card_path} is missing and {ENV_OFFLINE} is set, so {card_url} was not fetched; "
                                    f"unset {ENV_OFFLINE} to download the pair")
        try:
            card = read_card(card_path)
        except ValueError as exc:
            raise ValueError(f"{exc}; unset {ENV_OFFLINE} to fetch {card_url} again") from exc
        warnings.warn(f"{ENV_OFFLINE} is set: using the cached pair {folder} without checking {card_url} for changes",
                      stacklevel=3)
    else:
        try:
            fresh = fetch_bytes(card_url, max_bytes=CARD_MAX_BYTES)
        except DownloadError as exc:
            card = _cached_card(card_path, exc)
            warnings.warn(f"{exc}; using the cached pair {folder}, which may be out of date", stacklevel=3)
        else:
            card = parse_card(fresh, card_url)
    for role in ROLES:
        download(f"{base}/{card[role]['file']}", folder / card[role]["file"], card[role]["sha256"])
    if fresh is not None:
        _fetch_calibration(base, folder)
        if not card_path.is_file() or card_path.read_bytes() != fresh:
            atomic_write_bytes(card_path, fresh)
    return folder


def _fetch_calibration(base: str, folder: Path) -> None:
    """The pair's published ``margin_calibration.json`` (optional) into ``folder``, so that ``labels="auto"`` gives
    margin labels as with a local pair: fetched with the card, checked as a calibration before it is written
    (whether it fits the weights is checked on use, :attr:`progaug.pair.Pair.margin_calibration`); a 404 removes
    a cached one (the publisher withdrew it); another failure keeps the cached one with a warning."""
    url, path = f"{base}/{CALIBRATION_FILE}", folder / CALIBRATION_FILE
    try:
        body = fetch_bytes(url, max_bytes=CARD_MAX_BYTES)
    except DownloadError as exc:
        if exc.status == 404:
            path.unlink(missing_ok=True)
        elif path.is_file():
            warnings.warn(f"{exc}; using the cached {path}, which may be out of date", stacklevel=4)
        return
    parse_calibration(body, url)
    if not path.is_file() or path.read_bytes() != body:
        atomic_write_bytes(path, body)


def load_pair(name_or_path: str | os.PathLike[str], *, device: torch.device | str = "cpu") -> Pair:
    """Load a pair from a registry name (e.g. ``"hgsc-demo"``), a pair folder or an http(s) URL.

    Every weight file is checked against its sha256 and loaded from safetensors only.

    Raises:
        FileNotFoundError: Not a name, folder or URL; or offline and not cached.
        ValueError: An invalid card, a wrong sha256, or a model of the wrong attention priority.
        DownloadError: The pair could not be downloaded (an ``OSError``).
    """
    text = str(name_or_path)
    if text in PAIRS or text.startswith(("http://", "https://")):
        return load_pair_dir(pair_dir(text), device=device)
    path = Path(text)
    if path.is_dir():
        return load_pair_dir(path, device=device)
    raise FileNotFoundError(f"pair {text!r} is neither a registry name {sorted(PAIRS)}, a folder, nor an http(s) URL")
