"""DDIM math against dummy epsilon models whose exact answers are known, and round trips."""

import math

import pytest
import torch

from progaug.diffusion import DDIMSchedule, bridge, ddim_step, invert, sample, sample_from_depths
from progaug.diffusion.schedule import training_alpha_bar

from conftest import GaussianEps, tiny_unet


class PointMassEps:
    """Exact noise predictor for data that is a point mass at ``c``."""

    def __init__(self, c: torch.Tensor) -> None:
        self.c = c
        self.alpha_bar = torch.from_numpy(training_alpha_bar())

    def __call__(self, x, t):
        a = self.alpha_bar[t].to(x.dtype).view(-1, 1, 1, 1)
        return (x - torch.sqrt(a) * self.c) / torch.sqrt(1 - a)


class TestPointMass:
    @pytest.mark.parametrize("steps", [1, 10, 50])
    def test_sampling_lands_on_the_point(self, steps, rng):
        c = torch.full((2, 3, 8, 8), 0.3)
        model = PointMassEps(c)
        x_t = torch.randn(2, 3, 8, 8, generator=rng, dtype=torch.float64)
        out = sample(model, x_t, DDIMSchedule.from_config(steps=steps), clip=False)
        torch.testing.assert_close(out, c.double(), atol=1e-9, rtol=0)

    def test_inversion_follows_the_closed_form(self):
        c = torch.full((1, 3, 8, 8), -0.4, dtype=torch.float64)
        model = PointMassEps(c)
        sched = DDIMSchedule.from_config(steps=20)
        traj = invert(model, c, sched, clip=False, return_trajectory=True)
        a0 = training_alpha_bar()[0]
        eps0 = (c - math.sqrt(a0) * c) / math.sqrt(1 - a0)  # what the model says at state 0 (timestep 0)
        for k in range(sched.num_steps + 1):
            a = float(sched.alpha_bar[k])
            torch.testing.assert_close(traj[k], math.sqrt(a) * c + math.sqrt(1 - a) * eps0, atol=1e-9, rtol=0)


class TestGaussian:
    def _error(self, steps: int) -> float:
        model = GaussianEps(mu=0.2, s=0.5)
        x0 = (0.2 + 0.5 * torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))).double()
        sched = DDIMSchedule.from_config(steps=steps)
        latent = invert(model, x0, sched, clip=False)
        return float((latent - model.exact(x0, float(sched.alpha_bar[-1]))).abs().max())

    def test_inversion_converges_to_the_exact_ode(self):
        # DDIM is a first-order ODE solver: 5x more steps should cut the error about 5x
        errors = [self._error(s) for s in (10, 50, 250)]
        assert errors[1] < errors[0] / 3 and errors[2] < errors[1] / 3
        assert errors[2] < 0.06

    @pytest.mark.parametrize("steps,tol", [(10, 1.0), (50, 0.25), (250, 0.05), (1000, 0.013)])
    def test_round_trip_tolerance_shrinks_with_steps(self, steps, tol):
        model = GaussianEps(mu=0.2, s=0.5)
        x0 = (0.2 + 0.5 * torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))).double()
        sched = DDIMSchedule.from_config(steps=steps)
        back = sample(model, invert(model, x0, sched, clip=False), sched, clip=False)
        assert float((back - x0).abs().max()) < tol


class TestStep:
    def test_step_to_same_level_is_identity_without_clip(self, rng):
        x = torch.randn(2, 3, 8, 8, generator=rng, dtype=torch.float64)
        model = GaussianEps(0.0, 0.5)
        y = ddim_step(model, x, timestep=500, alpha_bar_from=0.3, alpha_bar_to=0.3, clip=False)
        torch.testing.assert_close(y, x)

    def test_one_step_there_and_back_with_clip(self, rng):
        model = GaussianEps(0.0, 0.5)
        x = torch.rand(2, 3, 8, 8, generator=rng, dtype=torch.float64) - 0.5
        up = ddim_step(model, x, timestep=10, alpha_bar_from=1.0, alpha_bar_to=0.9)
        down = ddim_step(model, up, timestep=10, alpha_bar_from=0.9, alpha_bar_to=1.0)
        assert float((down - x).abs().max()) < 0.05


