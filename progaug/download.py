"""Downloading one file: a pinned sha256, time limits, a lock and per-process temporary files.

- A file streams with ``requests`` into a per-process temporary file beside its destination, hashing as
  it goes, is checked against the pinned sha256 and moved into place with ``os.replace``
  (:func:`progaug.fileio.atomic_writer`); a failure deletes the temporary file, a mismatch raises an
  error naming expected and got. A file lock (:func:`progaug.fileio.file_lock`) makes
  concurrent processes (DataLoader workers, torchrun ranks) download once; each still writes its own
  temporary file, because locks silently succeed on some network filesystems. Whoever takes the lock
  removes the temporary files of processes that died mid-download, and the lock file on release.
- Time limits: connecting gives up after 10 s, each wait for more bytes after ``timeout`` seconds
  (30), a whole transfer after ``$PROGAUG_DOWNLOAD_TIMEOUT`` seconds (600): a timer shuts the
  connection's socket when the deadline passes, so a server that trickles bytes, even of the status
  line or the headers, cannot keep a download alive for ever. Every network failure raises :class:`DownloadError` (an ``OSError``), one line:
  ``could not download <url>: <why>``. A tqdm bar on stderr shows progress on a terminal.
- ``PROGAUG_OFFLINE=1`` never touches the network and says which file is missing.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import io
import os
import re
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from progaug.fileio import atomic_writer, file_lock, sha256_file

__all__ = ["DownloadError", "DownloadTimeout", "download", "download_deadline", "fetch_bytes", "offline"]

ENV_OFFLINE = "PROGAUG_OFFLINE"
ENV_TIMEOUT = "PROGAUG_DOWNLOAD_TIMEOUT"
DEFAULT_DEADLINE_S = 600.0  # a whole transfer
SOCKET_TIMEOUT_S = 30.0  # each wait for more bytes
CONNECT_TIMEOUT_S = 10.0  # at most, for connecting
_CHUNK = 1 << 20
_STALE_AFTER_S = 3600.0  # a temporary file of unknown owner untouched this long is abandoned
_SHUT_GRACE_S = 0.25  # the deadline's timer fires this much later, so a read timeout as long as the deadline reports first


class DownloadError(OSError):
    """A file could not be downloaded; the message is ``could not download <url>: <why>``; ``status`` is the
    HTTP status when the server answered with an error (404: it has no such file), else None."""

    def __init__(self, *args: object, status: int | None = None) -> None:
        super().__init__(*args)
        self.status = status


class DownloadTimeout(DownloadError, TimeoutError):
    """A download ran past its connect/read timeout or its overall deadline."""


_YES, _NO = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def offline() -> bool:
    """Whether ``$PROGAUG_OFFLINE`` forbids the network.

    Raises:
        ValueError: The variable is set to something that is neither yes (``1``, ``true``, ``yes``,
            ``on``) nor no (``0``, ``false``, ``no``, ``off``, empty); a typo never means online.
    """
    text = os.environ.get(ENV_OFFLINE, "")
    if text.strip().lower() not in _YES + _NO:
        raise ValueError(f"{ENV_OFFLINE} must be 1, true, yes or on (offline) or 0, false, no, off or empty (online), got {text!r}")
    return text.strip().lower() in _YES


def download_deadline() -> float:
    """Seconds a whole transfer may take: ``$PROGAUG_DOWNLOAD_TIMEOUT``, default 600.

    Raises:
        ValueError: The variable is set but is not a number > 0.
    """
    text = os.environ.get(ENV_TIMEOUT, "").strip()
    if not text:
        return DEFAULT_DEADLINE_S
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{ENV_TIMEOUT} must be a number of seconds, got {text!r}") from None
    if not value > 0:
        raise ValueError(f"{ENV_TIMEOUT} must be > 0 seconds, got {text!r}")
    return value


# ------------------------------------------------------------------------ locks and temporary files


@contextlib.contextmanager
def _download_lock(path: Path, wait: float) -> Iterator[bool]:
    """:func:`progaug.fileio.file_lock` on ``path``, deleted on release; yields False where none could be
    taken, with a warning when another process still held it after ``wait`` seconds."""
    with contextlib.ExitStack() as stack:
        try:
            locked = stack.enter_context(file_lock(path, wait=wait, remove=True))
        except BlockingIOError:
            warnings.warn(f"{path} is still held by another process after {wait:g} s; downloading without it", stacklevel=3)
            locked = False
        yield locked


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _temp_prefix(dest: Path) -> str:
    """The start of this process's temporary file names beside ``dest``: they carry the process and the
    host (see :func:`_remove_stale`)."""
    return f".{dest.name}.p{os.getpid()}h{_host_tag()}."


_OURS = re.compile(r"p(\d+)h([0-9a-f]{8})\.[a-z0-9_]+\.part")


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # os.kill(pid, 0) would terminate the process on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, owned by someone else
        return True
    return True


def _remove_stale(dest: Path, max_age: float) -> None:
    """Delete temporary files of ``dest`` left by crashed processes; call only while holding its lock.

    A file of a dead process of this host goes at once; one of another host once untouched for
    ``max_age`` seconds (a live download writes at least every read timeout).
    """
    prefix, host = f".{dest.name}.", _host_tag()
    for path in dest.parent.glob(glob.escape(prefix) + "*.part"):
        rest = path.name[len(prefix):]
        ours = _OURS.fullmatch(rest)
        if not ours:
            continue  # another file's name
        if ours[2] == host:
            stale = int(ours[1]) != os.getpid() and not _pid_alive(int(ours[1]))
        else:
            try:
                stale = time.time() - path.stat().st_mtime > max_age
            except OSError:
                continue
        if stale:
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------- transfer


def _reason(exc: BaseException) -> str:
    """The innermost OS-level reason of a requests/urllib3 error (e.g. "Connection refused"), else its text."""
    todo, seen, text = [exc], set(), None
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(getattr(e, "strerror", None), str):
            return e.strerror
        if text is None and e.args and isinstance(e.args[0], str):
            text = e.args[0]
        todo += [x for x in (getattr(e, "reason", None), *e.args, e.__cause__, e.__context__) if isinstance(x, BaseException)]
    return text or str(exc) or type(exc).__name__


def _chunks(response: Any) -> Iterator[bytes]:
    """The body as it arrives: ``read1`` returns whatever came, so the deadline is checked often."""
    raw = response.raw
    if not hasattr(raw, "read1"):  # urllib3 < 2
        yield from response.iter_content(chunk_size=64 << 10)
        return
    while chunk := raw.read1(_CHUNK, decode_content=True):
        yield chunk


class _Deadline:
    """Shuts the sockets of one transfer down when its deadline passes, so that no phase of it (connect,
    status line, headers, body) outlasts the deadline, however slowly a server trickles its bytes
    (a per-read timeout never fires while bytes keep coming).

    The connections of :func:`_session` report their sockets to the deadline entered in their thread.
    """

    _current = threading.local()

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        _Deadline._current.value = self
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        _Deadline._current.value = None

    @staticmethod
    def watch(sock: socket.socket | None) -> None:
        """Put ``sock`` under the deadline of this thread's transfer, if there is one."""
        deadline = getattr(_Deadline._current, "value", None)
        if deadline is not None and sock is not None:
            with deadline._lock:
                deadline._sockets.append(sock)
                if deadline.expired:
                    _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    """Stop a socket's traffic both ways; a read blocked on it in another thread returns at once."""
    with contextlib.suppress(OSError):
        if sock.fileno() != -1:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)  # not SSLSocket's: no TLS goodbye to a stalled peer


