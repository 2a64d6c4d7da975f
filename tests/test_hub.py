"""Pair registry and download cache, against local HTTP servers on 127.0.0.1."""

import hashlib
import http.server
import multiprocessing
import threading
import time
from pathlib import Path

import pytest

from progaug import hub
from progaug.checkpoint import save_unet
from progaug.pair import write_card

from conftest import tiny_unet

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


class Server:
    """Serves files from a dict (tests may change it between requests) on 127.0.0.1; ``mode`` "ok",
    "cut" (half the bytes, then hang up) or "wrong"; ``drip`` > 0 sends the body one byte every ``drip``
    seconds after a correct Content-Length."""

    def __init__(self, files: dict[str, bytes], mode: str = "ok", delay: float = 0.0, drip: float = 0.0) -> None:
        self.files, self.mode, self.delay, self.drip, self.hits = files, mode, delay, drip, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.hits.append(self.path)
                body = outer.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                time.sleep(outer.delay)
                if outer.mode == "wrong":
                    body = body[::-1]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if outer.drip:
                    for i in range(len(body)):
                        self.wfile.write(body[i : i + 1])
                        self.wfile.flush()
                        time.sleep(outer.drip)
                    return
                self.wfile.write(body[: len(body) // 2] if outer.mode == "cut" else body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("PROGAUG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PROGAUG_OFFLINE", raising=False)


def _leftovers(folder: Path):
    return [p.name for p in folder.rglob("*") if p.name.endswith(".part")]


class TestDownload:
    def test_download_verified_and_cached(self, tmp_path):
        with Server({"w.bin": PAYLOAD}) as s:
            dest = hub.download(f"{s.url}/w.bin", tmp_path / "c" / "w.bin", DIGEST, size=len(PAYLOAD))
            assert dest.read_bytes() == PAYLOAD
            hub.download(f"{s.url}/w.bin", dest, DIGEST)
            assert s.hits == ["/w.bin"]

    def test_wrong_bytes_deleted_and_named(self, tmp_path):
        got = hashlib.sha256(PAYLOAD[::-1]).hexdigest()
        with Server({"w.bin": PAYLOAD}, mode="wrong") as s:
            with pytest.raises(ValueError, match=f"sha256 mismatch, expected {DIGEST} got {got}"):
                hub.download(f"{s.url}/w.bin", tmp_path / "w.bin", DIGEST)
        assert not (tmp_path / "w.bin").exists() and not _leftovers(tmp_path)

    def test_connection_cut_halfway(self, tmp_path):
        with Server({"w.bin": PAYLOAD}, mode="cut") as s:
            with pytest.raises(OSError):
                hub.download(f"{s.url}/w.bin", tmp_path / "w.bin", DIGEST)
        assert not (tmp_path / "w.bin").exists() and not _leftovers(tmp_path)

    def test_http_error(self, tmp_path):
        with Server({}) as s:
            with pytest.raises(hub.DownloadError, match=r"could not download .*/nothing.bin: HTTP 404"):
                hub.download(f"{s.url}/nothing.bin", tmp_path / "n.bin", DIGEST)

    def test_offline_never_touches_network(self, tmp_path, monkeypatch):
        monkeypatch.setenv("PROGAUG_OFFLINE", "1")
        with Server({"w.bin": PAYLOAD}) as s:
            with pytest.raises(FileNotFoundError, match=r"w.bin is missing and PROGAUG_OFFLINE is set"):
                hub.download(f"{s.url}/w.bin", tmp_path / "w.bin", DIGEST)
            assert s.hits == []

    def test_corrupt_cached_file_is_replaced(self, tmp_path):
        (tmp_path / "w.bin").write_bytes(b"stale")
        with Server({"w.bin": PAYLOAD}) as s:
            hub.download(f"{s.url}/w.bin", tmp_path / "w.bin", DIGEST)
        assert (tmp_path / "w.bin").read_bytes() == PAYLOAD

    def test_several_processes_download_once(self, tmp_path):
        with Server({"w.bin": PAYLOAD}, delay=0.5) as s:
            ctx = multiprocessing.get_context("fork")
            procs = [ctx.Process(target=hub.download, args=(f"{s.url}/w.bin", tmp_path / "w.bin", DIGEST)) for _ in range(4)]
            for p in procs:
                p.start()
            for p in procs:
                p.join(60)
            assert [p.exitcode for p in procs] == [0, 0, 0, 0]
            assert s.hits == ["/w.bin"]
        assert (tmp_path / "w.bin").read_bytes() == PAYLOAD


def _pair_files(tmp_path: Path) -> dict[str, bytes]:
    folder = tmp_path / "published"
    folder.mkdir()
    save_unet(tiny_unet("global"), folder / "source.safetensors")
    save_unet(tiny_unet("local", seed=1), folder / "target.safetensors")
    write_card(folder, {"direction": {"source_class": "a", "target_class": "b"}, "diffusion": {},
                        "source": {"attention": "global"}, "target": {"attention": "local"}})
    return {f"p/{p.name}": p.read_bytes() for p in folder.iterdir()}


class TestLoadPair:
    def test_from_url(self, tmp_path):
        files = _pair_files(tmp_path)
        with Server(files) as s:
            pair = hub.load_pair(f"{s.url}/p")
        assert pair.classes == ("a", "b") and pair.target.config.attention == "local"
        assert str(pair.path).startswith(str(tmp_path / "home"))

    def test_a_published_calibration_comes_with_the_pair_and_goes_when_withdrawn(self, tmp_path):
        import dataclasses
        import json

        from progaug.margin import MarginCalibration, write_calibration

        files = _pair_files(tmp_path)
        card = json.loads(files["p/card.json"])
        cal = MarginCalibration(slope=1e3, timesteps=(500, 900), weights_sha256=(card["source"]["sha256"], card["target"]["sha256"]))
        write_calibration(tmp_path / "published", cal)
        files["p/margin_calibration.json"] = (tmp_path / "published" / "margin_calibration.json").read_bytes()
        with Server(files) as s:
            assert hub.load_pair(f"{s.url}/p").margin_calibration == cal  # labels="auto" gives margin labels
            del files["p/margin_calibration.json"]  # the publisher withdraws it: the cached copy goes too
            assert hub.load_pair(f"{s.url}/p").margin_calibration is None
            files["p/margin_calibration.json"] = b'{"format": "progaug.margin_calibration/1", "slope": -1}'
            with pytest.raises(ValueError, match=r"/p/margin_calibration.json: `slope` must be a finite number > 0"):
                hub.load_pair(f"{s.url}/p")
            write_calibration(tmp_path / "published", dataclasses.replace(cal, weights_sha256=("0" * 64, "1" * 64)))
            files["p/margin_calibration.json"] = (tmp_path / "published" / "margin_calibration.json").read_bytes()
            pair = hub.load_pair(f"{s.url}/p")  # the pair loads; its calibration of other weights is refused on use
            with pytest.raises(ValueError, match="was fitted with other weights of this pair"):
                pair.margin_calibration

    def test_tampered_weights_refused(self, tmp_path):
        files = _pair_files(tmp_path)
        files["p/target.safetensors"] = files["p/target.safetensors"][:-4] + b"\x00\x00\x00\x00"
        with Server(files) as s:
            with pytest.raises(ValueError, match="sha256 mismatch"):
                hub.load_pair(f"{s.url}/p")

    def test_from_folder_and_errors(self, tmp_path):
        files = _pair_files(tmp_path)
        pair = hub.load_pair(tmp_path / "published")
        assert pair.source.config.attention == "global"
        with pytest.raises(FileNotFoundError, match="neither a registry name"):
            hub.load_pair(tmp_path / "nowhere")
        assert files

    def test_registry_entry_downloads(self, tmp_path, monkeypatch):
        files = _pair_files(tmp_path)
        with Server(files) as s:
            entry = hub.PairEntry("remote", "test", files=tuple(
                hub.RemoteFile(name.split("/")[1], f"{s.url}/{name}", hashlib.sha256(data).hexdigest(), len(data))
                for name, data in files.items()))
            monkeypatch.setitem(hub.PAIRS, "remote", entry)
            pair = hub.load_pair("remote")
            assert pair.path == tmp_path / "home" / "pairs" / "remote"
            hub.load_pair("remote")
            assert len(s.hits) == 3

    def test_cache_dir_default(self, monkeypatch):
        monkeypatch.delenv("PROGAUG_HOME")
        assert "progaug" in str(hub.cache_dir())


class TestEmbeddedPair:
    def test_hgsc_demo_loads_offline(self, monkeypatch):
        monkeypatch.setenv("PROGAUG_OFFLINE", "1")
        pair = hub.load_pair("hgsc-demo")
        assert pair.classes == ("stroma", "tumour") and pair.image_size == 64
        assert pair.source.config.attention == "global" and pair.target.config.attention == "local"
        assert pair.card["training"]["steps_done"] >= 8000 and pair.card["data"]["name"] == "hgsc"
        # the 0.2 pair: trained on the one-crop task with the 0.2 recipe
        assert pair.card["data"]["counts"] == {"stroma": 288, "tumour": 308}
        assert pair.card["training"]["loss_weighting"] == "min_snr" and pair.source.config.gaussian_skip == 0.5
        size = sum((pair.path / f).stat().st_size for f in ("source.safetensors", "target.safetensors"))
        assert size < 20 * 2**20
