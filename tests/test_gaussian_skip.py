"""UNetConfig.gaussian_skip: the built-in Gaussian-data noise predictor added to the network's output."""

import pytest
import torch

from progaug.checkpoint import load_unet, save_unet
from progaug.config import DiffusionConfig, UNetConfig
from progaug.diffusion.schedule import training_alpha_bar
from progaug.nn.unet import UNet

from conftest import GaussianEps, tiny_config


def test_untrained_network_is_the_exact_gaussian_predictor():
    # the output layer starts at zero, so the model starts as E[eps | x_t] for data N(0, 0.5^2)
    model = UNet(tiny_config(gaussian_skip=0.5)).eval()
    exact = GaussianEps(0.0, 0.5)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 200, 600, 999])
    with torch.no_grad():
        assert torch.allclose(model(x, t), exact(x, t).float(), atol=1e-5)


def test_colour_passes_through_at_high_noise():
    # a uniform colour shift of the input comes out (almost) unchanged at t = 999: what the
    # colour-shift benchmark measures, by construction
    model = UNet(tiny_config(gaussian_skip=0.5)).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    shift = torch.tensor([0.3, -0.2, 0.1]).view(1, 3, 1, 1)
    t = torch.full((2,), 999)
    with torch.no_grad():
        response = (model(x + shift, t) - model(x, t)).mean(dim=(0, 2, 3)) / shift.flatten()
    assert torch.allclose(response, torch.ones(3), atol=1e-3)


def test_on_by_default_off_for_old_files():
    assert UNetConfig().gaussian_skip == 0.5
    old = {k: v for k, v in UNetConfig().to_dict().items() if k != "gaussian_skip"}
    assert UNetConfig.from_dict(old).gaussian_skip == 0.0
    assert "skip_alpha_bar" not in UNet(tiny_config(gaussian_skip=0.0)).state_dict()
    assert "skip_alpha_bar" in UNet(tiny_config(gaussian_skip=0.5)).state_dict()


def test_old_training_recipe_reads_as_uniform_weighting():
    from progaug.train import TrainConfig

    assert TrainConfig().loss_weighting == "min_snr"
    old = {k: v for k, v in TrainConfig().to_dict().items() if k != "loss_weighting"}
    assert TrainConfig.from_dict(old).loss_weighting == "uniform"


def test_schedule_travels_with_the_weights(tmp_path):
    model = UNet(tiny_config(gaussian_skip=0.5))
    other = training_alpha_bar(DiffusionConfig(beta_end=0.03))
    model.skip_alpha_bar.copy_(torch.from_numpy(other).float())
    save_unet(model, tmp_path / "m.safetensors")
    back = load_unet(tmp_path / "m.safetensors")
    assert torch.equal(back.skip_alpha_bar, model.skip_alpha_bar)


@pytest.mark.parametrize("bad, error", [(-0.1, ValueError), (11.0, ValueError), (True, TypeError), ("0.5", TypeError), (None, TypeError)])
def test_bad_values(bad, error):
    with pytest.raises(error, match="`gaussian_skip` must"):
        UNetConfig(gaussian_skip=bad)