@functools.cache
def _watched_adapter() -> type:
    """A ``requests`` adapter whose connections put their sockets under the current :class:`_Deadline`."""
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    def watched(base: type) -> type:
        class Watched(base):
            def _new_conn(self):  # noqa: ANN202 - urllib3's signature
                sock = super()._new_conn()
                _Deadline.watch(sock)
                return sock

            def connect(self) -> None:
                super().connect()
                _Deadline.watch(self.sock)  # the TLS socket over the one _new_conn gave

        return Watched

    pools = {"http": type("WatchedPool", (HTTPConnectionPool,), {"ConnectionCls": watched(HTTPConnection)}),
             "https": type("WatchedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": watched(HTTPSConnection)})}

    class WatchedAdapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pools

        def proxy_manager_for(self, proxy: str, **kwargs: Any):  # noqa: ANN201 - requests' signature
            manager = super().proxy_manager_for(proxy, **kwargs)
            if not proxy.lower().startswith("socks"):
                manager.pool_classes_by_scheme = pools
            return manager

    return WatchedAdapter


def _session():  # noqa: ANN202 - a requests.Session
    """A ``requests`` session whose every connection is under the current :class:`_Deadline`."""
    import requests

    session = requests.Session()
    for prefix in ("http://", "https://"):
        session.mount(prefix, _watched_adapter()())
    return session


def _late(url: str, deadline: float, written: int, total: int | None) -> DownloadTimeout:
    return DownloadTimeout(f"could not download {url}: not complete within the {deadline:g} s deadline ({written} of "
                           f"{total if total is not None else '?'} bytes); set {ENV_TIMEOUT} to allow longer")


def _body_length(response: Any) -> int | None:
    """The body's length from ``Content-Length``, or None when unknown or compressed."""
    total = response.headers.get("Content-Length")
    encoded = response.headers.get("Content-Encoding", "identity").lower() != "identity"
    return int(total) if total and total.isdigit() and not encoded else None


