"""The one atomic write and the one file lock (progaug.fileio), which every writer and the downloads share."""

from __future__ import annotations

import errno
import os
import stat
import threading
import time

import pytest

from progaug.fileio import LOCK_NAME, OutputLocked, atomic_write_bytes, atomic_writer, file_lock, lock_folder

pytest.importorskip("fcntl")


def names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


class TestAtomicWriter:
    def test_writes_in_place_with_its_own_prefix_and_suffix(self, tmp_path):
        dest = tmp_path / "sub" / "w.bin"
        with atomic_writer(dest, prefix=".w.bin.p1.", suffix=".part") as f:
            f.write(b"abc")
            (temporary,) = [n for n in names(dest.parent) if n != "w.bin"]
            assert temporary.startswith(".w.bin.p1.") and temporary.endswith(".part") and not dest.exists()
        assert dest.read_bytes() == b"abc" and names(dest.parent) == ["w.bin"]
        assert stat.S_IMODE(dest.stat().st_mode) == 0o644

    def test_an_error_keeps_the_old_file_and_removes_the_temporary_one(self, tmp_path):
        dest = tmp_path / "w.bin"
        atomic_write_bytes(dest, b"old")
        with pytest.raises(ValueError, match="mismatch"):
            with atomic_writer(dest) as f:
                f.write(b"new")
                raise ValueError("mismatch")
        assert dest.read_bytes() == b"old" and names(tmp_path) == ["w.bin"]

    def test_an_os_error_is_named_after_the_destination(self, tmp_path):
        dest = tmp_path / "w.bin"
        with pytest.raises(OSError, match=r"No space left on device: '.*w\.bin'") as info:
            with atomic_writer(dest):
                raise OSError(errno.ENOSPC, "No space left on device")
        assert info.value.errno == errno.ENOSPC and names(tmp_path) == []

    def test_an_os_error_without_errno_passes_unchanged(self, tmp_path):
        class Failed(OSError):
            pass

        cause = ConnectionError("refused")
        with pytest.raises(Failed) as info:
            with atomic_writer(tmp_path / "w.bin"):
                raise Failed("could not download x: refused") from cause
        assert info.value.__cause__ is cause and names(tmp_path) == []


class TestFileLock:
    def test_held_lock_is_refused_and_waited_for(self, tmp_path):
        path = tmp_path / "x.lock"
        with file_lock(path) as held:
            assert held
            with pytest.raises(BlockingIOError):
                with file_lock(path):
                    pass
            start = time.monotonic()
            with pytest.raises(BlockingIOError, match="held by another process after 0.2 s"):
                with file_lock(path, wait=0.2):
                    pass
            assert time.monotonic() - start >= 0.2
        with file_lock(path) as held:
            assert held

    def test_remove_deletes_the_file_and_a_waiter_locks_the_new_one(self, tmp_path):
        path = tmp_path / "x.lock"
        with file_lock(path):
            pass
        assert path.exists()  # kept without remove
        got = []

        def waiter() -> None:
            with file_lock(path, wait=5, remove=True) as held:
                got.append((held, path.exists()))

        with file_lock(path, remove=True):
            thread = threading.Thread(target=waiter)
            thread.start()
            time.sleep(0.2)
        thread.join(10)
        assert got == [(True, True)] and not path.exists()

    def test_released_after_an_error(self, tmp_path):
        path = tmp_path / "x.lock"
        with pytest.raises(RuntimeError):
            with file_lock(path, remove=True):
                raise RuntimeError("boom")
        assert not path.exists()
        with file_lock(path) as held:
            assert held


class TestLockFolder:
    def test_second_holder_is_refused_and_the_lock_file_stays(self, tmp_path):
        out = tmp_path / "out"
        with lock_folder(out, "progaug precompute"):
            with pytest.raises(OutputLocked, match=r"in use by another progaug precompute process \(lock .*\.progaug\.lock\)"):
                with lock_folder(out, "progaug precompute"):
                    pass
        assert names(out) == [LOCK_NAME]
        with lock_folder(out, "progaug precompute"):
            pass

    def test_a_file_is_not_a_folder(self, tmp_path):
        (tmp_path / "f").write_text("x")
        with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
            with lock_folder(tmp_path / "f", "progaug train"):
                pass
        assert os.listdir(tmp_path) == ["f"]