class TestUNetRoundTrip:
    def test_round_trip_error_shrinks_with_steps(self):
        # an untrained U-Net is far from a smooth noise predictor, so only the trend is asserted;
        # trained-pair PSNRs are in docs/benchmarks.md
        model = tiny_unet("global")
        x0 = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 1.6 - 0.8
        errs = []
        for steps in (5, 20, 80):
            sched = DDIMSchedule.from_config(steps=steps)
            errs.append(float((sample(model, invert(model, x0, sched), sched) - x0).abs().mean()))
        assert errs[0] > errs[1] > errs[2]


class TestBridge:
    def test_depth_zero_returns_source(self):
        x = torch.rand(2, 3, 32, 32) * 2 - 1
        out = bridge(tiny_unet("global"), tiny_unet("local", seed=1), x, DDIMSchedule.from_config(steps=10), depth=0)
        torch.testing.assert_close(out, x)

    def test_full_depth_is_invert_then_sample(self):
        a, b = tiny_unet("global"), tiny_unet("local", seed=1)
        x = torch.rand(2, 3, 32, 32) * 2 - 1
        sched = DDIMSchedule.from_config(steps=8)
        expected = sample(b, invert(a, x, sched), sched)
        torch.testing.assert_close(bridge(a, b, x, sched), expected)

    def test_bad_depth(self):
        with pytest.raises(ValueError, match="`depth` must be an int in \\[0, 8\\], got 9"):
            bridge(tiny_unet(), tiny_unet("local"), torch.zeros(1, 3, 32, 32), DDIMSchedule.from_config(steps=8), depth=9)
        with pytest.raises(TypeError, match="`depth` must be an int in \\[0, 8\\], got float 2.0"):
            bridge(tiny_unet(), tiny_unet("local"), torch.zeros(1, 3, 32, 32), DDIMSchedule.from_config(steps=8), depth=2.0)


