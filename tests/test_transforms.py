"""ProgressiveDiffusionAugment (per sample and batch form) and SoftLabelProgressiveDataset."""

import dataclasses
import pickle
import time

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from progaug.data.tiles import TileDataset, TileSet
from progaug.datasets import SoftLabelProgressiveDataset
from progaug.generator import GenerationConfig
from progaug.replacement import DEFAULT_REPLACE_PROB
from progaug.precomputation import PrecomputeConfig, precompute
from progaug.hub import load_pair
from progaug.transforms import ProgressiveDiffusionAugment

from conftest import random_tiles


def make(pair_dir, **kw):
    """A transform of the tiny test pair in float32 (bf16=False): these tests pin float32 properties such as
    rows per call not changing results; bf16, on by default on CPUs with native bf16, is tested apart.
    Generation settings among ``kw`` (steps, measure, max_batch, bf16, ...) go into its GenerationConfig."""
    generation = {k: kw.pop(k) for k in [f.name for f in dataclasses.fields(GenerationConfig)] if k in kw}
    return ProgressiveDiffusionAugment(str(pair_dir), **{"p": 1.0, **kw}, generation=GenerationConfig(**{"steps": 6, "bf16": False, **generation}))


class TestConstruction:
    @pytest.mark.parametrize(
        "kw,exc,match",
        [
            (dict(p=1.5), ValueError, r"`p` must be a probability in \[0, 1\], got 1.5"),
            (dict(level_range=(0.0, 0.5)), ValueError, "`level_range` must satisfy"),
            (dict(levels=[0.5, 1.2]), ValueError, r"`levels` must be non-empty values in \(0, 1\]"),
            (dict(steps=0), ValueError, "`steps` must be >= 1, got 0"),
            (dict(direction=(2, 1)), ValueError, r"`direction` entries must be ints in \[0, 2\), got \(2, 1\)"),
            (dict(direction=(0, 0)), ValueError, "`direction` must name two different classes"),
            (dict(direction=0), TypeError, r"`direction` must be a pair \(source class index, target class index\), got int 0"),
            (dict(direction=(0, 1, 1)), ValueError, r"`direction` must be a pair .*, got \(0, 1, 1\)"),
            (dict(levels=0.5), TypeError, r"`levels` must be a list of values in \(0, 1\], got float 0.5"),
            (dict(levels=["0.5"]), TypeError, "`levels` must be a number, got str '0.5'"),
            (dict(levels=[0.5, float("nan")]), ValueError, r"`levels` must be non-empty values in \(0, 1\]"),
            (dict(normalize=((0.5, 0.5, 0.5),)), ValueError, r"`normalize` must be a pair \(mean, std\), 3 values each"),
            (dict(normalize=(0.5, 0.2)), TypeError, r"`normalize` must be \(mean, std\), 3 values each, got float 0.5"),
            (dict(normalize=((0.5, 0.5), (0.2, 0.2))), ValueError, r"`normalize` must be \(mean, std\), 3 values each, got"),
            (dict(normalize=((0.5, 0.5, "x"), (0.2, 0.2, 0.2))), TypeError, "`normalize` must be a number, got str 'x'"),
            (dict(normalize=((0.5, 0.5, 0.5), (0.2, 0.0, 0.2))), ValueError, "`normalize` std must be positive"),
            (dict(max_batch=2.0), TypeError, "`max_batch` must be an int"),
            (dict(p=True), TypeError, "`p` must be a number, got bool True"),
            (dict(direction=(1.0, 0)), TypeError, "`direction` must be an int, got float 1.0"),
            (dict(steps="6"), TypeError, "`steps` must be an int, got str '6'"),
        ],
    )
    def test_bad_arguments(self, pair_dir, kw, exc, match):
        with pytest.raises(exc, match=match):
            make(pair_dir, **kw)

    def test_levels_and_normalize_take_tensors_and_arrays(self, pair_dir):
        import numpy as np

        t = make(pair_dir, levels=torch.tensor([0.5, 1.0]), normalize=(np.full(3, 0.5, dtype=np.float32), [0.25] * 3))
        assert t.levels == [0.5, 1.0] and t.mean == (0.5, 0.5, 0.5) and t.std == (0.25, 0.25, 0.25)
        assert all(type(v) is float for v in (*t.levels, *t.mean, *t.std))

    def test_bad_pair_type(self):
        with pytest.raises(TypeError, match="`pair` must be a name, folder, URL or Pair"):
            ProgressiveDiffusionAugment(pair=3)
        with pytest.raises(TypeError, match="`generation` must be a progaug.generator.GenerationConfig, got dict"):
            ProgressiveDiffusionAugment(generation={"steps": 4})

    def test_pickles_cheaply_without_weights(self, pair_dir):
        t = make(pair_dir)
        t.pair  # load the models in this process
        start = time.perf_counter()
        blob = pickle.dumps(t)
        assert time.perf_counter() - start < 0.05 and len(blob) < 5000  # 1.7 M float parameters are not in it
        clone = pickle.loads(blob)
        assert clone.p == 1.0 and clone.pair is not t.pair  # the clone loads its own models on first use
        x, y = random_tiles(2).float() / 255, torch.tensor([0, 0])
        torch.manual_seed(4)
        a = t(x, y)
        torch.manual_seed(4)
        b = clone(x, y)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


