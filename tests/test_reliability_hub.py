"""Reliability of the hub: no traceback, no hang, no silent wrong result.

Every test talks to local servers on 127.0.0.1 only and finishes in a few seconds; deadlines are set
through ``PROGAUG_DOWNLOAD_TIMEOUT`` or the ``deadline``/``timeout`` arguments.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

from progaug import hub
from progaug.checkpoint import save_unet
from progaug.download import _host_tag
from progaug.pair import load_pair_dir, write_card

from conftest import tiny_unet
from test_hub import Server

PAYLOAD = bytes(range(256)) * 64  # 16 KiB
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


class SilentServer:
    """Accepts connections and never answers; hangs up after ``close_after`` seconds."""

    def __init__(self, close_after: float = 5.0) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.close_after = close_after

    def __enter__(self) -> SilentServer:
        self.timer = threading.Timer(self.close_after, self.sock.close)
        self.timer.daemon = True
        self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.timer.cancel()
        self.sock.close()


class HeaderTrickleServer(SilentServer):
    """Sends a status line, then one byte of a header every ``drip`` seconds, for ``close_after`` seconds."""

    def __init__(self, drip: float = 0.2, close_after: float = 8.0) -> None:
        super().__init__(close_after)
        self.drip = drip
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        end = time.monotonic() + self.close_after
        with contextlib.suppress(OSError):
            conn, _ = self.sock.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-A: ")
                while time.monotonic() < end:
                    conn.sendall(b"a")
                    time.sleep(self.drip)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("PROGAUG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PROGAUG_OFFLINE", raising=False)
    monkeypatch.delenv("PROGAUG_DOWNLOAD_TIMEOUT", raising=False)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith((".part", ".lock", ".tmp")))


def publish(folder: Path, target_seed: int = 1, card_edit=None) -> dict[str, bytes]:
    """Files of a tiny pair as served under ``p/``; ``card_edit(card)`` may change the card's dict."""
    folder.mkdir(parents=True, exist_ok=True)
    save_unet(tiny_unet("global"), folder / "source.safetensors")
    save_unet(tiny_unet("local", seed=target_seed), folder / "target.safetensors")
    write_card(folder, {"direction": {"source_class": "a", "target_class": "b"}, "diffusion": {},
                        "source": {"attention": "global"}, "target": {"attention": "local"}})
    files = {f"p/{p.name}": p.read_bytes() for p in folder.iterdir()}
    if card_edit is not None:
        card = json.loads(files["p/card.json"])
        card_edit(card)
        files["p/card.json"] = json.dumps(card).encode()
    return files


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ fault 1: a stale cached card


