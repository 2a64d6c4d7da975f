import subprocess
import sys
from pathlib import Path

import pytest

import progaug


def test_import_is_light():
    code = "import progaug, sys; assert 'torch' not in sys.modules and 'requests' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


@pytest.mark.parametrize("name", [n for n in progaug.__all__ if n != "__version__"])
def test_public_names_resolve(name):
    obj = getattr(progaug, name)
    if name.isupper():  # a constant: the module's own object
        import importlib

        assert obj is getattr(importlib.import_module(progaug._EXPORTS[name]), name)
    else:
        assert obj.__name__ == name  # the object the name promises, not another one


def test_label_measures_are_public():
    assert progaug.DEFAULT_MEASURE in progaug.MEASURES and set(progaug.MEASURES) >= {"paper", "reference", "preview"}


def test_version_is_the_package_version():
    from importlib.metadata import version

    assert progaug.__version__ == version("progaug")


def test_unknown_name():
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        progaug.nope


def test_no_public_name_is_shadowed_by_a_submodule():
    """``progaug.precompute`` is the function even after every submodule has been imported (the module
    that defines it is ``progaug.precomputation``, so no submodule shares a public name)."""
    import importlib
    import pkgutil

    for info in pkgutil.walk_packages(progaug.__path__, "progaug."):
        if not info.name.endswith("__main__"):  # that one runs the command line
            importlib.import_module(info.name)
    assert callable(progaug.precompute) and progaug.precompute.__module__ == "progaug.precomputation"
    modules = {info.name.rsplit(".", 1)[-1] for info in pkgutil.iter_modules(progaug.__path__)}
    assert not modules & set(progaug.__all__)


def test_no_tracked_file_over_10_mb():
    """The repository stops growing by the demo pair's 53 MB training state (issue: code health): no
    tracked file may exceed 10 MB (the training state lives in git history, training/hgsc-demo/README.md)."""
    import shutil
    import subprocess

    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout.decode().split("\0")
    big = [(p, (root / p).stat().st_size) for p in listed if p and (root / p).is_file() and (root / p).stat().st_size > 10 * 2**20]
    assert big == []
    assert "training/hgsc-demo/checkpoint.safetensors" in (root / ".gitignore").read_text().split()
