"""Fault injection: each fault ends in a clear error naming the thing, or in the same bytes as an
uninterrupted run, with nothing half-written and no temporary file left (docs/reliability.md).

Downloads are in tests/test_reliability_hub.py, label rows and image dtypes in
tests/test_reliability_inputs.py.
"""

import errno
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from progaug.cache import ProgressiveCache
from progaug.checkpoint import save_unet
from progaug.cli import main
from progaug.data.images import load_rgb
from progaug.fileio import OutputLocked, lock_folder, safetensors_bytes, sha256_file

from conftest import tiny_unet
from test_precompute import files, run as precompute_run
from test_train import run as train_run

TINY = ["--tile-size", "32", "--model-channels", "16", "--channel-mult", "1", "2", "--attention-resolutions", "16",
        "--num-heads", "2", "--num-res-blocks", "1"]


def leftovers(folder):
    """Temporary files an interrupted write would leave."""
    return [p for p in folder.rglob("*") if p.name.endswith((".tmp", ".part"))]


@pytest.fixture
def folder(class_folders):
    return class_folders


class TestPrecomputeResumeVerifies:
    def test_zero_byte_image_is_generated_again(self, pair_dir, tmp_path, capsys):
        reference = files(precompute_run(pair_dir, tmp_path / "ref"))
        out = precompute_run(pair_dir, tmp_path / "c")
        (out / "manifest.json").unlink()  # as if killed before the end
        (out / "images" / "000004.png").write_bytes(b"")
        precompute_run(pair_dir, out, resume=True)
        assert "group 1 will be generated again" in capsys.readouterr().err
        assert files(out) == reference
        assert len(ProgressiveCache.open(out).load_images()) == 12

    def test_hand_edited_record_is_generated_again(self, pair_dir, tmp_path):
        out = precompute_run(pair_dir, tmp_path / "c")
        before = (out / "labels.csv").read_bytes()
        record = json.loads((out / "records" / "000002.json").read_text())
        record["rows"][0]["soft_label"] = 0.99
        (out / "records" / "000002.json").write_text(json.dumps(record))
        precompute_run(pair_dir, out, resume=True)
        assert (out / "labels.csv").read_bytes() == before

    @pytest.mark.parametrize("content", [b"", b"[1, 2", b'[{"file": "images/000000.png"}]'])
    def test_broken_or_old_record_is_generated_again(self, pair_dir, tmp_path, content):
        out = precompute_run(pair_dir, tmp_path / "c")
        before = (out / "labels.csv").read_bytes()
        (out / "records" / "000000.json").write_bytes(content)
        precompute_run(pair_dir, out, resume=True)
        assert (out / "labels.csv").read_bytes() == before

    def test_finished_cache_with_a_deleted_image_is_repaired(self, pair_dir, tmp_path):
        out = precompute_run(pair_dir, tmp_path / "c")
        reference = files(out)
        (out / "images" / "000007.png").unlink()
        with pytest.raises(FileNotFoundError, match="000007.png"):
            ProgressiveCache.open(out)
        precompute_run(pair_dir, out, resume=True)
        assert files(out) == reference
        ProgressiveCache.open(out)
        assert not leftovers(out)

    def test_resume_of_a_finished_cache_keeps_its_timing(self, pair_dir, tmp_path):
        out = precompute_run(pair_dir, tmp_path / "c")
        execution = json.loads((out / "manifest.json").read_text())["execution"]
        precompute_run(pair_dir, out, resume=True)
        assert json.loads((out / "manifest.json").read_text())["execution"] == execution

    def test_second_process_on_the_same_out_is_refused(self, pair_dir, tmp_path):
        out = tmp_path / "c"
        with lock_folder(out, "progaug precompute"):
            with pytest.raises(OutputLocked, match="in use by another progaug precompute process"):
                precompute_run(pair_dir, out)
        precompute_run(pair_dir, out)  # the lock is gone with its holder

    def test_changed_setting_is_named(self, pair_dir, tmp_path):
        out = precompute_run(pair_dir, tmp_path / "c")
        with pytest.raises(ValueError, match=r"other settings: config.steps: stored 6, now 5"):
            precompute_run(pair_dir, out, resume=True, steps=5)

    def test_zero_byte_run_file_names_the_file(self, pair_dir, tmp_path):
        out = precompute_run(pair_dir, tmp_path / "c")
        (out / "manifest.json").unlink()  # with a manifest, its settings are used (tests/test_reliability_cache.py)
        (out / "run.json").write_bytes(b"")
        with pytest.raises(ValueError, match=r"run.json is not valid JSON"):
            precompute_run(pair_dir, out, resume=True)


