"""The ADD generator: one inversion per image, batched decodes, labels, determinism, bad input."""

import pytest
import torch

from progaug.diffusion import DDIMSchedule, bridge
from progaug.generator import GenerationConfig, generate_progressive

from conftest import tiny_unet


@pytest.fixture(scope="module")
def pair():
    return tiny_unet("global", seed=0), tiny_unet("local", seed=1)


@pytest.fixture
def images():
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1


class TestGenerateProgressive:
    def test_shapes_labels_depths(self, pair, images):
        r = generate_progressive(*pair, images, [0.25, 0.5, 0.75, 1.0], GenerationConfig(steps=12, bf16=False))
        assert r.images.shape == (3, 4, 3, 32, 32) and r.images.dtype == torch.float32
        assert float(r.images.abs().max()) <= 1.0
        assert r.depths.shape == r.soft_labels.shape == (3, 4)
        assert bool((r.depths.diff(dim=1) > 0).all()) and int(r.depths.max()) <= 12
        assert bool(((r.soft_labels >= 0) & (r.soft_labels <= 1)).all())
        assert r.measured.shape == r.trajectory_labels.shape == (3, 13)
        torch.testing.assert_close(r.soft_labels, r.trajectory_labels.gather(1, r.depths))
        assert bool((r.trajectory_labels[:, 0] == 0).all()) and bool((r.trajectory_labels[:, -1] == 1).all())

    def test_each_branch_equals_the_bridge_at_its_depth(self, pair, images):
        r = generate_progressive(*pair, images, [0.3, 1.0], GenerationConfig(steps=10, bf16=False))
        sched = DDIMSchedule.from_config(steps=10)
        for b in range(images.shape[0]):
            for j in range(2):
                depth = int(r.depths[b, j])
                expected = bridge(*pair, images[b : b + 1], sched, depth=depth)
                # batched float32 convolutions differ from batch-1 ones in the last bits; 1e-3 is the stated tolerance
                torch.testing.assert_close(r.images[b, j : j + 1], expected, atol=1e-3, rtol=0)

    def test_one_inversion_per_image(self, pair, images):
        calls = {"source": 0, "target": 0}

        def counting(model, key):
            def f(x, t):
                calls[key] += x.shape[0]
                return model(x, t)

            f.config = model.config
            return f

        r = generate_progressive(counting(pair[0], "source"), counting(pair[1], "target"), images, [0.5, 1.0], GenerationConfig(steps=10, measure="paper", bf16=False))
        assert calls["source"] == 3 * 10
        assert calls["target"] == int(r.depths.sum())
        assert r.model_evaluations == calls["source"] + calls["target"]
        # the "preview" measure (the default): still one inversion per image, plus S target previews per image
        calls.update(source=0, target=0)
        r = generate_progressive(counting(pair[0], "source"), counting(pair[1], "target"), images, [0.5, 1.0], GenerationConfig(steps=10, bf16=False))
        assert r.measure == "preview" and calls["source"] == 3 * 10
        assert calls["target"] == 3 * 10 + int(r.depths.sum()) and r.model_evaluations == calls["source"] + calls["target"]

    def test_decode_stride_keeps_depths_and_labels_and_counts_its_moves(self, pair, images):
        calls = []

        def counting(model):
            def f(x, t):
                calls.append(x.shape[0])
                return model(x, t)

            f.config = model.config
            return f

        every = generate_progressive(*pair, images, [0.3, 0.6, 1.0], GenerationConfig(steps=12, measure="paper", bf16=False))
        strided = generate_progressive(pair[0], counting(pair[1]), images, [0.3, 0.6, 1.0],
                                       GenerationConfig(steps=12, measure="paper", bf16=False, decode_stride=3))
        assert torch.equal(strided.depths, every.depths) and torch.equal(strided.soft_labels, every.soft_labels)
        assert strided.decode_stride == 3 and sum(calls) == int((-(-every.depths // 3)).sum())
        assert strided.model_evaluations == 3 * 12 + sum(calls) < every.model_evaluations
        assert not torch.equal(strided.images, every.images)
        sched = DDIMSchedule.from_config(steps=12)  # the full translation: 4 moves of 3 states from the inverted latent
        full = bridge(*pair, images[:1], sched, depth=12)
        assert float((strided.images[0, 2] - full[0]).abs().max()) > 1e-3

    def test_decode_fine_keeps_depths_and_labels_and_counts_its_moves(self, pair, images):
        from progaug.diffusion import decode_moves

        every = generate_progressive(*pair, images, [0.3, 0.6, 1.0], GenerationConfig(steps=12, measure="paper", bf16=False))
        mixed = generate_progressive(*pair, images, [0.3, 0.6, 1.0],
                                     GenerationConfig(steps=12, measure="paper", bf16=False, decode_stride=3, decode_fine=4))
        assert torch.equal(mixed.depths, every.depths) and torch.equal(mixed.soft_labels, every.soft_labels)
        assert mixed.decode_fine == 4
        moves = sum(decode_moves(d, 3, 4) for d in every.depths.flatten().tolist())
        assert mixed.model_evaluations == 3 * 12 + moves < every.model_evaluations
        shallow = every.depths <= 4  # decoded one state per move either way: the same images
        torch.testing.assert_close(mixed.images[shallow], every.images[shallow])
        assert not torch.equal(mixed.images[~shallow], every.images[~shallow])
        with pytest.raises(ValueError, match="`decode_fine` must be >= 0, got -1"):
            GenerationConfig(decode_fine=-1)
        config = GenerationConfig(decode_stride=2, decode_fine=10)
        assert GenerationConfig.from_dict(config.to_dict()) == config

    def test_decode_stride_is_checked_and_round_trips(self):
        with pytest.raises(ValueError, match="`decode_stride` must be >= 1, got 0"):
            GenerationConfig(decode_stride=0)
        with pytest.raises(TypeError, match="`decode_stride` must be an int, got float 2.0"):
            GenerationConfig(decode_stride=2.0)
        config = GenerationConfig(decode_stride=2)
        assert GenerationConfig.from_dict(config.to_dict()) == config
        assert GenerationConfig.from_dict({k: v for k, v in GenerationConfig().to_dict().items() if k != "decode_stride"}).decode_stride == 1

    def test_same_seed_identical_on_cpu(self, images):
        a = generate_progressive(tiny_unet("global", 2), tiny_unet("local", 3), images, [0.5, 1.0], GenerationConfig(steps=6, bf16=False))
        b = generate_progressive(tiny_unet("global", 2), tiny_unet("local", 3), images, [0.5, 1.0], GenerationConfig(steps=6, bf16=False))
        assert torch.equal(a.images, b.images) and torch.equal(a.depths, b.depths)

    def test_batch_size_does_not_change_results(self, pair, images):
        full = generate_progressive(*pair, images, [0.5, 1.0], GenerationConfig(steps=8, bf16=False))
        small = generate_progressive(*pair, images, [0.5, 1.0], GenerationConfig(steps=8, max_batch=1, bf16=False))
        torch.testing.assert_close(full.images, small.images, atol=1e-3, rtol=0)
        assert torch.equal(full.depths, small.depths)

    def test_bf16_autocast_close_to_float32(self, pair, images):
        ref = generate_progressive(*pair, images, [1.0], GenerationConfig(steps=8, bf16=False))
        fast = generate_progressive(*pair, images, [1.0], GenerationConfig(steps=8, bf16=True))
        assert 0 < float((ref.images - fast.images).abs().mean()) < 0.05  # bf16 did run, and stayed close

    @pytest.mark.parametrize(
        "x,exc,match",
        [
            (torch.zeros(1, 4, 32, 32), ValueError, "`images` must have 3 channels"),
            (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), TypeError, "`images` must be a floating-point tensor"),
            (torch.full((1, 3, 32, 32), 2.0), ValueError, r"`images` values must lie in \[-1, 1\]"),
            (torch.zeros(1, 3, 64, 64), ValueError, r"`images` must be 32x32 pixels"),
            (torch.zeros(3, 32, 32), ValueError, r"`images` must have shape \(B, 3, H, W\)"),
            ([[0.0]], TypeError, "`images` must be a torch.Tensor"),
        ],
    )
    def test_bad_images(self, pair, x, exc, match):
        with pytest.raises(exc, match=match):
            generate_progressive(*pair, x, [1.0], GenerationConfig(steps=4, bf16=False))

    def test_bad_levels_and_batch(self, pair, images):
        with pytest.raises(ValueError, match=r"`levels` must lie in \(0, 1\], got \[0.0, 0.5\]"):
            generate_progressive(*pair, images, [0.0, 0.5], GenerationConfig(steps=4, bf16=False))
        with pytest.raises(ValueError, match="at most 4 fit"):
            generate_progressive(*pair, images, None, GenerationConfig(steps=4, bf16=False))
        with pytest.raises(ValueError, match="`max_batch` must be >= 1, got 0"):
            generate_progressive(*pair, images, [1.0], GenerationConfig(steps=4, max_batch=0, bf16=False))


class TestFixedBatch:
    def test_results_do_not_depend_on_grouping(self, pair, images):
        together = generate_progressive(*pair, images, [0.5, 1.0], GenerationConfig(steps=6, max_batch=4, bf16=False), fixed_batch=True)
        for b in range(images.shape[0]):
            alone = generate_progressive(*pair, images[b : b + 1], [0.5, 1.0], GenerationConfig(steps=6, max_batch=4, bf16=False), fixed_batch=True)
            assert torch.equal(alone.images[0], together.images[b])

    def test_needs_max_batch(self, pair, images):
        with pytest.raises(ValueError, match="`fixed_batch` needs `config.max_batch`"):
            generate_progressive(*pair, images, [1.0], GenerationConfig(steps=4, bf16=False), fixed_batch=True)