class TestCardRefresh:
    def test_pair_replaced_on_server_is_loaded_new(self, tmp_path):
        v1, v2 = publish(tmp_path / "v1"), publish(tmp_path / "v2", target_seed=2)
        files = dict(v1)
        with Server(files) as s:
            assert hub.load_pair(f"{s.url}/p").card["target"]["sha256"] == sha(v1["p/target.safetensors"])
            files.update(v2)
            s.hits.clear()
            pair = hub.load_pair(f"{s.url}/p")
        assert pair.card["target"]["sha256"] == sha(v2["p/target.safetensors"])
        assert (pair.path / "target.safetensors").read_bytes() == v2["p/target.safetensors"]
        # the unchanged source is kept; the card and the optional calibration are asked for on every load
        assert sorted(s.hits) == ["/p/card.json", "/p/margin_calibration.json", "/p/target.safetensors"]

    def test_corrected_card_replaces_a_failing_one(self, tmp_path):
        good = publish(tmp_path / "pub")
        files = {**good, "p/card.json": good["p/card.json"].replace(sha(good["p/target.safetensors"]).encode(), b"0" * 64)}
        with Server(files) as s:
            with pytest.raises(ValueError, match="sha256 mismatch"):
                hub.load_pair(f"{s.url}/p")
            files["p/card.json"] = good["p/card.json"]
            assert hub.load_pair(f"{s.url}/p").classes == ("a", "b")

    def test_invalid_cached_card_is_fetched_again(self, tmp_path):
        files = publish(tmp_path / "pub")
        with Server(files) as s:
            pair = hub.load_pair(f"{s.url}/p")
            (pair.path / "card.json").write_text('{"format": "progaug.pair/1"')
            assert hub.load_pair(f"{s.url}/p").classes == ("a", "b")
        assert (pair.path / "card.json").read_bytes() == files["p/card.json"]

    def test_offline_uses_the_cache_and_says_so(self, tmp_path, monkeypatch):
        files = publish(tmp_path / "pub")
        with Server(files) as s:
            hub.load_pair(f"{s.url}/p")
            monkeypatch.setenv("PROGAUG_OFFLINE", "1")
            s.hits.clear()
            with pytest.warns(UserWarning, match=r"PROGAUG_OFFLINE is set: using the cached pair .* without checking .*/p/card.json"):
                assert hub.load_pair(f"{s.url}/p").classes == ("a", "b")
            assert s.hits == []

    def test_offline_invalid_cached_card_says_how_to_fix(self, tmp_path, monkeypatch):
        files = publish(tmp_path / "pub")
        with Server(files) as s:
            card = hub.load_pair(f"{s.url}/p").path / "card.json"
        card.write_text("{}")
        monkeypatch.setenv("PROGAUG_OFFLINE", "1")
        with pytest.raises(ValueError, match=r"card.json: missing key 'format'; unset PROGAUG_OFFLINE to fetch"):
            hub.load_pair(f"{s.url}/p")

    def test_unreachable_server_falls_back_to_the_cache_with_a_warning(self, tmp_path):
        files = publish(tmp_path / "pub")
        with Server(files) as s:
            hub.load_pair(f"{s.url}/p")
        with pytest.warns(UserWarning, match=r"could not download .*/p/card.json: .*using the cached pair"):
            assert hub.load_pair(f"{s.url}/p").classes == ("a", "b")


# ----------------------------------------------------------------- fault 2: hangs and leftovers


