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

    @pytest.mark.parametrize("n,m", [(6, 9), (9, 6), (30, 40)])
    def test_few_images_route_matches_the_covariance_route(self, n, m):
        # N M <= D^2 takes the singular values of B A^T; the other route is the D x D eigen-decompositions
        import progaug.metrics as metrics

        rng = np.random.default_rng(n)
        a, b = rng.normal(size=(n, 64)), 0.5 * rng.normal(size=(m, 64)) + 0.3
        ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
        by_covariances = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * metrics._trace_root_by_covariances(ca, cb)
        assert frechet_distance(a, b) == pytest.approx(by_covariances, rel=1e-6)  # sqrt of rounding-level eigenvalues
        assert abs(frechet_distance(a, a)) < 1e-9

    def test_bad_shapes(self):
        with pytest.raises(ValueError, match="feature sets must be"):
            frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))


def test_psnr():
    x = torch.zeros(2, 3, 8, 8)
    assert torch.allclose(psnr(x, x + 0.2), torch.full((2,), 10 * np.log10(4 / 0.04)), atol=1e-4)


@pytest.fixture(scope="module")
def images():
    gen = torch.Generator().manual_seed(0)
    base = torch.rand(24, 3, 1, 1, generator=gen) * 1.6 - 0.8
    return (base + 0.2 * torch.randn(24, 3, 32, 32, generator=gen)).clamp(-1, 1)


@needs_weights
class TestNetworks:
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

    def test_missing_folder(self, monkeypatch, tmp_path):
        monkeypatch.delenv("PROGAUG_METRIC_WEIGHTS", raising=False)
        with pytest.raises(FileNotFoundError, match="--metric-weights"):
            load_metric_weights("alexnet")
        monkeypatch.setenv("PROGAUG_OFFLINE", "1")
        monkeypatch.setenv("PROGAUG_HOME", str(tmp_path))
        with pytest.raises(FileNotFoundError, match="PROGAUG_OFFLINE is set"):
            load_metric_weights("inception")


class TestOfficialDownload:
    """The official-address path, against a local server that serves a small stand-in .pth file."""

    def test_download_check_convert(self, tmp_path, monkeypatch):
        import hashlib
        import io

        from progaug.metrics import weights
        from test_hub import Server

        monkeypatch.setenv("PROGAUG_HOME", str(tmp_path / "home"))
        monkeypatch.delenv("PROGAUG_METRIC_WEIGHTS", raising=False)
        buf = io.BytesIO()
        torch.save({"fc.weight": torch.arange(6.0).reshape(2, 3)}, buf)
        blob = buf.getvalue()
        prefix = hashlib.sha256(blob).hexdigest()[:8]
        with Server({"pt.pth": blob}) as s:
            state = weights.download_official_inception(f"{s.url}/pt.pth", prefix)
            assert torch.equal(state["fc.weight"], torch.arange(6.0).reshape(2, 3))
            assert (tmp_path / "home" / "metrics" / "pt_inception-2015-12-05.safetensors").is_file()
            again = weights.download_official_inception(f"{s.url}/pt.pth", prefix)  # from the converted file
            assert torch.equal(again["fc.weight"], state["fc.weight"]) and s.hits == ["/pt.pth"]

    def test_wrong_prefix_deleted(self, tmp_path, monkeypatch):
        from progaug.metrics import weights
        from test_hub import Server

        monkeypatch.setenv("PROGAUG_HOME", str(tmp_path / "home"))
        with Server({"pt.pth": b"not a checkpoint"}) as s:
            with pytest.raises(ValueError, match="expected a hash starting 00000000"):
                weights.download_official_inception(f"{s.url}/pt.pth", "00000000")
        assert not (tmp_path / "home" / "metrics" / "pt.pth").exists()