def _stream(url: str, out: BinaryIO, *, timeout: float, deadline: float, label: str | None,
            max_bytes: int | None = None) -> tuple[str, int]:
    """Write the body of ``url`` to ``out`` within ``deadline`` seconds; returns ``(sha256, bytes)``.

    Raises:
        DownloadTimeout: No connection or no bytes for ``timeout`` seconds, or past ``deadline`` (from
            the first byte sent to the last received: connect, status line, headers and body).
        DownloadError: Any other network failure, an HTTP error status, a short body, or more than
            ``max_bytes``.
    """
    import requests
    from tqdm import tqdm
    from urllib3.exceptions import HTTPError as Urllib3Error

    wait = min(timeout, deadline)
    connect = min(CONNECT_TIMEOUT_S, wait)
    start, digest, written, total = time.monotonic(), hashlib.sha256(), 0, None
    watchdog = _Deadline(deadline + _SHUT_GRACE_S)
    try:
        with watchdog, _session() as session, session.get(url, stream=True, timeout=(connect, wait)) as response:
            if response.status_code >= 400:
                raise DownloadError(f"could not download {url}: HTTP {response.status_code} {response.reason}", status=response.status_code)
            total = _body_length(response)
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, leave=False,
                      disable=None if label else True, dynamic_ncols=True) as bar:
                for chunk in _chunks(response):
                    out.write(chunk)
                    digest.update(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
                    if max_bytes is not None and written > max_bytes:
                        raise DownloadError(f"could not download {url}: larger than {max_bytes} bytes")
                    if time.monotonic() - start > deadline:
                        raise _late(url, deadline, written, total)
        if watchdog.expired:  # the sockets were shut: what came is not the whole body
            raise _late(url, deadline, written, total)
        if total is not None and written != total:
            raise DownloadError(f"could not download {url}: connection closed after {written} of {total} bytes")
    except DownloadError:
        raise
    except (requests.RequestException, Urllib3Error, OSError) as exc:
        raise _network_error(exc, url, watchdog.expired, deadline, connect, wait, written, total) from exc
    return digest.hexdigest(), written


def _network_error(exc: BaseException, url: str, expired: bool, deadline: float, connect: float, wait: float,
                   written: int, total: int | None) -> DownloadError:
    """The one-line :class:`DownloadError` of a failed transfer."""
    import requests
    from urllib3.exceptions import ReadTimeoutError

    if expired:
        return _late(url, deadline, written, total)
    if isinstance(exc, requests.ConnectTimeout):
        return DownloadTimeout(f"could not download {url}: no connection within {connect:g} s")
    if isinstance(exc, (requests.Timeout, ReadTimeoutError, socket.timeout)):
        return DownloadTimeout(f"could not download {url}: no data for {wait:g} s (after {written} bytes)")
    return DownloadError(f"could not download {url}: {_reason(exc)}")


def _complete(dest: Path, sha256: str | None) -> bool:
    return dest.is_file() and (sha256 is None or sha256_file(dest) == sha256)


def download(url: str, dest: str | os.PathLike[str], sha256: str | None, *, size: int | None = None,
             timeout: float | None = None, deadline: float | None = None) -> Path:
    """Download ``url`` to ``dest`` once, checked against ``sha256`` (None: no pinned hash).

    Args:
        url: Where from.
        dest: Where to; kept as it is if present with the right sha256.
        sha256: Expected hex digest, or None to accept any bytes (and any cached ``dest``).
        size: Expected size in bytes, or None.
        timeout: Seconds to wait for more bytes (default 30; connecting at most 10; both at most ``deadline``).
        deadline: Seconds the whole transfer may take (default :func:`download_deadline`).

    Returns:
        ``dest``, complete and verified.

    Raises:
        FileNotFoundError: ``PROGAUG_OFFLINE`` is set and ``dest`` is missing.
        ValueError: The downloaded bytes have another sha256 or size (the file is deleted).
        DownloadError: The transfer failed; ``DownloadTimeout`` if it timed out. Nothing is left behind.
    """
    dest = Path(dest)
    if _complete(dest, sha256):
        return dest
    if offline():
        raise FileNotFoundError(
            f"{dest} is missing and {ENV_OFFLINE} is set, so it was not downloaded from {url}; "
            f"put the file there (sha256 {sha256}) or unset {ENV_OFFLINE}"
        )
    deadline = download_deadline() if deadline is None else deadline
    timeout = SOCKET_TIMEOUT_S if timeout is None else timeout
    with _download_lock(dest.with_name(dest.name + ".lock"), wait=deadline + timeout) as locked:
        if locked:
            _remove_stale(dest, max(_STALE_AFTER_S, deadline + timeout))
        if _complete(dest, sha256):
            return dest  # another process finished it while we waited
        _fetch(url, dest, sha256, size, timeout=timeout, deadline=deadline)
    return dest


def _fetch(url: str, dest: Path, sha256: str | None, size: int | None, *, timeout: float, deadline: float) -> None:
    with atomic_writer(dest, prefix=_temp_prefix(dest), suffix=".part") as out:
        got, written = _stream(url, out, timeout=timeout, deadline=deadline, label=dest.name)
        if sha256 is not None and got != sha256:
            raise ValueError(f"{url}: sha256 mismatch, expected {sha256} got {got}; the download was deleted")
        if size is not None and written != size:
            raise ValueError(f"{url}: size mismatch, expected {size} bytes got {written}; the download was deleted")


def fetch_bytes(url: str, *, max_bytes: int) -> bytes:
    """A small file, in memory, under the same time limits as :func:`download`."""
    buffer = io.BytesIO()
    _stream(url, buffer, timeout=SOCKET_TIMEOUT_S, deadline=download_deadline(), label=None, max_bytes=max_bytes)
    return buffer.getvalue()
