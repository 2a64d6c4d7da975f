"""progaug precompute: files, determinism whatever the batch size, resume after a kill, torchrun, cache checks."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from progaug.cache import COLUMNS, ProgressiveCache
from progaug.hub import load_pair
from progaug.precomputation import CSV_FIELDS, PrecomputeConfig, precompute

from conftest import random_tiles

CFG = dict(n=12, num_levels=3, steps=6, max_batch=4)


def run(pair_dir, out, resume=False, **kw):
    pair = load_pair(pair_dir)
    tiles = random_tiles(3)
    return precompute(pair, tiles, [f"t{i}" for i in range(3)], out, PrecomputeConfig(**{**CFG, **kw}), resume=resume, progress=False)


def files(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "images").iterdir())}


class TestPrecompute:
    def test_outputs(self, pair_dir, tmp_path):
        out = run(pair_dir, tmp_path / "c", batch_size=2)
        assert len(files(out)) == 12 and (out / "preview.png").is_file()
        rows = list(csv.DictReader(open(out / "labels.csv")))
        assert tuple(rows[0]) == CSV_FIELDS and len(rows) == 12
        assert [float(r["level"]) for r in rows[:3]] == [pytest.approx(1 / 3, abs=1e-5), pytest.approx(2 / 3, abs=1e-5), 1.0]
        assert all(0 <= float(r["soft_label"]) <= 1 for r in rows)
        # 4 groups from 3 sources: the 4th repeats a source with a flip/rotation
        assert [int(r["dihedral"]) for r in rows[::3]] == [0, 0, 0, 1]
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["samples"] == 12 and len(manifest["files"]) == 13
        assert isinstance(manifest["command"], str) and "device" not in manifest["settings"]["config"]
        cache = ProgressiveCache.open(out)
        assert cache.classes == ("stroma", "tumour") and cache.load_images().shape == (12, 3, 32, 32)

    def test_same_files_whatever_the_batch_size(self, pair_dir, tmp_path):
        a = files(run(pair_dir, tmp_path / "a", batch_size=1))
        b = files(run(pair_dir, tmp_path / "b", batch_size=4))
        assert a == b

    def test_resume_completes_without_recomputing(self, pair_dir, tmp_path, monkeypatch):
        import progaug.precomputation as pc

        real = pc._run_groups
        calls = []

        def dying(ctx, models, groups, *args):
            calls.append(list(groups))
            if len(calls) == 2:
                raise KeyboardInterrupt("killed")
            return real(ctx, models, groups, *args)

        monkeypatch.setattr(pc, "_run_groups", dying)
        with pytest.raises(KeyboardInterrupt):
            run(pair_dir, tmp_path / "r", batch_size=1)
        assert not (tmp_path / "r" / "manifest.json").exists()
        calls.clear()
        monkeypatch.setattr(pc, "_run_groups", lambda *a: (calls.append(list(a[2])), real(*a))[1])
        run(pair_dir, tmp_path / "r", resume=True, batch_size=1)
        assert calls == [[1], [2], [3]]  # group 0 was finished before the kill
        assert files(tmp_path / "r") == files(run(pair_dir, tmp_path / "ref", batch_size=1))

    def test_resume_keeps_the_stored_max_batch_when_left_out(self, pair_dir, tmp_path):
        out = run(pair_dir, tmp_path / "c")  # max_batch 4
        reference = files(out)
        (out / "records" / "000003.json").unlink()
        run(pair_dir, out, resume=True, max_batch=None)  # the stored 4, not the automatic 32
        assert json.loads((out / "run.json").read_text())["config"]["max_batch"] == 4
        assert files(out) == reference and len(ProgressiveCache.open(out)) == 12

    def test_refusals(self, pair_dir, tmp_path):
        run(pair_dir, tmp_path / "c")
        with pytest.raises(FileExistsError, match="pass --resume"):
            run(pair_dir, tmp_path / "c")
        with pytest.raises(ValueError, match="made with other settings"):
            run(pair_dir, tmp_path / "c", resume=True, steps=7)
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "x.txt").write_text("x")
        with pytest.raises(FileExistsError, match="is not a precomputed run"):
            run(pair_dir, tmp_path / "other")
        with pytest.raises(ValueError, match="`sources` is empty"):
            precompute(load_pair(pair_dir), torch.zeros(0, 3, 32, 32, dtype=torch.uint8), [], tmp_path / "e", PrecomputeConfig(**CFG))
        with pytest.raises(TypeError, match=r"`sources` must be a torch.Tensor of \(N, 3, S, S\) uint8 tiles, got list"):
            precompute(load_pair(pair_dir), [[0]], ["a"], tmp_path / "e", PrecomputeConfig(**CFG))
        with pytest.raises(ValueError, match=r"`sources` must be \(N, 3, S, S\) uint8 tiles, got \(2, 3, 32, 32\) torch.float32"):
            precompute(load_pair(pair_dir), random_tiles(2, size=32).float(), ["a", "b"], tmp_path / "e", PrecomputeConfig(**CFG))
        with pytest.raises(ValueError, match="must be 32x32 tiles"):
            precompute(load_pair(pair_dir), random_tiles(2, size=64), ["a", "b"], tmp_path / "e", PrecomputeConfig(**CFG))
        with pytest.raises(ValueError, match="`num_levels` 10 exceeds `steps` 6"):
            PrecomputeConfig(num_levels=10, steps=6)


class TestCacheChecks:
    def test_rows_typed_by_the_one_column_list(self, pair_dir, tmp_path):
        rows = ProgressiveCache.open(run(pair_dir, tmp_path / "c")).rows
        assert CSV_FIELDS == tuple(name for name, _ in COLUMNS)
        assert all(type(row[name]) is kind for row in rows for name, kind in COLUMNS)

    def test_missing_and_altered_files_named(self, pair_dir, tmp_path):
        out = run(pair_dir, tmp_path / "c")
        victim = out / "images" / "000004.png"
        data = victim.read_bytes()
        victim.write_bytes(data[:-10] + b"0123456789")
        with pytest.raises(ValueError, match=r"000004.png was altered: sha256 expected"):
            ProgressiveCache.open(out)
        victim.unlink()
        with pytest.raises(FileNotFoundError, match="missing: .*000004.png"):
            ProgressiveCache.open(out)
        (out / "manifest.json").unlink()
        with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
            ProgressiveCache.open(out)


SCRIPT = """
import sys, os
sys.path.insert(0, {tests!r})
from test_precompute import run
run(__import__('pathlib').Path({pair!r}), __import__('pathlib').Path({out!r}), batch_size=1)
"""


@pytest.mark.slow
def test_torchrun_equals_single_process(pair_dir, tmp_path, one_thread):
    script = tmp_path / "pc.py"
    script.write_text(SCRIPT.format(tests=os.path.dirname(__file__), pair=str(pair_dir), out=str(tmp_path / "ddp")))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29541", str(script)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert files(tmp_path / "ddp") == files(run(pair_dir, tmp_path / "single", batch_size=3))
    a = ProgressiveCache.open(tmp_path / "ddp").rows
    b = ProgressiveCache.open(tmp_path / "single").rows
    assert a == b


@pytest.mark.slow
def test_kill_9_then_resume(pair_dir, tmp_path, one_thread):
    script = tmp_path / "slow.py"
    script.write_text(SCRIPT.format(tests=os.path.dirname(__file__), pair=str(pair_dir), out=str(tmp_path / "k")).replace(
        "batch_size=1)", "batch_size=1, n=30)"))
    proc = subprocess.Popen([sys.executable, str(script)], env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and len(list((tmp_path / "k" / "records").glob("*.json")) if (tmp_path / "k" / "records").is_dir() else []) < 3:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "k" / "manifest.json").exists()
    run(pair_dir, tmp_path / "k", resume=True, batch_size=1, n=30)
    assert files(tmp_path / "k") == files(run(pair_dir, tmp_path / "ref", batch_size=2, n=30))
    assert not [p for p in (tmp_path / "k").rglob("*.tmp")]


def test_decode_stride_same_labels_other_images_recorded_and_checked_on_resume(pair_dir, tmp_path):
    every, strided = run(pair_dir, tmp_path / "s1"), run(pair_dir, tmp_path / "s2", decode_stride=2)
    rows = [[(r["source"], r["depth"], r["soft_label"]) for r in ProgressiveCache.open(out).rows] for out in (every, strided)]
    assert rows[0] == rows[1]
    assert files(every) != files(strided)
    assert json.loads((strided / "run.json").read_text())["config"]["decode_stride"] == 2
    with pytest.raises(ValueError, match='config.decode_stride: stored 2, now 1'):
        run(pair_dir, strided, resume=True)
    with pytest.raises(ValueError, match='config.decode_fine: stored 0, now 3'):
        run(pair_dir, strided, resume=True, decode_stride=2, decode_fine=3)
    run_file = every / "run.json"  # a run made before the settings existed resumes as stride 1, fine 0
    stored = json.loads(run_file.read_text())
    del stored["config"]["decode_stride"], stored["config"]["decode_fine"]
    run_file.write_text(json.dumps(stored))
    (every / "records" / "000001.json").unlink()
    before = files(every)
    run(pair_dir, every, resume=True)
    assert files(every) == before


def test_bad_manifest_named(pair_dir, tmp_path):
    out = run(pair_dir, tmp_path / "c")
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json is not valid JSON"):
        ProgressiveCache.open(out)
    (out / "manifest.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="is not a progaug cache manifest"):
        ProgressiveCache.open(out)


def test_device_is_a_checked_setting_not_part_of_the_run(pair_dir, tmp_path):
    with pytest.raises(ValueError, match="`device` must name a torch device such as 'cpu'.*got 'gpu0'"):
        PrecomputeConfig(device="gpu0")
    out = run(pair_dir, tmp_path / "c", device="cpu")
    assert "device" not in json.loads((out / "run.json").read_text())["config"]
    run(pair_dir, out, resume=True, device=None)  # a resume may change the device