class TestDeadlines:
    def test_trickling_server_stops_at_the_deadline(self, tmp_path, monkeypatch):
        monkeypatch.setenv("PROGAUG_DOWNLOAD_TIMEOUT", "1")
        with Server({"w.bin": PAYLOAD[:40]}, drip=0.1) as s:
            start = time.monotonic()
            with pytest.raises(hub.DownloadTimeout, match=rf"could not download {s.url}/w.bin: not complete within the 1 s deadline"):
                hub.download(f"{s.url}/w.bin", tmp_path / "w.bin", sha(PAYLOAD[:40]))
            assert time.monotonic() - start < 3
        assert leftovers(tmp_path) == [] and not (tmp_path / "w.bin").exists()

    def test_silent_server_times_out(self, tmp_path, monkeypatch):
        monkeypatch.setenv("PROGAUG_DOWNLOAD_TIMEOUT", "1")
        with SilentServer() as s:
            start = time.monotonic()
            with pytest.raises(hub.DownloadTimeout, match=rf"could not download {s.url}/w.bin: no data for 1 s"):
                hub.download(f"{s.url}/w.bin", tmp_path / "w.bin", DIGEST)
            assert time.monotonic() - start < 3
        assert leftovers(tmp_path) == []

    def test_trickled_headers_stop_at_the_deadline(self, tmp_path, monkeypatch):
        """Issue 22: the deadline covers the status line and the headers, not only the body."""
        monkeypatch.setenv("PROGAUG_DOWNLOAD_TIMEOUT", "1")
        with HeaderTrickleServer() as s:
            start = time.monotonic()
            with pytest.raises(hub.DownloadTimeout, match=rf"could not download {s.url}/p/card.json: not complete within the 1 s deadline"):
                hub.load_pair(f"{s.url}/p")
            assert time.monotonic() - start < 3
        assert leftovers(tmp_path) == []

    @pytest.mark.parametrize("text", ["maybe", "2", "offline"])
    def test_offline_setting_that_is_neither_yes_nor_no_is_named(self, tmp_path, monkeypatch, text):
        """Issue 22: PROGAUG_OFFLINE=maybe went online silently."""
        monkeypatch.setenv("PROGAUG_OFFLINE", text)
        with Server({"w.bin": PAYLOAD}) as s:
            with pytest.raises(ValueError, match=rf"PROGAUG_OFFLINE must be 1, true, yes or on \(offline\) or 0, false, no, off or empty \(online\), got '{text}'"):
                hub.download(f"{s.url}/w.bin", tmp_path / "w.bin", DIGEST)
            assert s.hits == []
        for text in ("0", "off", " No ", ""):
            monkeypatch.setenv("PROGAUG_OFFLINE", text)
            assert not hub.offline()

    def test_bad_deadline_setting_is_named(self, tmp_path, monkeypatch):
        for text in ("soon", "0", "-5"):
            monkeypatch.setenv("PROGAUG_DOWNLOAD_TIMEOUT", text)
            with pytest.raises(ValueError, match=f"PROGAUG_DOWNLOAD_TIMEOUT must be .*got '{text}'"):
                hub.download("http://127.0.0.1:9/w.bin", tmp_path / "w.bin", DIGEST)

    def test_failed_download_leaves_no_lock_or_part(self, tmp_path):
        with Server({}) as s:
            with pytest.raises(hub.DownloadError, match="HTTP 404"):
                hub.download(f"{s.url}/w.bin", tmp_path / "w.bin", DIGEST)
        assert leftovers(tmp_path) == []

    def test_stale_parts_of_dead_processes_are_removed(self, tmp_path):
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        alive = os.getppid()
        host = _host_tag()
        elsewhere = "0" * 8 if host != "0" * 8 else "1" * 8
        stale_dead = tmp_path / f".w.bin.p{dead.pid}h{host}.abcd1234.part"
        stale_elsewhere = tmp_path / f".w.bin.p{alive}h{elsewhere}.abcd1234.part"  # another host's, two hours old
        live_elsewhere = tmp_path / f".w.bin.p{alive}h{elsewhere}.efgh5678.part"
        live = tmp_path / f".w.bin.p{alive}h{host}.zzzz9999.part"
        other = tmp_path / ".w.bin2.abcdefgh.part"
        unknown = tmp_path / ".w.bin.abcdefgh.part"  # not a name progaug gives its temporary files
        for p in (stale_dead, stale_elsewhere, live_elsewhere, live, other, unknown):
            p.write_bytes(b"half")
        two_hours_ago = time.time() - 7200
        for p in (stale_elsewhere, unknown):
            os.utime(p, (two_hours_ago, two_hours_ago))
        with Server({"w.bin": PAYLOAD}) as s:
            hub.download(f"{s.url}/w.bin", tmp_path / "w.bin", DIGEST)
        assert leftovers(tmp_path) == sorted([live_elsewhere.name, live.name, other.name, unknown.name])

    def test_lock_held_elsewhere_does_not_hang(self, tmp_path):
        import fcntl

        lock = open(tmp_path / "w.bin.lock", "a+b")
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        release = threading.Timer(6, lock.close)  # bounds the test if the wait were unbounded
        release.daemon = True
        release.start()
        try:
            with Server({"w.bin": PAYLOAD}) as s:
                start = time.monotonic()
                with pytest.warns(UserWarning, match=r"w.bin.lock is still held by another process after 1 s"):
                    hub.download(f"{s.url}/w.bin", tmp_path / "w.bin", DIGEST, timeout=0.5, deadline=0.5)
                assert time.monotonic() - start < 3
        finally:
            release.cancel()
            lock.close()
        assert (tmp_path / "w.bin").read_bytes() == PAYLOAD

    def test_progress_bar_on_a_terminal(self, tmp_path, monkeypatch):
        class Terminal(io.StringIO):
            def isatty(self) -> bool:
                return True

        terminal = Terminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        with Server({"w.bin": PAYLOAD}) as s:
            hub.download(f"{s.url}/w.bin", tmp_path / "w.bin", DIGEST)
        assert "w.bin:" in terminal.getvalue() and "16.0k" in terminal.getvalue()

    def test_lock_file_removed_after_success(self, tmp_path):
        with Server({"w.bin": PAYLOAD}) as s:
            hub.download(f"{s.url}/w.bin", tmp_path / "w.bin", DIGEST)
        assert leftovers(tmp_path) == []


