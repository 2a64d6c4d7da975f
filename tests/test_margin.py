"""The pair's denoising margin (progaug.margin)."""

import numpy as np
import pytest
import torch

from progaug.diffusion.schedule import training_alpha_bar
from progaug.margin import (MarginCalibration, denoising_margin, fit_margin_calibration, margin_auc, read_calibration,
                            write_calibration)

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


def test_platt_fit_recovers_the_log_odds_of_two_gaussians():
    # margins of A ~ N(-1, 1), of B ~ N(+1, 1): the true log-odds are 2 * margin
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(4000, generator=gen) - 1, torch.randn(4000, generator=gen) + 1
    cal = fit_margin_calibration(a, b, timesteps=(700, 800), seed=3, fitted_on="val")
    assert cal.slope == pytest.approx(2.0, abs=0.15) and cal.intercept == pytest.approx(0.0, abs=0.1)
    assert cal.tiles == (4000, 4000) and cal.timesteps == (700, 800) and cal.seed == 3 and cal.fitted_on == "val"
    assert 0.91 < cal.auc < 0.93  # P(N(1,1) > N(-1,1)) = Phi(sqrt 2) = 0.921
    p = cal.probability(torch.tensor([-3.0, 0.0, 3.0]))
    assert p[0] < 0.01 and p[1] == pytest.approx(0.5, abs=0.03) and p[2] > 0.99 and p.dtype == torch.float32


def test_platt_targets_keep_a_separable_fit_finite():
    cal = fit_margin_calibration(torch.tensor([-2.0, -1.0]), torch.tensor([1.0, 2.0]))
    p = cal.probability(torch.tensor([-2.0, 2.0]))
    # smoothed targets 1/4 and 3/4: not the 0 / 1 an unsmoothed fit runs off to
    assert 0.1 < float(p[0]) < 0.35 and 0.65 < float(p[1]) < 0.9
    assert cal.auc == 1.0


@pytest.mark.parametrize("a, b, match", [
    ([], [1.0], "`margins_a` is empty"),
    ([0.0], [float("nan")], "`margins_b` holds non-finite margins"),
    ([0.5, 0.5], [0.5], r"the margins do not vary \(all 0.5\)"),
    ([1.0, 2.0], [-1.0, 0.0], r"does not rise towards class B on these tiles \(AUC 0.000\)"),
])
def test_fit_refuses_what_it_cannot_calibrate(a, b, match):
    with pytest.raises(ValueError, match=match):
        fit_margin_calibration(torch.tensor(a), torch.tensor(b))


def test_calibration_file_round_trip_and_bad_files(tmp_path):
    assert read_calibration(tmp_path) is None
    cal = MarginCalibration(slope=3.5, intercept=-0.25, timesteps=(600, 900), seed=1, tiles=(30, 40), auc=0.8, fitted_on="val split")
    path = write_calibration(tmp_path, cal)
    assert path.name == "margin_calibration.json" and read_calibration(tmp_path) == cal
    assert not [p for p in tmp_path.iterdir() if p.name != path.name]  # no temporary file left
    path.write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="margin_calibration.json is not a progaug margin calibration"):
        read_calibration(tmp_path)
    path.write_text('{"format": "progaug.margin_calibration/1", "slope": -1.0}')
    with pytest.raises(ValueError, match=r"margin_calibration.json: `slope` must be a finite number > 0.*got -1.0"):
        read_calibration(tmp_path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="margin_calibration.json is not valid JSON"):
        read_calibration(tmp_path)


def test_the_classes_weigh_the_same_whatever_their_tile_counts():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(4000, generator=gen) - 1, torch.randn(4000, generator=gen) + 1
    even = fit_margin_calibration(a, b)
    lopsided = fit_margin_calibration(a[:1000], b)  # 4x as many B tiles: an unweighted fit would add log 4 = 1.39
    assert lopsided.intercept == pytest.approx(even.intercept, abs=0.15)
    assert lopsided.slope == pytest.approx(even.slope, rel=0.1)


def test_shared_noise_makes_an_image_margin_its_own():
    torch.manual_seed(0)
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    source = lambda x, t: 0.5 * x  # noqa: E731
    target = lambda x, t: 0.9 * x  # noqa: E731
    alone = torch.cat([denoising_margin(source, target, ALPHA_BAR, x0[i:i + 1], (700, 800), seed=2, shared_noise=True) for i in range(4)])
    together = denoising_margin(source, target, ALPHA_BAR, x0.flip(0), (700, 800), seed=2, shared_noise=True).flip(0)
    assert torch.allclose(alone, together, atol=1e-6)
    per_row = denoising_margin(source, target, ALPHA_BAR, x0.flip(0), (700, 800), seed=2).flip(0)
    assert not torch.allclose(per_row, together)  # one draw per row: an image's noise depends on its place


def test_auc_counts_ties_half():
    assert margin_auc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])) == 1.0
    assert margin_auc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 0.0
    assert margin_auc(torch.tensor([1.0]), torch.tensor([1.0])) == 0.5