class TestBatchForm:
    def test_source_rows_become_progressive(self, pair_dir):
        t = make(pair_dir)
        x = random_tiles(4).float() / 255
        y = torch.tensor([0, 1, 0, 1])
        out, rows = t(x, y)
        assert out.shape == x.shape and rows.shape == (4, 2)
        torch.testing.assert_close(rows.sum(1), torch.ones(4))
        assert torch.equal(out[1], x[1]) and torch.equal(rows[1], torch.tensor([0.0, 1.0]))  # target class untouched
        assert not torch.equal(out[0], x[0]) and 0 < float(rows[0, 1]) <= 1

    def test_automatic_rows_per_call_same_result(self, pair_dir, monkeypatch):
        import progaug.generator
        import progaug.runtime

        monkeypatch.setattr(progaug.runtime, "CPU_MAX_BATCH", 2)  # what auto_max_batch gives on CPUs
        sizings = []
        real = progaug.generator.auto_max_batch
        monkeypatch.setattr(progaug.generator, "auto_max_batch", lambda *a, **k: sizings.append(a[2]) or real(*a, **k))
        x, y = random_tiles(3).float() / 255, torch.tensor([0, 0, 0])
        auto, fixed = make(pair_dir), make(pair_dir, max_batch=1)
        rows = {"auto": [], "fixed": []}
        for key, t in (("auto", auto), ("fixed", fixed)):
            t.pair.source.register_forward_pre_hook(lambda m, args, key=key: rows[key].append(args[0].shape[0]))
        torch.manual_seed(3)
        a = auto(x, y)
        torch.manual_seed(3)
        b = fixed(x, y)
        auto(x, y)  # sized once per device
        assert sizings == [torch.device("cpu")] or sizings == ["cpu"]
        assert max(rows["auto"]) == 2 and max(rows["fixed"]) == 1
        torch.testing.assert_close(a[0], b[0], atol=1 / 255, rtol=0)
        torch.testing.assert_close(a[1], b[1], atol=1e-4, rtol=0)

    def test_steps_default_to_the_pair(self, pair_dir):
        t = ProgressiveDiffusionAugment(str(pair_dir), p=1.0, generation=GenerationConfig(max_batch=4))
        calls = []
        t.pair.source.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
        t(random_tiles(2).float() / 255, torch.tensor([0, 0]))
        assert t.generation.steps is None and len(calls) == t.pair.diffusion.sampling_steps  # one inversion call per step

    def test_make_params_then_transform_is_the_call(self, pair_dir):
        t = make(pair_dir, level_range=(0.3, 0.6))
        x, y = random_tiles(4).float() / 255, torch.tensor([0, 1, 0, 0])
        rows = torch.nn.functional.one_hot(y, 2).float()
        torch.manual_seed(1)
        params = t.make_params([x, rows])
        assert params["chosen"].tolist() == [0, 2, 3]  # the source rows (p = 1)
        assert params["levels"].shape == (3,) and bool(((params["levels"] >= 0.3) & (params["levels"] <= 0.6)).all())
        out, new_rows = t.transform((x, rows), params)
        torch.manual_seed(1)
        expected, expected_rows = t(x, y)
        assert torch.equal(out, expected) and torch.equal(new_rows, expected_rows)

    def test_draws_do_not_depend_on_loading_the_pair(self, pair_dir):
        """All draws come before the work, so a lazily loaded pair (whose U-Net initialisation uses
        torch's generator) does not shift them: a seeded call gives the same result either way."""
        x, y = random_tiles(2).float() / 255, torch.tensor([0, 0])
        loaded, lazy = make(pair_dir), make(pair_dir)
        loaded.pair
        torch.manual_seed(5)
        a = lazy(x, y)
        torch.manual_seed(5)
        b = loaded(x, y)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])

    def test_p_zero_and_disabled_pass_through(self, pair_dir):
        x, y = random_tiles(2).float() / 255, torch.tensor([0, 0])
        out, rows = make(pair_dir, p=0.0)(x, y)
        assert torch.equal(out, x) and torch.equal(rows, torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
        t = make(pair_dir)
        t.mixup_enabled = False
        assert torch.equal(t(x, y)[0], x)

    def test_normalised_batches_round_trip(self, pair_dir):
        mean, std = (0.7, 0.5, 0.6), (0.2, 0.25, 0.2)
        x = random_tiles(2).float() / 255
        norm = v2.Normalize(mean, std)(x)
        plain, _ = make(pair_dir, levels=[1.0])(x, torch.tensor([0, 0]))
        normed, _ = make(pair_dir, levels=[1.0], normalize=(mean, std))(norm, torch.tensor([0, 0]))
        # the undo-redo of the normalisation costs float rounding, amplified through the DDIM steps
        torch.testing.assert_close(normed, v2.Normalize(mean, std)(plain), atol=5e-3, rtol=0)

    def test_soft_rows_in_and_mixup_downstream(self, pair_dir):
        x = random_tiles(4).float() / 255
        rows_in = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
        out, rows = make(pair_dir)(x, rows_in)
        assert torch.equal(rows[1::2], rows_in[1::2]) and bool((rows[0::2, 1] > 0).all())  # source rows became soft
        mixed, mixed_rows = v2.MixUp(num_classes=2)(out, rows)
        torch.testing.assert_close(mixed_rows.sum(1), torch.ones(4))
        assert not torch.equal(mixed_rows, rows)

    def test_bad_batches(self, pair_dir):
        t = make(pair_dir)
        with pytest.raises(ValueError, match="label outside the 2 classes"):
            t(torch.rand(2, 3, 32, 32), torch.tensor([0, 5]))
        with pytest.raises(ValueError, match=r"images must be in \[0, 1\]"):
            t(torch.rand(2, 3, 32, 32) * 4, torch.tensor([0, 0]))
        with pytest.raises(ValueError, match="trained on 32x32 tiles"):
            t(torch.rand(2, 3, 64, 64), torch.tensor([0, 0]))


class TestSampleForm:
    def test_pil_in_pil_out(self, pair_dir):
        img = Image.fromarray(random_tiles(1)[0].permute(1, 2, 0).numpy())
        out, row = make(pair_dir)(img, 0)
        assert isinstance(out, Image.Image) and out.size == (32, 32) and row.shape == (2,)

    def test_uint8_tensor_and_target_class(self, pair_dir):
        x = random_tiles(1)[0]
        out, row = make(pair_dir)(x, 1)
        assert out.dtype == torch.uint8 and torch.equal(out, x) and row.tolist() == [0.0, 1.0]

    def test_bad_samples(self, pair_dir):
        t = make(pair_dir)
        with pytest.raises(ValueError, match="mode 'L'"):
            t(Image.new("L", (32, 32)), 0)
        with pytest.raises(ValueError, match="trained on 32x32"):
            t(Image.new("RGB", (40, 40)), 0)
        with pytest.raises(ValueError, match="label 3 is outside the 2 classes"):
            t(Image.new("RGB", (32, 32)), 3)


def _tile_dataset(n=4):
    tiles = random_tiles(2 * n)
    return TileDataset(TileSet(tiles, torch.tensor([0] * n + [1] * n), ("stroma", "tumour"), tuple(map(str, range(2 * n)))))


class TestDataset:
    def test_on_the_fly_reproducible_per_epoch(self, pair_dir):
        ds = SoftLabelProgressiveDataset(_tile_dataset(), make(pair_dir, p=1.0))
        assert ds.classes == ["stroma", "tumour"] and ds.class_to_idx == {"stroma": 0, "tumour": 1}
        a1, r1 = ds[0]
        a2, r2 = ds[0]
        assert torch.equal(a1, a2) and torch.equal(r1, r2)
        ds.set_epoch(1)
        _, r3 = ds[0]
        assert not torch.equal(r1, r3)  # another level drawn in another epoch
        img, row = ds[6]
        assert row.tolist() == [0.0, 1.0] and float(img.max()) <= 1.0

    def test_from_cache_mixes_real(self, pair_dir, tmp_path):
        out = precompute(load_pair(pair_dir), random_tiles(2), ["a", "b"], tmp_path / "c",
                         PrecomputeConfig(n=6, num_levels=3, steps=6, max_batch=4), progress=False)
        ds = SoftLabelProgressiveDataset.from_cache(out, real=_tile_dataset(2), replace_prob=None)  # concatenated
        assert len(ds) == 6 + 4 and ds.classes == ["stroma", "tumour"]
        image, row = ds[0]
        assert image.shape == (3, 32, 32) and abs(float(row.sum()) - 1) < 1e-6
        assert ds[9][1].tolist() == [0.0, 1.0]
        x, rows = ds.sample_batch(5, torch.Generator().manual_seed(0))
        assert x.shape == (5, 3, 32, 32) and rows.shape == (5, 2)

    def test_from_cache_replacement_keeps_the_real_samples_per_epoch(self, pair_dir, tmp_path):
        out = precompute(load_pair(pair_dir), random_tiles(2), ["a", "b"], tmp_path / "c",
                         PrecomputeConfig(n=6, num_levels=3, steps=6, max_batch=4), progress=False)
        real = _tile_dataset(2)  # 4 real tiles
        ds = SoftLabelProgressiveDataset.from_cache(out, real=real, replace_prob=0.5)
        assert len(ds) == 4  # one epoch = one pass over the real samples
        epochs = []
        for epoch in range(40):
            ds.set_epoch(epoch)
            epochs.append([ds[i][1][1].item() for i in range(4)])
        generated = sum(row != float(real[i][1]) for rows in epochs for i, row in enumerate(rows))
        assert 40 < generated < 120  # about half of 160 draws replaced
        ds.set_epoch(3)
        assert [ds[i][1][1].item() for i in range(4)] == epochs[3]  # (seed, epoch, index) decide
        none = SoftLabelProgressiveDataset.from_cache(out, real=real, replace_prob=0.0)
        assert [none[i][1].argmax().item() for i in range(4)] == [int(real[i][1]) for i in range(4)]
        x, rows = SoftLabelProgressiveDataset.from_cache(out, real=real, replace_prob=1.0).sample_batch(8, torch.Generator().manual_seed(0))
        assert x.shape == (8, 3, 32, 32) and bool(((rows > 0) & (rows < 1)).any() | (rows[:, 0] == 1).any())
        assert len(SoftLabelProgressiveDataset.from_cache(out, real=real, replace_prob=None)) == 6 + 4  # None: concatenated
        default = SoftLabelProgressiveDataset.from_cache(out, real=real)  # replacement at 0.3: one epoch = the real samples
        assert len(default) == 4 and default.replace_prob == DEFAULT_REPLACE_PROB == 0.3
        assert len(SoftLabelProgressiveDataset.from_cache(out)) == 6 and SoftLabelProgressiveDataset.from_cache(out).replace_prob is None

    def test_from_cache_replacement_and_filter_need_real_samples(self, pair_dir, tmp_path):
        from progaug.selection import SelectiveFilter

        out = precompute(load_pair(pair_dir), random_tiles(2), ["a", "b"], tmp_path / "c",
                         PrecomputeConfig(n=3, num_levels=3, steps=6, max_batch=4), progress=False)
        with pytest.raises(ValueError, match="`replace_prob` needs `real` samples"):
            SoftLabelProgressiveDataset.from_cache(out, replace_prob=0.1)
        with pytest.raises(ValueError, match=r"`replace_prob` must lie in \[0, 1\], got 1.2"):
            SoftLabelProgressiveDataset.from_cache(out, real=_tile_dataset(2), replace_prob=1.2)
        with pytest.raises(TypeError, match="`selective` must be a progaug.selection.SelectiveFilter"):
            SoftLabelProgressiveDataset.from_cache(out, real=_tile_dataset(2), selective=0.5)
        ds = SoftLabelProgressiveDataset.from_cache(out, real=_tile_dataset(2), selective=SelectiveFilter(margin=0.0, teacher_epochs=1),
                                                     replace_prob=None)
        kept = ds.filter_report["kept"]
        assert ds.filter_report["total"] == 3 and kept < 3 and len(ds) == kept + 4  # margin 0 drops any disagreement
        everything = SoftLabelProgressiveDataset.from_cache(out, real=_tile_dataset(2), selective=SelectiveFilter(margin=1.0, teacher_epochs=1))
        assert everything.filter_report["kept"] == 3

    def test_from_cache_class_mismatch(self, pair_dir, tmp_path):
        out = precompute(load_pair(pair_dir), random_tiles(2), ["a", "b"], tmp_path / "c",
                         PrecomputeConfig(n=3, num_levels=3, steps=6, max_batch=4), progress=False)
        with pytest.raises(ValueError, match="the cache's class 'stroma' is not among the classes"):
            SoftLabelProgressiveDataset.from_cache(out, classes=["normal", "tumour"])


@pytest.mark.parametrize("native", [True, False])
def test_bf16_by_default_where_the_device_has_it(pair_dir, monkeypatch, native):
    import progaug.generator
    import progaug.runtime

    seen = []
    real = progaug.generator.generate_progressive
    monkeypatch.setattr(progaug.generator, "generate_progressive", lambda *a, **k: seen.append(a[4].bf16) or real(*a, **k))
    monkeypatch.setattr(progaug.runtime, "native_bf16", lambda device: native)
    x, y = random_tiles(1).float() / 255, torch.tensor([0])
    ProgressiveDiffusionAugment(str(pair_dir), p=1.0, generation=GenerationConfig(steps=4))(x, y)
    ProgressiveDiffusionAugment(str(pair_dir), p=1.0, generation=GenerationConfig(steps=4, bf16=False))(x, y)
    assert seen == [native, False]  # the config each call got, made concrete for the device
    with pytest.raises(TypeError, match="`bf16` must be True, False or None"):
        GenerationConfig(bf16="on")
