"""FID / sFID / LPIPS sanity. Uses the offline metric weights in ../shared/weights (skipped without them)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from progaug.metrics import frechet_distance, inception_features, load_inception, load_lpips, lpips_diversity, psnr
from progaug.metrics.weights import load_metric_weights

WEIGHTS = Path(__file__).resolve().parents[1].parent / "shared" / "weights"
needs_weights = pytest.mark.skipif(not WEIGHTS.is_dir(), reason="needs ../shared/weights (offline metric weights)")


class TestFrechetDistance:
    def test_same_set_is_zero(self):
        a = np.random.default_rng(0).normal(size=(200, 8))
        assert abs(frechet_distance(a, a)) < 1e-8

    def test_known_gaussians(self):
        # N(0, I) vs N(m, 4I) in d dims: |m|^2 + d (1 + 4 - 2 * 2) = |m|^2 + d
        rng = np.random.default_rng(1)
        a = rng.normal(size=(200_000, 3))
        b = 2 * rng.normal(size=(200_000, 3)) + np.array([1.0, 0.0, 2.0])
        assert frechet_distance(a, b) == pytest.approx(5 + 3, rel=0.02)

    def test_bad_shapes(self):
        with pytest.raises(ValueError, match="feature sets must be"):
            frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))


def test_psnr():
    x = torch.zeros(2, 3, 8, 8)
    assert torch.allclose(psnr(x, x + 0.2), torch.full((2,), 10 * np.log10(4 / 0.04)), atol=1e-4)


@needs_weights
class TestNetworks:
    @pytest.fixture(scope="class")
    def images(self):
        gen = torch.Generator().manual_seed(0)
        base = torch.rand(24, 3, 1, 1, generator=gen) * 1.6 - 0.8
        return (base + 0.2 * torch.randn(24, 3, 32, 32, generator=gen)).clamp(-1, 1)

    def test_fid_self_zero_and_grows_with_noise(self, images):
        net = load_inception(WEIGHTS)
        f = inception_features(net, images)
        assert f["pool"].shape == (24, 2048) and f["spatial"].shape == (24, 2023)
        assert abs(frechet_distance(f["pool"], f["pool"])) < 1e-3
        noisy = inception_features(net, (images + 0.5 * torch.randn_like(images)).clamp(-1, 1))
        assert frechet_distance(f["pool"], noisy["pool"]) > 10

    def test_lpips_zero_on_identical_and_grows_with_noise(self, images):
        lp = load_lpips(WEIGHTS)
        assert torch.equal(lp(images[:4], images[:4]), torch.zeros(4))
        small = lp(images[:4], (images[:4] + 0.05 * torch.randn_like(images[:4])).clamp(-1, 1))
        large = lp(images[:4], (images[:4] + 0.4 * torch.randn_like(images[:4])).clamp(-1, 1))
        assert bool((small > 0).all()) and bool((large > small).all())
        assert lpips_diversity(lp, images, pairs=50) > 0

    def test_sha256_checked(self, tmp_path):
        (tmp_path / "pt_inception-2015-12-05.safetensors").write_bytes(b"not the weights")
        with pytest.raises(ValueError, match="sha256 mismatch"):
            load_metric_weights("inception", tmp_path)

    def test_missing_folder(self, monkeypatch):
        monkeypatch.delenv("PROGAUG_METRIC_WEIGHTS", raising=False)
        with pytest.raises(FileNotFoundError, match="--metric-weights"):
            load_metric_weights("inception")
