"""The pair's denoising margin (progaug.margin)."""

import numpy as np
import pytest
import torch

from progaug.diffusion.schedule import training_alpha_bar
from progaug.margin import denoising_margin

ALPHA_BAR = training_alpha_bar()


def _oracle(t_images: torch.Tensor):
    """An epsilon model that knows the clean images are ``t_images``: it recovers the noise exactly."""

    def model(x_t, t):
        a = torch.as_tensor(ALPHA_BAR, dtype=torch.float32)[t].view(-1, 1, 1, 1)
        return (x_t - a.sqrt() * t_images[: len(x_t)]) / (1 - a).sqrt()

    return model


def _zero(x_t, t):
    return torch.zeros_like(x_t)


def test_the_model_that_explains_the_image_wins_by_the_noise_power():
    x0 = torch.zeros(6, 3, 8, 8)
    a_wins = denoising_margin(_oracle(x0), _zero, ALPHA_BAR, x0, (100, 500), max_batch=6)
    b_wins = denoising_margin(_zero, _oracle(x0), ALPHA_BAR, x0, (100, 500), max_batch=6)
    # the oracle's error is ~0, predicting zero costs mean(eps^2) ~ 1
    assert torch.all(a_wins < -0.5) and torch.all(b_wins > 0.5)
    assert torch.allclose(a_wins, -b_wins, atol=1e-4)
    assert a_wins.shape == (6,) and a_wins.dtype == torch.float32


def test_same_seed_same_margin_whatever_the_batch():
    torch.manual_seed(0)
    x0 = torch.rand(5, 3, 8, 8) * 2 - 1
    source = lambda x, t: 0.5 * x  # noqa: E731
    target = lambda x, t: 0.9 * x  # noqa: E731
    whole = denoising_margin(source, target, ALPHA_BAR, x0, (700, 800), seed=3, max_batch=5)
    split = denoising_margin(source, target, ALPHA_BAR, x0, (700, 800), seed=3, max_batch=2)
    other = denoising_margin(source, target, ALPHA_BAR, x0, (700, 800), seed=4, max_batch=5)
    assert torch.allclose(whole, split, atol=1e-6)
    assert not torch.allclose(whole, other)
    assert torch.allclose(denoising_margin(source, source, ALPHA_BAR, x0), torch.zeros(5))


@pytest.mark.parametrize("kwargs, match", [
    ({"timesteps": ()}, r"`timesteps` must hold at least one timestep, each once, got \(\)"),
    ({"timesteps": (5, 5)}, r"each once, got \(5, 5\)"),
    ({"timesteps": (1000,)}, r"`timesteps` must lie in \[0, 1000\), got \(1000,\)"),
    ({"max_batch": 0}, "`max_batch` must be >= 1, got 0"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        denoising_margin(_zero, _zero, ALPHA_BAR, torch.zeros(1, 3, 4, 4), **kwargs)
    with pytest.raises(ValueError, match=r"`images` must be \(N, C, H, W\), got shape \(3, 4, 4\)"):
        denoising_margin(_zero, _zero, ALPHA_BAR, torch.zeros(3, 4, 4))
    assert isinstance(ALPHA_BAR, np.ndarray)