class TestSameBytes:
    def test_saving_the_same_weights_twice_gives_the_same_file(self, tmp_path):
        model = tiny_unet("global")
        digests = {save_unet(model, tmp_path / f"{i}.safetensors", metadata={"a": "1", "b": "2", "c": "3"}) for i in range(6)}
        assert len(digests) == 1

    def test_canonical_bytes_still_load(self):
        from safetensors.torch import load

        tensors = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(5, dtype=torch.float16)}
        data = safetensors_bytes(tensors, {"z": "1", "a": "2"})
        assert len(data[8:8 + int.from_bytes(data[:8], "little")]) % 8 == 0
        back = load(data)
        assert all(torch.equal(back[k], tensors[k]) for k in tensors)

    def test_resume_at_the_budget_rewrites_identical_pair_files(self, tmp_path):
        out = train_run(tmp_path / "p", 2)
        before = {n: sha256_file(out / n) for n in ("source.safetensors", "target.safetensors", "checkpoint.safetensors")}
        train_run(out, 2, resume=True)
        assert {n: sha256_file(out / n) for n in before} == before


class TestTrainFaults:
    def test_truncated_checkpoint_names_the_file(self, tmp_path):
        out = train_run(tmp_path / "p", 2)
        data = (out / "checkpoint.safetensors").read_bytes()
        (out / "checkpoint.safetensors").write_bytes(data[: len(data) // 2])
        with pytest.raises(ValueError, match=r"checkpoint.safetensors is not a readable progaug training state .*truncated"):
            train_run(out, 4, resume=True)

    def test_changed_setting_is_named(self, tmp_path):
        out = train_run(tmp_path / "p", 2)
        with pytest.raises(ValueError, match=r"Differences: train.lr: stored 0.0002, now 0.001"):
            train_run(out, 4, resume=True, lr=1e-3)

    def test_grid_missing_after_a_stop_is_drawn_on_resume(self, tmp_path):
        out = train_run(tmp_path / "p", 2)
        (out / "samples" / "step_0000002.png").unlink()
        train_run(out, 2, resume=True)
        assert (out / "samples" / "step_0000002.png").is_file()

    def test_stop_between_weights_and_card_says_resume(self, tmp_path, monkeypatch):
        import progaug.train as train_mod
        from progaug.pair import load_pair_dir

        out = train_run(tmp_path / "p", 2)

        def stopped(folder, card):
            raise KeyboardInterrupt  # after source/target.safetensors, before card.json

        monkeypatch.setattr(train_mod, "write_card", stopped)
        with pytest.raises(KeyboardInterrupt):
            train_run(out, 4, resume=True)
        with pytest.raises(ValueError, match=r"sha256 mismatch.*rerun the same train command with --resume"):
            load_pair_dir(out)
        monkeypatch.undo()
        assert load_pair_dir(train_run(out, 4, resume=True)).card["training"]["steps_done"] == 4

    def test_second_process_on_the_same_out_is_refused(self, tmp_path):
        with lock_folder(tmp_path / "p", "progaug train"):
            with pytest.raises(OutputLocked, match="in use by another progaug train process"):
                train_run(tmp_path / "p", 2)


class TestCliMessages:
    def _error(self, capsys, argv, rc=2):
        assert main(argv) == rc
        err = capsys.readouterr().err
        lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("progaug")]  # not tqdm's bar
        assert len(lines) == 1 and "Traceback" not in err, err
        return lines[0]

    def test_out_that_is_a_file(self, folder, tmp_path, capsys):
        target = tmp_path / "file"
        target.write_text("x")
        err = self._error(capsys, ["train", "--data", str(folder), "--out", str(target), "--train-steps", "1", *TINY])
        assert err == f"progaug: error: {target} is a file, not a folder: choose another --out"

    def test_full_disk(self, folder, tmp_path, capsys, monkeypatch):
        import progaug.fileio as fileio

        def full(path, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

        monkeypatch.setattr(fileio, "atomic_write_bytes", full)
        monkeypatch.setattr("progaug.train.atomic_write_bytes", full)
        err = self._error(capsys, ["train", "--data", str(folder), "--out", str(tmp_path / "p"), "--train-steps", "1",
                                   "--checkpoint-every", "1", "--batch-size", "2", *TINY])
        assert err.startswith("progaug: error: ") and err.endswith("checkpoint.safetensors: No space left on device")

    def test_truncated_checkpoint(self, folder, tmp_path, capsys):
        out = tmp_path / "p"
        base = ["train", "--data", str(folder), "--out", str(out), "--batch-size", "2", "--sample-grid-steps", "2", *TINY]
        assert main([*base, "--train-steps", "1"]) == 0
        path = out / "checkpoint.safetensors"
        path.write_bytes(path.read_bytes()[:100])
        err = self._error(capsys, [*base, "--train-steps", "2", "--resume"])
        assert str(path) in err and "truncated" in err

    def test_ctrl_c_prints_one_line_with_the_resume_command(self, folder, tmp_path, capsys, monkeypatch):
        def interrupted(*args, **kwargs):
            (tmp_path / "p").mkdir()
            (tmp_path / "p" / "checkpoint.safetensors").write_bytes(b"a first checkpoint")
            raise KeyboardInterrupt

        monkeypatch.setattr("progaug.train.train_pair", interrupted)
        out = tmp_path / "p"
        argv = ["train", "--data", str(folder), "--out", str(out), "--train-steps", "3", *TINY]
        err = self._error(capsys, argv, rc=130)
        assert err.startswith(f"progaug: interrupted: the finished part in {out} is kept")
        assert err.endswith(f"continue with: progaug {' '.join(argv)} --resume")

    def test_sigterm_is_reported_like_ctrl_c(self, folder, tmp_path, capsys, monkeypatch):
        import signal

        def terminated(*args, **kwargs):
            (tmp_path / "p").mkdir()
            (tmp_path / "p" / "checkpoint.safetensors").write_bytes(b"a first checkpoint")
            os.kill(os.getpid(), signal.SIGTERM)

        monkeypatch.setattr("progaug.train.train_pair", terminated)
        err = self._error(capsys, ["train", "--data", str(folder), "--out", str(tmp_path / "p"), *TINY], rc=143)
        assert err.startswith("progaug: stopped by SIGTERM: the finished part")
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


class TestCliInputs:
    """Issue 22: flags and environment a careless user gets wrong end in one line, rc 2, nothing written."""

    _error = TestCliMessages._error

    @pytest.mark.parametrize("command", ["train", "precompute", "progressive"])
    @pytest.mark.parametrize("device,message", [
        ("gpu", "`--device` must name a torch device such as 'cpu', 'cuda' or 'cuda:1', got 'gpu'"),
        ("cuda", "`--device` is 'cuda' but CUDA is not available on this machine (use 'cpu')"),
    ])
    def test_device_that_is_not_here(self, folder, tmp_path, capsys, monkeypatch, command, device, message):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        out = tmp_path / "out"
        extra = {"train": ["--data", str(folder), "--out", str(out), *TINY], "precompute": ["--out", str(out)],
                 "progressive": ["--out", str(out) + ".png"]}[command]
        assert self._error(capsys, [command, "--device", device, *extra]) == f"progaug: error: {message}"
        assert not list(tmp_path.glob("out*"))

    @pytest.mark.parametrize("argv,message", [
        (["precompute", "--source", ""], "--source must be 'hgsc' or a folder of source-class images, got ''"),
        (["precompute", "--n", "1000000000"], "`n` must be in [1, 10000000], got 1000000000"),
        (["progressive", "--out", "{tmp}"], "--out {tmp} is a folder; give the PNG file to write, e.g. {tmp}/progressive.png"),
        (["progressive", "--out", "{tmp}/strip.jpg"], "--out {tmp}/strip.jpg must end in .png: the strip is written as a PNG"),
        (["train", "--data", "{folder}", "--tile-size", "0"], "--tile-size must be in [32, 256] (the U-Nets' image_size), got 0"),
        (["train", "--data", "{folder}", "--tile-size", "-5"], "--tile-size must be in [32, 256] (the U-Nets' image_size), got -5"),
    ])
    def test_bad_flag_is_named(self, folder, tmp_path, capsys, argv, message):
        argv = [a.format(tmp=tmp_path, folder=folder) for a in argv]
        if "--out" not in argv:
            argv += ["--out", str(tmp_path / "out")]
        assert self._error(capsys, [*argv, "--device", "cpu"]) == "progaug: error: " + message.format(tmp=tmp_path)
        assert not (tmp_path / "out").exists() and not list(tmp_path.glob("*.jpg"))

    def test_train_with_one_class_folder(self, folder, tmp_path, capsys):
        shutil.rmtree(folder / "tumour")
        err = self._error(capsys, ["train", "--data", str(folder), "--out", str(tmp_path / "p"), "--device", "cpu", *TINY])
        assert err == (f"progaug: error: --data {folder} holds one class folder ('normal'); a pair needs two: "
                       f"root/<class A>/*.png and root/<class B>/*.png")

    @pytest.mark.parametrize("command", ["train", "precompute"])
    def test_environment_variable_that_is_not_an_integer(self, folder, tmp_path, capsys, monkeypatch, command):
        monkeypatch.setenv("WORLD_SIZE", "abc")
        extra = ["--data", str(folder), *TINY] if command == "train" else ["--n", "2", "--num-levels", "1", "--steps", "1"]
        err = self._error(capsys, [command, "--out", str(tmp_path / "out"), "--device", "cpu", *extra])
        assert err == "progaug: error: the environment variable WORLD_SIZE must be an integer >= 1, got 'abc'"
        assert not (tmp_path / "out").exists()

    def test_full_disk_names_the_file(self, tmp_path, capsys, monkeypatch):
        import progaug.fileio as fileio

        def full(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as the kernel reports it: no file name

        monkeypatch.setattr(fileio.os, "fsync", full)
        out = tmp_path / "out"
        err = self._error(capsys, ["precompute", "--out", str(out), "--device", "cpu", "--n", "2", "--num-levels", "1", "--steps", "1"])
        assert err == f"progaug: error: {out / 'run.json'}: No space left on device"
        assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]

    def test_stop_before_the_first_checkpoint_says_start_again(self, folder, tmp_path, capsys, monkeypatch):
        def interrupted(*args, **kwargs):
            raise KeyboardInterrupt

        monkeypatch.setattr("progaug.train.train_pair", interrupted)
        out = tmp_path / "p"
        argv = ["train", "--data", str(folder), "--out", str(out), "--train-steps", "3", *TINY]
        err = self._error(capsys, [*argv, "--resume"], rc=130)
        assert err == (f"progaug: interrupted: nothing to resume in {out} yet (no checkpoint.safetensors was written); "
                       f"start again with: progaug {' '.join(argv)}")


class TestImageFiles:
    def test_decompression_bomb_names_the_file(self, tmp_path, monkeypatch):
        path = tmp_path / "huge.png"
        Image.new("RGB", (64, 64)).save(path)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 > 2 x 1000: Pillow's bomb error
        with pytest.raises(ValueError, match=r"huge.png: too large to open safely"):
            load_rgb(path)

    def test_symlink_loop_is_not_reported_as_missing(self, tmp_path):
        a, b = tmp_path / "a.png", tmp_path / "b.png"
        a.symlink_to(b)
        b.symlink_to(a)
        with pytest.raises(ValueError, match=r"a.png: a symbolic link loop"):
            load_rgb(a)

    def test_broken_link_says_so(self, tmp_path):
        link = tmp_path / "x.png"
        link.symlink_to(tmp_path / "gone.png")
        with pytest.raises(FileNotFoundError, match=r"x.png \(a broken symbolic link\)"):
            load_rgb(link)

    @pytest.mark.parametrize("mode,value,grey", [("I;16", 30000, 117), ("I", 30000, 117), ("I", 200, 200), ("F", 0.5, 128),
                                                 ("F", 87.5, 88)])
    def test_constant_deep_image_keeps_its_brightness(self, tmp_path, mode, value, grey):
        """Issue 22: a constant 16-bit image became an all-black tile."""
        path = tmp_path / "flat.tif"
        Image.new(mode, (40, 40), value).save(path)
        assert np.unique(np.asarray(load_rgb(path))).tolist() == [grey]

    def test_constant_float_image_outside_its_range_is_named(self, tmp_path):
        path = tmp_path / "flat.tif"
        Image.new("F", (40, 40), -3.0).save(path)
        with pytest.raises(ValueError, match=r"flat.tif: a constant F image \(every pixel -3\) outside 0..65535"):
            load_rgb(path)

    def test_folder_with_a_link_loop_names_it(self, folder):
        from progaug.data import folder_tiles

        loop = folder / "normal" / "loop.png"
        loop.symlink_to(loop)
        with pytest.raises(ValueError, match=r"loop.png: a symbolic link loop"):
            folder_tiles(folder, tile_size=32)


def test_suite_ignores_the_ambient_environment(tmp_path):
    """A user's PROGAUG_OFFLINE=1 / PROGAUG_HOME (shell profile) never reaches a test (conftest autouse
    fixture): the download tests pass with both set in the environment."""
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PROGAUG_OFFLINE": "1", "PROGAUG_HOME": str(tmp_path / "user-home")}
    tests = Path(__file__).parent
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests / "test_metrics.py"),
                           "-k", "OfficialDownload"], env=env, capture_output=True, text=True, timeout=300, cwd=tests.parent)
    assert done.returncode == 0, done.stdout[-2000:]
    assert " passed" in done.stdout and not (tmp_path / "user-home").exists()
