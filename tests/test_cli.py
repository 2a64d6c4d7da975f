"""The progaug command end to end on a tiny folder: train -> precompute -> progressive; errors."""

import json
import subprocess
import sys

import pytest
from PIL import Image

from progaug.cache import ProgressiveCache
from progaug.cli import main

from conftest import random_tiles

TINY = ["--tile-size", "32", "--model-channels", "16", "--channel-mult", "1", "2", "--attention-resolutions", "16",
        "--num-heads", "2", "--num-res-blocks", "1"]


@pytest.fixture
def folder(class_folders):
    return class_folders


def test_train_precompute_progressive(folder, tmp_path, capsys):
    pair = tmp_path / "pair"
    assert main(["train", "--data", str(folder), "--out", str(pair), "--steps", "2", "--batch-size", "2",
                 "--checkpoint-every", "1", "--sample-steps", "2", "--device", "cpu", *TINY]) == 0
    card = json.loads((pair / "card.json").read_text())
    assert card["direction"] == {"source_class": "normal", "target_class": "tumour"}
    assert card["source"]["config"]["model_channels"] == 16 and card["target"]["attention"] == "local"
    assert card["command"].startswith("progaug train") or card["command"]

    cache = tmp_path / "cache"
    assert main(["precompute", "--pair", str(pair), "--source", str(folder / "normal"), "--n", "4", "--levels", "2",
                 "--steps", "4", "--micro-batch", "4", "--out", str(cache), "--device", "cpu"]) == 0
    assert len(ProgressiveCache.open(cache)) == 4

    png = tmp_path / "strip.png"
    assert main(["progressive", "--pair", str(pair), "--source", str(folder / "normal"), "--count", "2",
                 "--levels", "2", "--steps", "4", "--out", str(png)]) == 0
    assert Image.open(png).size[0] > 3 * 64
    assert "soft labels" in capsys.readouterr().out


def test_errors_exit_2_with_message(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "data folder not found" in capsys.readouterr().err
    assert main(["precompute", "--pair", str(tmp_path / "nopair"), "--out", str(tmp_path / "c")]) == 2
    assert "neither a registry name" in capsys.readouterr().err


def test_class_flag_checked(folder, tmp_path):
    with pytest.raises(SystemExit, match="--source-class 'stroma' is not one of the classes"):
        main(["train", "--data", str(folder), "--source-class", "stroma", "--out", str(tmp_path / "o"), *TINY])


def test_python_dash_m():
    proc = subprocess.run([sys.executable, "-m", "progaug", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("progaug ")
