import subprocess
import sys

import pytest

import progaug


def test_import_is_light():
    code = "import progaug, sys; assert 'torch' not in sys.modules and 'requests' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


@pytest.mark.parametrize("name", progaug.__all__)
def test_public_names_resolve(name):
    assert getattr(progaug, name) is not None


def test_unknown_name():
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        progaug.nope
