"""progaug.evaluation.stain: HED stain jitter, the pathology colour baseline of the downstream protocol."""

import pytest
import torch

from progaug.evaluation.stain import hed_jitter, hed_to_rgb, rgb_to_hed


def tiles(seed=0):
    return torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 0.9 + 0.05


def test_hed_round_trip():
    x = tiles()
    assert torch.allclose(hed_to_rgb(rgb_to_hed(x.double())), x.double(), atol=1e-10)


def test_pure_haematoxylin_unmixes_to_one_stain():
    od = torch.tensor([0.65, 0.70, 0.29], dtype=torch.float64) * 0.8  # 0.8 OD of haematoxylin only
    rgb = torch.exp(-od).view(1, 3, 1, 1)
    assert torch.allclose(rgb_to_hed(rgb).flatten(), torch.tensor([0.8, 0.0, 0.0], dtype=torch.float64), atol=1e-9)


def test_zero_sigma_is_identity_and_seed_decides():
    x = tiles()
    assert hed_jitter(x, 0.0) is x
    a = hed_jitter(x, 0.05, torch.Generator().manual_seed(1))
    b = hed_jitter(x, 0.05, torch.Generator().manual_seed(1))
    c = hed_jitter(x, 0.05, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == x.dtype and a.shape == x.shape and 0 <= float(a.min()) and float(a.max()) <= 1


def test_strength_grows_with_sigma():
    x = tiles()
    light = (hed_jitter(x, 0.05, torch.Generator().manual_seed(3)) - x).abs().mean()
    strong = (hed_jitter(x, 0.2, torch.Generator().manual_seed(3)) - x).abs().mean()
    assert 0 < light < strong


@pytest.mark.parametrize("sigma", [-0.1, float("nan"), float("inf")])
def test_bad_sigma(sigma):
    with pytest.raises(ValueError, match="`sigma` must be a number >= 0"):
        hed_jitter(tiles(), sigma)


@pytest.mark.parametrize("sigma", ["0.05", True, None])
def test_sigma_of_the_wrong_type(sigma):
    with pytest.raises(TypeError, match="`sigma` must be a number, got"):
        hed_jitter(tiles(), sigma)