class TestSampleFromDepths:
    def test_matches_one_row_at_a_time(self):
        model = GaussianEps(0.1, 0.5)
        sched = DDIMSchedule.from_config(steps=12)
        latents = torch.randn(5, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        depths = torch.tensor([0, 3, 12, 7, 3])
        batched = sample_from_depths(model, latents, depths, sched, max_batch=2)
        for n in range(5):
            alone = sample(model, latents[n : n + 1].clone(), sched, start=int(depths[n]))
            torch.testing.assert_close(batched[n : n + 1], alone)

    def test_counts_model_calls(self):
        calls = []

        def model(x, t):
            calls.append(x.shape[0])
            return torch.zeros_like(x)

        sched = DDIMSchedule.from_config(steps=10)
        sample_from_depths(model, torch.zeros(4, 3, 8, 8), torch.tensor([2, 4, 6, 10]), sched)
        assert len(calls) == 10 and sum(calls) == 2 + 4 + 6 + 10

    def test_stride_moves_each_row_along_its_own_strided_path(self):
        from progaug.diffusion import ddim_move

        model = GaussianEps(0.1, 0.5)
        sched = DDIMSchedule.from_config(steps=12)
        latents = torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
        depths = torch.tensor([0, 5, 12, 7])
        paths = {0: [0], 5: [5, 4, 2, 0], 12: [12, 10, 8, 6, 4, 2, 0], 7: [7, 6, 4, 2, 0]}  # stride 2
        strided = sample_from_depths(model, latents, depths, sched, max_batch=3, stride=2)
        for n, d in enumerate(depths.tolist()):
            x = latents[n : n + 1].clone()
            for k, below in zip(paths[d], paths[d][1:]):
                x = ddim_move(model, x, sched, k, below)
            torch.testing.assert_close(strided[n : n + 1], x)
        assert not torch.equal(strided, sample_from_depths(model, latents, depths, sched))  # fewer moves: another image
        torch.testing.assert_close(strided[:1], latents[:1])  # depth 0 stays the source

    def test_sample_and_bridge_take_the_same_strided_path(self):
        from progaug.diffusion import bridge, invert

        model, target = GaussianEps(0.1, 0.5), GaussianEps(-0.2, 0.8)
        sched = DDIMSchedule.from_config(steps=12)
        latents = torch.randn(3, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
        for start in (7, 12):
            rows = sample_from_depths(model, latents, torch.full((3,), start), sched, stride=3)
            torch.testing.assert_close(sample(model, latents.clone(), sched, start=start, stride=3), rows)
        assert not torch.equal(sample(model, latents.clone(), sched, stride=3), sample(model, latents.clone(), sched))
        x0 = latents.clamp(-1, 1)
        expected = sample(target, invert(model, x0, sched), sched, stride=2)  # the inversion keeps every state
        torch.testing.assert_close(bridge(model, target, x0, sched, stride=2), expected)
        with pytest.raises(ValueError, match="`stride` must be >= 1, got 0"):
            sample(model, latents, sched, stride=0)

    def test_fine_states_are_decoded_one_per_move_below_the_stride(self):
        from progaug.diffusion import ddim_move, decode_moves

        model = GaussianEps(0.1, 0.5)
        sched = DDIMSchedule.from_config(steps=12)
        latents = torch.randn(5, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
        depths = torch.tensor([0, 3, 12, 7, 4])
        paths = {0: [0], 3: [3, 2, 1, 0], 12: [12, 9, 6, 4, 3, 2, 1, 0], 7: [7, 6, 4, 3, 2, 1, 0], 4: [4, 3, 2, 1, 0]}  # stride 3, fine 4
        rows = sample_from_depths(model, latents, depths, sched, max_batch=2, stride=3, fine=4)
        for n, d in enumerate(depths.tolist()):
            x = latents[n : n + 1].clone()
            for k, below in zip(paths[d], paths[d][1:]):
                x = ddim_move(model, x, sched, k, below)
            torch.testing.assert_close(rows[n : n + 1], x)
            assert decode_moves(d, 3, 4) == len(paths[d]) - 1
        torch.testing.assert_close(sample(model, latents[2:3].clone(), sched, start=12, stride=3, fine=4), rows[2:3])
        # fine 0 is the plain stride; fine >= depth (or stride 1) decodes every state
        torch.testing.assert_close(sample_from_depths(model, latents, depths, sched, stride=3, fine=0),
                                   sample_from_depths(model, latents, depths, sched, stride=3))
        torch.testing.assert_close(sample_from_depths(model, latents, depths, sched, stride=3, fine=12),
                                   sample_from_depths(model, latents, depths, sched))
        assert [decode_moves(50, 2, 10), decode_moves(50, 3, 10), decode_moves(50, 2, 0), decode_moves(50, 1, 10)] == [30, 24, 25, 50]
        with pytest.raises(ValueError, match="`fine` must be >= 0, got -1"):
            sample_from_depths(model, latents, depths, sched, stride=2, fine=-1)

    def test_stride_counts_ceil_depth_over_stride_calls_per_row(self):
        rows = []

        def model(x, t):
            rows.append(x.shape[0])
            return torch.zeros_like(x)

        sched = DDIMSchedule.from_config(steps=10)
        sample_from_depths(model, torch.zeros(4, 3, 8, 8), torch.tensor([2, 5, 6, 10]), sched, stride=3)
        assert sum(rows) == 1 + 2 + 2 + 4  # ceil(d / 3)

    def test_bad_depths(self):
        sched = DDIMSchedule.from_config(steps=10)
        with pytest.raises(ValueError, match="`stride` must be >= 1, got 0"):
            sample_from_depths(GaussianEps(0, 1), torch.zeros(2, 3, 8, 8), torch.tensor([1, 2]), sched, stride=0)
        with pytest.raises(ValueError, match="`depths` must lie in"):
            sample_from_depths(GaussianEps(0, 1), torch.zeros(2, 3, 8, 8), torch.tensor([1, 11]), sched)
        with pytest.raises(ValueError, match="`max_batch` must be >= 1, got 0"):
            sample_from_depths(GaussianEps(0, 1), torch.zeros(2, 3, 8, 8), torch.tensor([1, 2]), sched, max_batch=0)
        with pytest.raises(TypeError, match="`max_batch` must be an int, got float 2.0"):
            sample_from_depths(GaussianEps(0, 1), torch.zeros(2, 3, 8, 8), torch.tensor([1, 2]), sched, max_batch=2.0)