# ------------------------------------------------------------- fault 3: a clear error, one line


class TestUnreachable:
    def test_closed_port_raises_one_line_download_error(self):
        url = closed_port_url()
        with pytest.raises(hub.DownloadError) as info:
            hub.load_pair(f"{url}/pair/")
        assert str(info.value) == f"could not download {url}/pair/card.json: Connection refused"
        assert isinstance(info.value, OSError)

    def test_cli_shows_one_line(self, capsys):
        from progaug.cli import main

        url = closed_port_url()
        assert main(["progressive", "--pair", f"{url}/pair/"]) != 0
        err = capsys.readouterr().err
        assert err == f"progaug: error: could not download {url}/pair/card.json: Connection refused\n"


# ---------------------------------------------------------------------- fault 4: card schema


class TestCardSchema:
    @pytest.mark.parametrize(("drop", "key"), [
        (("target",), "target"), (("direction",), "direction"), (("diffusion",), "diffusion"),
        (("source", "sha256"), "source.sha256"), (("direction", "target_class"), "direction.target_class"),
    ])
    def test_missing_key_named(self, tmp_path, drop, key):
        folder = tmp_path / "pub"
        publish(folder)
        card = json.loads((folder / "card.json").read_text())
        parent = card if len(drop) == 1 else card[drop[0]]
        del parent[drop[-1]]
        (folder / "card.json").write_text(json.dumps(card))
        with pytest.raises(ValueError, match=rf"pub/card\.json: missing key '{key}'$"):
            load_pair_dir(folder)

    @pytest.mark.parametrize(("path", "value", "message"), [
        (("direction",), "a->b", "key 'direction' must be an object, got str 'a->b'"),
        (("direction", "source_class"), 3, "key 'direction.source_class' must be a string, got int 3"),
        (("target", "file"), "../x.safetensors", "key 'target.file' must be a plain file name"),
        (("source", "sha256"), "abc", "key 'source.sha256' must be 64 lowercase hex digits, got 'abc'"),
        (("source", "attention"), "middle", "key 'source.attention' must be 'global' or 'local', got 'middle'"),
        (("format",), "other/1", "is not a progaug pair card"),
    ])
    def test_bad_value_named(self, tmp_path, path, value, message):
        folder = tmp_path / "pub"
        publish(folder)
        card = json.loads((folder / "card.json").read_text())
        parent = card if len(path) == 1 else card[path[0]]
        parent[path[-1]] = value
        (folder / "card.json").write_text(json.dumps(card))
        with pytest.raises(ValueError, match="card.json.*" + message.replace("(", r"\(").replace(".", r"\.")):
            load_pair_dir(folder)

    def test_card_not_an_object(self, tmp_path):
        folder = tmp_path / "pub"
        publish(folder)
        (folder / "card.json").write_text("[1, 2]")
        with pytest.raises(ValueError, match=r"card\.json: a pair card must be a JSON object, got list"):
            load_pair_dir(folder)

    def test_url_card_missing_key_names_the_url(self, tmp_path):
        files = publish(tmp_path / "pub", card_edit=lambda card: card.pop("direction"))
        with Server(files) as s:
            with pytest.raises(ValueError, match=rf"^{s.url}/p/card\.json: missing key 'direction'$"):
                hub.load_pair(f"{s.url}/p")
            assert s.hits == ["/p/card.json"]  # refused before any weight file is fetched
        assert not list((tmp_path / "home").rglob("card.json"))


def test_no_warnings_on_a_normal_online_load(tmp_path):
    files = publish(tmp_path / "pub")
    with Server(files) as s, warnings.catch_warnings():
        warnings.simplefilter("error")
        hub.load_pair(f"{s.url}/p")
        hub.load_pair(f"{s.url}/p")
