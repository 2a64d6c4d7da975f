"""progaug.timm_train: timm's train.py interface on a tiny cache; refused options."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from progaug.hub import load_pair
from progaug.integrations.timm import check_timm_args, create_dataset
from progaug.precomputation import PrecomputeConfig, precompute

from conftest import random_tiles

SCRIPT = Path(__file__).with_name("timm_like_train.py")
REAL_TRAIN_PY = os.environ.get("PROGAUG_TIMM_TRAIN_PY")  # timm's own train.py, where one is available locally


@pytest.fixture
def data(pair_dir, tmp_path):
    cache = precompute(load_pair(pair_dir), random_tiles(2), ["a", "b"], tmp_path / "cache",
                       PrecomputeConfig(n=6, num_levels=3, steps=6, max_batch=4), progress=False)
    root = tmp_path / "real"
    for split in ("train", "validation"):
        for c, cls in enumerate(("stroma", "tumour")):
            (root / split / cls).mkdir(parents=True)
            for i, t in enumerate(random_tiles(2, seed=10 * c + len(split))):
                Image.fromarray(t.permute(1, 2, 0).numpy()).save(root / split / cls / f"{i}.png")
    return cache, root


def run(args, timeout=300):
    return subprocess.run([sys.executable, "-m", "progaug.timm_train", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_one_epoch_with_timm_style_script(data, tmp_path):
    cache, root = data
    out = tmp_path / "result.json"
    proc = run([str(SCRIPT), "--dataset", f"progaug/{cache}", "--data-dir", str(root), "--output", str(out), "--progaug-replace-prob", "none"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["train_samples"] == 6 + 4 and result["val_samples"] == 4  # 'none': the cache concatenated
    assert result["classes"] == ["stroma", "tumour"]


@pytest.mark.skipif(not REAL_TRAIN_PY, reason="set PROGAUG_TIMM_TRAIN_PY to timm's train.py to run it for real")
def test_real_timm_train_py(data, tmp_path):
    cache, root = data
    proc = run([REAL_TRAIN_PY, "--dataset", f"progaug/{cache}", "--data-dir", str(root), "--model", "vit_tiny_patch16_224",
                "--model-kwargs", "img_size=32", "patch_size=8", "--num-classes", "2", "--input-size", "3", "32", "32",
                "--epochs", "1", "-b", "4", "--workers", "0", "--no-prefetcher", "--device", "cpu", "--output", str(tmp_path)], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


class TestRefusals:
    @pytest.mark.parametrize(
        "args,match",
        [
            (["--smoothing", "0.1"], "--smoothing 0.1 makes timm use LabelSmoothingCrossEntropy"),
            (["--smoothing", "0", "--mixup", "0.8"], "--mixup 0.8 is refused"),
            (["--smoothing", "0", "--cutmix", "1.0"], "--cutmix 1.0 is refused"),
            (["--smoothing", "0", "--bce-target-thresh", "0.2"], "--bce-target-thresh 0.2 is refused"),
        ],
    )
    def test_refused(self, args, match):
        with pytest.raises(SystemExit, match=match):
            check_timm_args(["--dataset", "progaug/x", *args])

    def test_smoothing_zero_added_and_other_datasets_untouched(self):
        assert check_timm_args(["--dataset", "progaug/x"])[-2:] == ["--smoothing", "0"]
        assert check_timm_args(["--dataset", "torch/cifar10", "--mixup", "0.8"]) == ["--dataset", "torch/cifar10", "--mixup", "0.8"]

    def test_yaml_config_read(self, tmp_path):
        cfg = tmp_path / "c.yaml"
        cfg.write_text("mixup: 0.5\n")
        with pytest.raises(SystemExit, match="--mixup 0.5 is refused"):
            check_timm_args(["-c", str(cfg), "--dataset", "progaug/x", "--smoothing", "0"])

    def test_script_errors(self, data):
        proc = run([str(SCRIPT), "--dataset", "progaug/x", "--mixup", "0.8", "--smoothing", "0"])
        assert proc.returncode != 0 and "--mixup 0.8 is refused" in proc.stderr
        assert "usage" in run(["notascript"]).stderr


def test_dataset_targets(data):
    cache, root = data
    train = create_dataset(f"progaug/{cache}", root=str(root), split="train", is_training=True)
    image, target = train[0]
    assert target.dtype == torch.float32 and abs(float(target.sum()) - 1) < 1e-6
    val = create_dataset(f"progaug/{cache}", root=str(root), split="validation")
    assert isinstance(val[0][1], int)
    with pytest.raises(FileNotFoundError, match="validation split 'test' needs real images"):
        create_dataset(f"progaug/{cache}", root=str(root), split="test")


def test_replacement_keeps_one_epoch_one_pass_over_the_real_images(data, tmp_path):
    cache, root = data
    out = tmp_path / "result.json"
    proc = run([str(SCRIPT), "--dataset", f"progaug/{cache}", "--data-dir", str(root), "--output", str(out), "--progaug-replace-prob", "0.5"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(out.read_text())["train_samples"] == 4  # the 4 real images; generated ones replace draws


def test_replacement_draws_generated_samples_at_its_rate(data):
    from progaug.integrations.timm import install

    cache, root = data
    try:
        install(replace_prob=1.0)
        ds = create_dataset(f"progaug/{cache}", root=str(root), split="train", is_training=True)
        assert len(ds) == 4 and len(ds.generated) == 6
        generated_targets = {tuple(t.tolist()) for _, t in ds.generated}
        assert all(tuple(ds[i][1].tolist()) in generated_targets for i in range(4))  # p = 1: every draw replaced
        install(replace_prob=0.0)
        ds = create_dataset(f"progaug/{cache}", root=str(root), split="train", is_training=True)
        assert [tuple(ds[i][1].tolist()) for i in range(4)] == [tuple(t.tolist()) for _, t in ds.items]
    finally:
        install()


def test_replacement_probability_outside_unit_interval_is_refused(data):
    cache, root = data
    proc = run([str(SCRIPT), "--dataset", f"progaug/{cache}", "--data-dir", str(root), "--progaug-replace-prob", "1.5"])
    assert proc.returncode != 0 and "--progaug-replace-prob must lie in [0, 1] or be 'none', got 1.5" in proc.stderr


def test_replacement_is_the_default_and_none_concatenates(data):
    from progaug.integrations.timm import install
    from progaug.timm_train import _progaug_options

    assert _progaug_options(["--lr", "0.1"]) == (["--lr", "0.1"], 0.3)
    assert _progaug_options(["--progaug-replace-prob", "none"]) == ([], None)
    cache, root = data
    try:
        install()
        assert len(create_dataset(f"progaug/{cache}", root=str(root), split="train", is_training=True)) == 4  # the real images
        install(replace_prob=None)
        assert len(create_dataset(f"progaug/{cache}", root=str(root), split="train", is_training=True)) == 4 + 6
    finally:
        install()
