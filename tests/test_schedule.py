import numpy as np
import pytest
import torch

from progaug.config import DiffusionConfig
from progaug.diffusion.schedule import DDIMSchedule, linear_betas, respaced_timesteps, training_alpha_bar


class TestLinearBetas:
    def test_endpoints_and_dtype(self):
        b = linear_betas(1000)
        assert b.dtype == np.float64 and b.shape == (1000,)
        assert b[0] == pytest.approx(1e-4) and b[-1] == pytest.approx(0.02)

    def test_scaled_for_other_lengths(self):
        assert linear_betas(500)[-1] == pytest.approx(0.04)

    def test_alpha_bar_decreasing_to_near_zero(self):
        a = training_alpha_bar()
        assert np.all(np.diff(a) < 0) and a[-1] < 1e-4 and a[0] == pytest.approx(1 - 1e-4)


class TestRespacing:
    def test_full_respacing_is_every_step(self):
        np.testing.assert_array_equal(respaced_timesteps(1000, 1000), np.arange(1000))

    @pytest.mark.parametrize("steps", [1, 3, 25, 50, 999])
    def test_last_state_is_last_timestep_and_increasing(self, steps):
        ts = respaced_timesteps(1000, steps)
        assert ts.shape == (steps,) and ts[-1] == 999 and np.all(np.diff(ts) > 0) and ts[0] >= 0

    def test_fifty_steps(self):
        np.testing.assert_array_equal(respaced_timesteps(1000, 50)[:3], [19, 39, 59])

    @pytest.mark.parametrize("steps,exc", [(0, ValueError), (1001, ValueError), (2.5, TypeError), (True, TypeError)])
    def test_bad_steps(self, steps, exc):
        with pytest.raises(exc, match=r"`steps` must be an int in \[1, 1000\]"):
            respaced_timesteps(1000, steps)


class TestDDIMSchedule:
    def test_states(self):
        s = DDIMSchedule.from_config(DiffusionConfig(), 50)
        assert s.num_steps == 50 and s.alpha_bar.dtype == torch.float64
        assert s.alpha_bar[0] == 1.0 and s.timesteps[0] == 0 and s.timesteps[-1] == 999
        assert bool((s.alpha_bar.diff() < 0).all())
        assert s.alpha_bar[-1] == pytest.approx(training_alpha_bar()[-1])

    def test_depth_check(self):
        s = DDIMSchedule.from_config(steps=10)
        assert s.check_depth("depth", 10) == 10
        with pytest.raises(ValueError, match=r"`depth` must be an int in \[0, 10\], got 11"):
            s.check_depth("depth", 11)


class TestDiffusionConfig:
    def test_json_round_trip(self):
        c = DiffusionConfig(sampling_steps=25, clip_denoised=False)
        assert DiffusionConfig.from_json(c.to_json()) == c

    def test_bad_values(self):
        with pytest.raises(ValueError, match="`sampling_steps`"):
            DiffusionConfig(sampling_steps=0)
        with pytest.raises(ValueError, match="beta_start"):
            DiffusionConfig(beta_start=0.5)
        with pytest.raises(ValueError, match="unknown DiffusionConfig keys"):
            DiffusionConfig.from_dict({"steps": 3})
