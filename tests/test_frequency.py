"""Frequency measure (eq. 7-8), soft labels (eq. 9) and adaptive depths on inputs with known answers."""

import pytest
import torch

from progaug.frequency import (
    adaptive_depths,
    default_levels,
    depth_for_label,
    highpass_amplitude,
    highpass_mask,
    soft_labels,
    to_grayscale,
)


def checkerboard(size: int) -> torch.Tensor:
    i = torch.arange(size)
    board = ((i[:, None] + i[None, :]) % 2).float() * 2 - 1
    return board.expand(1, 3, size, size).clone()


class TestHighpassAmplitude:
    def test_flat_image_is_zero(self):
        assert float(highpass_amplitude(torch.full((2, 3, 64, 64), 0.37)).abs().max()) < 1e-6

    def test_checkerboard_is_high(self):
        # all the energy of a +-1 checkerboard sits at the Nyquist corner: |F| = size there
        a = highpass_amplitude(checkerboard(64))
        n_bins = int(highpass_mask(64, 64).sum())
        assert float(a) == pytest.approx(64 / n_bins, rel=1e-4)
        assert float(a) > 100 * float(highpass_amplitude(torch.full((1, 3, 64, 64), 0.5)) + 1e-6)

    @pytest.mark.parametrize("size", [64, 128])
    def test_white_noise_independent_of_size(self, size):
        gen = torch.Generator().manual_seed(0)
        gray_noise = torch.randn(4, 1, size, size, generator=gen).expand(4, 3, size, size)
        # rayleigh mean of a unit complex gaussian: sqrt(pi) / 2
        assert float(highpass_amplitude(gray_noise).mean()) == pytest.approx(0.886, abs=0.03)

    def test_fine_texture_beats_coarse_texture(self):
        x = torch.linspace(0, 1, 64)
        coarse = torch.sin(2 * torch.pi * 2 * x).expand(1, 3, 64, 64)
        fine = torch.sin(2 * torch.pi * 20 * x).expand(1, 3, 64, 64)
        assert float(highpass_amplitude(fine)) > 10 * float(highpass_amplitude(coarse))

    def test_batched_leading_dims(self):
        x = torch.randn(5, 2, 3, 32, 32)
        torch.testing.assert_close(highpass_amplitude(x), highpass_amplitude(x.flatten(0, 1)).reshape(5, 2))

    def test_grayscale_weights(self):
        x = torch.zeros(1, 3, 2, 2)
        x[:, 1] = 1
        assert float(to_grayscale(x)[0, 0, 0]) == pytest.approx(0.587)

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match=r"`radius` must be in \[0, 0.5\)"):
            highpass_amplitude(torch.zeros(1, 3, 8, 8), radius=0.7)
        with pytest.raises(ValueError, match=r"`x` must have shape \(\*, 3, H, W\)"):
            highpass_amplitude(torch.zeros(1, 4, 8, 8))


class TestSoftLabels:
    def test_endpoints_and_range(self):
        amps = torch.tensor([[9.0, 12.0, 30.0, 45.0, 40.0, 42.0]])
        labels = soft_labels(amps)
        assert labels[0, 0] == 0 and labels[0, -1] == 1
        assert bool(((labels >= 0) & (labels <= 1)).all())
        assert float(labels[0, 2]) == pytest.approx(21 / 33)
        assert float(labels[0, 3]) == 1.0  # overshoot clipped

    def test_monotone_amplitude_gives_monotone_labels(self):
        amps = torch.cumsum(torch.rand(3, 20), dim=1)
        assert bool((soft_labels(amps).diff(dim=1) >= 0).all())

    def test_decreasing_amplitude_also_works(self):
        labels = soft_labels(torch.tensor([[5.0, 4.0, 2.0, 1.0]]))
        torch.testing.assert_close(labels, torch.tensor([[0.0, 0.25, 0.75, 1.0]]))

    def test_flat_curve_falls_back_to_depth_fraction(self):
        torch.testing.assert_close(soft_labels(torch.full((1, 5), 3.0)), torch.linspace(0, 1, 5)[None])


class TestAdaptiveDepths:
    def test_exact_on_linear_curve(self):
        labels = torch.linspace(0, 1, 11)[None]  # label k/10 at depth k
        depths = adaptive_depths(labels, default_levels(10))
        assert depths.tolist() == [list(range(1, 11))]

    def test_strictly_increasing_on_saturating_non_monotone_curve(self):
        labels = soft_labels(torch.tensor([[9.5, 20, 33, 38, 37.9, 41, 40, 42, 41.9, 42, 42.0, 41.95, 42]]))
        depths = adaptive_depths(labels, default_levels(10))
        assert depths.shape == (1, 10)
        assert bool((depths.diff(dim=1) > 0).all()) and int(depths.min()) >= 1 and int(depths.max()) <= 12

    def test_nearest_is_chosen(self):
        labels = torch.tensor([[0.0, 0.1, 0.45, 0.52, 0.9, 1.0]])
        assert adaptive_depths(labels, [0.5]).tolist() == [[3]]
        assert adaptive_depths(labels, [0.5, 0.95]).tolist() == [[3, 4]]

    def test_per_image_levels(self):
        labels = torch.linspace(0, 1, 11).expand(2, 11)
        depths = adaptive_depths(labels, torch.tensor([[0.2, 0.5], [0.3, 0.9]]))
        assert depths.tolist() == [[2, 5], [3, 9]]

    @pytest.mark.parametrize(
        "levels,match",
        [
            ([0.0, 0.5], r"`levels` must lie in \(0, 1\]"),
            ([0.5, 1.2], r"`levels` must lie in \(0, 1\]"),
            ([0.5, 0.3], "strictly increasing"),
            (default_levels(11), "at most 10 fit"),
        ],
    )
    def test_bad_levels(self, levels, match):
        with pytest.raises(ValueError, match=match):
            adaptive_depths(torch.linspace(0, 1, 11)[None], levels)

    def test_default_levels(self):
        assert default_levels(4).tolist() == [0.25, 0.5, 0.75, 1.0] and default_levels(4).dtype == torch.float64
        with pytest.raises(ValueError, match="`count` must be >= 1, got 0"):
            default_levels(0)
        with pytest.raises(TypeError, match="`count` must be an int, got float 10.0"):
            default_levels(10.0)


class TestDepthForLabel:
    def test_inverse_use(self):
        labels = torch.tensor([[0.0, 0.2, 0.55, 0.8, 1.0, 1.0], [0.0, 0.5, 0.6, 0.9, 0.95, 1.0]])
        assert depth_for_label(labels, 0.5).tolist() == [2, 1]
        assert depth_for_label(labels, 1.0).tolist() == [4, 5]
        assert depth_for_label(labels, torch.tensor([0.0, 0.9])).tolist() == [0, 3]

    def test_bad_label(self):
        with pytest.raises(ValueError, match=r"`label` must lie in \[0, 1\]"):
            depth_for_label(torch.zeros(1, 3), 1.5)
