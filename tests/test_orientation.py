"""progaug.data.orientation: the structure-tensor direction of tiles, and the bias that flips and rotations cancel."""

import pytest
import torch

from progaug.data.orientation import orientation_summary, tile_orientation
from progaug.data.tiles import dihedral


def stripes(angle_deg: float, size: int = 32, frequency: float = 0.9) -> torch.Tensor:
    """One ``(1, 3, S, S)`` tile of stripes whose intensity changes along ``angle_deg`` (x right, y up)."""
    r, x = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij")
    t = torch.deg2rad(torch.tensor(angle_deg, dtype=torch.float64))
    wave = torch.sin(frequency * (x * torch.cos(t) - r * torch.sin(t)))  # y up = -row
    return wave.expand(3, size, size).unsqueeze(0).float()


@pytest.mark.parametrize("angle", [0.0, 30.0, 45.0, -60.0, 90.0])
def test_stripes_give_their_gradient_angle(angle):
    row = orientation_summary(stripes(angle))
    assert row["angle"] == pytest.approx(angle, abs=2.0) and row["coherence"] > 0.9 and row["tiles"] == 1


def test_a_quarter_turn_adds_ninety_degrees():
    tile = stripes(20.0)
    before = orientation_summary(tile)["angle"]
    after = orientation_summary(torch.rot90(tile, 1, dims=(-2, -1)))["angle"]  # counter-clockwise
    assert after == pytest.approx(before + 90.0 - 180.0, abs=1e-3)  # angles live in (-90, 90]


def test_flips_and_rotations_cancel_the_bias_but_not_the_coherence():
    tile = stripes(20.0)
    views = torch.cat([dihedral(tile, k) for k in range(8)])
    row = orientation_summary(views)
    assert row["bias"] < 0.02 and row["coherence"] > 0.9
    # one direction shared by every tile: the bias equals the coherence
    same = orientation_summary(torch.cat([stripes(20.0, frequency=f) for f in (0.7, 0.9, 1.1)]))
    assert same["bias"] == pytest.approx(same["coherence"], abs=1e-3)


def test_flat_and_isotropic_tiles_have_no_direction():
    assert tile_orientation(torch.zeros(2, 3, 8, 8)).abs().max().item() == 0.0
    noise = torch.rand(200, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    row = orientation_summary((noise * 255).byte())
    assert row["bias"] < 0.05 and row["coherence"] < 0.2


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"\(M, C, H, W\).*shape \(3, 8, 8\)"):
        tile_orientation(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="H, W >= 3"):
        tile_orientation(torch.zeros(1, 3, 2, 8))
    with pytest.raises(ValueError, match="no tiles"):
        orientation_summary(torch.zeros(0, 3, 8, 8))
