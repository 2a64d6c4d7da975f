"""Label measures ("paper", "reference", "preview", "decoded"): exact answers, the generator, precompute, the user faces."""

import csv
import json
import math
import pickle

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from progaug.cache import ProgressiveCache, _rows_digest
from progaug.diffusion import DDIMSchedule, invert
from progaug.frequency import adaptive_depths, highpass_amplitude, soft_labels
from progaug.generator import GenerationConfig, generate_progressive
from progaug.hub import load_pair
from progaug.labels import (
    DEFAULT_MEASURE,
    LEGACY_MEASURE,
    MEASURES,
    band_amplitude,
    check_measure,
    decode_evaluations,
    interpolate_grid,
    inversion_evaluations,
    gaussian_blur,
    sketch_grid,
    sketch_path,
    labels_from_values,
    preview_distance,
    preview_labels,
    preview_x0,
)
from progaug.precomputation import PrecomputeConfig, precompute

from conftest import random_tiles

UNKNOWN = r"`measure` must be one of 'paper', 'reference', 'preview', 'decoded'; got 'noise'"


from test_generator import images, pair  # noqa: F401 - the same tiny pair and source images as the generator tests


def counting(model, calls, key):
    def f(x, t):
        calls[key].append(x.shape[0])
        return model(x, t)

    f.config = model.config
    return f


class TestCheckMeasure:
    def test_known_and_default(self):
        assert MEASURES == ("paper", "reference", "preview", "decoded") and DEFAULT_MEASURE == "preview" and LEGACY_MEASURE == "paper"
        assert [check_measure("measure", m) for m in MEASURES] == list(MEASURES)

    def test_inversion_evaluations(self):
        # previews: S more per source; sketches: 3 strided moves at each of the 10 grid depths
        assert [inversion_evaluations(m, 50) for m in MEASURES] == [50, 50, 100, 80]
        assert inversion_evaluations("decoded", 8) == 8 + 1 + 2 + 3 * 6  # grid 1..8: depth 1 takes 1 move, 2 takes 2
        with pytest.raises(ValueError, match=UNKNOWN):
            inversion_evaluations("noise", 50)

    def test_unknown_named_with_the_known_ones(self):
        with pytest.raises(ValueError, match=UNKNOWN):
            check_measure("measure", "noise")
        with pytest.raises(TypeError, match="`measure` must be a str"):
            check_measure("measure", 1)

    def test_unknown_refused_everywhere(self, pair, images, pair_dir):
        from progaug.datasets import SoftLabelProgressiveDataset
        from progaug.transforms import ProgressiveDiffusionAugment

        with pytest.raises(ValueError, match=UNKNOWN):
            generate_progressive(*pair, images, [1.0], GenerationConfig(steps=4, measure="noise", bf16=False))
        with pytest.raises(ValueError, match=UNKNOWN):
            GenerationConfig(measure="noise")
        with pytest.raises(ValueError, match=UNKNOWN):
            PrecomputeConfig(measure="noise")
        with pytest.raises(ValueError, match=UNKNOWN):
            SoftLabelProgressiveDataset([], ProgressiveDiffusionAugment(str(pair_dir)), classes=["a", "b"], measure="noise")


class TestPaper:
    def test_labels_bit_for_bit_as_eq_7_to_9(self, pair, images):
        r = generate_progressive(*pair, images, [0.3, 0.6, 1.0], GenerationConfig(steps=10, measure="paper", bf16=False))
        traj = invert(pair[0], images, DDIMSchedule.from_config(steps=10), return_trajectory=True)
        amplitudes = highpass_amplitude(traj).T
        assert torch.equal(r.measured, amplitudes)
        assert torch.equal(r.trajectory_labels, soft_labels(amplitudes))
        default = generate_progressive(*pair, images, [0.3, 0.6, 1.0], GenerationConfig(steps=10, bf16=False))
        assert default.measure == DEFAULT_MEASURE != "paper" and not torch.equal(default.soft_labels, r.soft_labels)

    def test_white_noise_amplitude(self):
        # iid N(0, 1) RGB: BT.601 luma variance v = 0.299^2 + 0.587^2 + 0.114^2; Rayleigh mean sqrt(pi v / 4)
        v = 0.299**2 + 0.587**2 + 0.114**2
        noise = torch.randn(8, 3, 128, 128, generator=torch.Generator().manual_seed(0))
        assert float(highpass_amplitude(noise).mean()) == pytest.approx(math.sqrt(math.pi * v / 4), rel=0.01)
        assert math.sqrt(math.pi * v / 4) == pytest.approx(0.5925, abs=1e-4)


class TestReference:
    @staticmethod
    def cosine(height, width, bin_, axis="x"):
        w = torch.arange(width if axis == "x" else height, dtype=torch.float32)
        wave = torch.cos(2 * torch.pi * bin_ * w / w.numel())
        grid = wave.expand(height, width) if axis == "x" else wave[:, None].expand(height, width)
        return grid.expand(1, 3, height, width).clone()

    def test_cosine_at_bin_3(self):
        # ortho FFT of cos(2 pi 3 x / W): sqrt(H W) / 2 at f_x = +-3; the band averages 10 bins
        assert float(band_amplitude(self.cosine(32, 32, 3))) == pytest.approx(math.sqrt(32 * 32) / 2 / 10, rel=1e-5)
        assert float(band_amplitude(self.cosine(32, 64, 3))) == pytest.approx(math.sqrt(32 * 64) / 2 / 10, rel=1e-5)

    def test_only_the_centre_row_and_the_band_count(self):
        assert float(band_amplitude(self.cosine(32, 32, 3, axis="y"))) < 1e-5  # vertical frequency
        assert float(band_amplitude(self.cosine(32, 32, 12))) < 1e-5  # outside bins 1..10
        assert float(band_amplitude(torch.full((2, 3, 32, 32), 0.4)).abs().max()) < 1e-6

    def test_band_clipped_at_the_edge_of_small_images(self):
        # 8 px: the centre column is 4, so only bins 1..3 lie right of DC
        assert float(band_amplitude(self.cosine(8, 8, 3))) == pytest.approx(math.sqrt(64) / 2 / 3, rel=1e-5)

    def test_labels_are_eq_9_of_the_band(self, pair, images):
        r = generate_progressive(*pair, images, [0.5, 1.0], GenerationConfig(steps=8, measure="reference", bf16=False))
        traj = invert(pair[0], images, DDIMSchedule.from_config(steps=8), return_trajectory=True)
        torch.testing.assert_close(r.measured, band_amplitude(traj).T, rtol=0, atol=0)
        assert torch.equal(r.trajectory_labels, soft_labels(r.measured))


class TestPreviewMaths:
    def test_blur_is_torchvision_gaussian_blur(self):
        x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(gaussian_blur(x), TF.gaussian_blur(x, kernel_size=[5, 5], sigma=[1.0, 1.0]))

    def test_distance_of_a_uniform_shift(self):
        src = torch.rand(2, 3, 16, 16) * 2 - 1
        d = preview_distance(src + torch.tensor([0.1, 0.3]).view(2, 1, 1, 1), src)
        torch.testing.assert_close(d, torch.tensor([0.1, 0.3]))

    def test_x0_prediction_clipped(self):
        a = torch.tensor([0.25, 1.0])
        x, eps = torch.full((2, 3, 2, 2), 0.5), torch.full((2, 3, 2, 2), 0.25)  # 0.25: exact in bf16
        x0 = preview_x0(x, eps.bfloat16(), a)
        assert x0.dtype == torch.float32
        torch.testing.assert_close(x0[0], torch.full((3, 2, 2), (0.5 - math.sqrt(0.75) * 0.25) / 0.5))
        assert float(preview_x0(torch.full((1, 3, 2, 2), 3.0), torch.zeros(1, 3, 2, 2), a[:1]).max()) == 1.0

    def test_running_max_labels(self):
        labels = preview_labels(torch.tensor([[0.0, 2.0, 1.0, 4.0, 3.0, 4.0], [0.0, 1.0, 3.0, 2.0, 5.0, 2.5]]))
        torch.testing.assert_close(labels, torch.tensor([[0, 0.5, 0.5, 1, 1, 1], [0, 0.4, 1, 1, 1, 1.0]]))
        torch.testing.assert_close(preview_labels(torch.zeros(1, 5)), torch.linspace(0, 1, 5)[None])  # d(S) = 0

    def test_labels_dispatch(self):
        values = torch.tensor([[0.0, 2.0, 1.0, 4.0]])
        assert torch.equal(labels_from_values("preview", values), preview_labels(values))
        assert torch.equal(labels_from_values("paper", values), soft_labels(values))


class TestPreviewGenerator:
    def test_distances_from_the_target_models_preview(self, pair, images):
        steps = 6
        r = generate_progressive(*pair, images, [0.5, 1.0], GenerationConfig(steps=steps, measure="preview", bf16=False))
        sched = DDIMSchedule.from_config(steps=steps)
        traj = invert(pair[0], images, sched, return_trajectory=True)
        blurred_source = TF.gaussian_blur(images, kernel_size=[5, 5], sigma=[1.0, 1.0])
        expected = torch.zeros(3, steps + 1)
        for k in range(1, steps + 1):
            a = float(sched.alpha_bar[k])
            eps = pair[1](traj[k], torch.full((3,), int(sched.timesteps[k])))
            x0 = ((traj[k] - math.sqrt(1 - a) * eps) / math.sqrt(a)).clamp(-1, 1)
            diff = TF.gaussian_blur(x0, kernel_size=[5, 5], sigma=[1.0, 1.0]) - blurred_source
            expected[:, k] = diff.square().mean(dim=(1, 2, 3)).sqrt()
        torch.testing.assert_close(r.measured, expected, atol=1e-5, rtol=1e-4)

    def test_labels_monotone_with_endpoints(self, pair, images):
        r = generate_progressive(*pair, images, [0.25, 0.5, 0.75, 1.0], GenerationConfig(steps=10, measure="preview", bf16=False))
        labels = r.trajectory_labels
        assert bool((labels[:, 0] == 0).all()) and bool((labels[:, -1] == 1).all())
        assert bool((labels.diff(dim=1) >= 0).all())
        torch.testing.assert_close(r.soft_labels, labels.gather(1, r.depths))
        assert bool((r.depths.diff(dim=1) > 0).all())

    def test_batched_with_max_batch_and_fixed_batch(self, pair, images):
        calls = {"source": [], "target": []}
        r = generate_progressive(counting(pair[0], calls, "source"), counting(pair[1], calls, "target"), images, [0.5, 1.0], GenerationConfig(steps=6, measure="preview", max_batch=4, bf16=False), fixed_batch=True)
        assert set(calls["source"]) == set(calls["target"]) == {4}  # every call padded to max_batch rows
        alone = generate_progressive(*pair, images[1:2], [0.5, 1.0], GenerationConfig(steps=6, measure="preview", max_batch=4, bf16=False), fixed_batch=True)
        assert torch.equal(alone.measured[0], r.measured[1]) and torch.equal(alone.images[0], r.images[1])


@pytest.mark.parametrize("measure", MEASURES)
def test_model_evaluations_counted(pair, images, measure):
    calls = {"source": [], "target": []}
    r = generate_progressive(counting(pair[0], calls, "source"), counting(pair[1], calls, "target"), images, [0.5, 1.0], GenerationConfig(steps=8, measure=measure, max_batch=2, bf16=False))
    previews = 3 * (inversion_evaluations(measure, 8) - 8)
    assert sum(calls["source"]) == 3 * 8 and max(calls["target"]) <= 2
    assert sum(calls["target"]) == int(r.depths.sum()) + previews
    assert r.model_evaluations == sum(calls["source"]) + sum(calls["target"])


def test_decode_evaluations_are_ceil_depth_over_stride():
    depths = torch.tensor([[0, 1, 5, 50], [2, 3, 4, 49]])
    assert decode_evaluations(depths) == 114
    assert decode_evaluations(depths, 2) == 0 + 1 + 3 + 25 + 1 + 2 + 2 + 25
    assert decode_evaluations([7], 3) == 3 and decode_evaluations([], 2) == 0
    with pytest.raises(ValueError, match="`stride` must be >= 1, got 0"):
        decode_evaluations(depths, 0)


class TestLevelOneIsTheFullTranslation:
    def test_adaptive_depths(self):
        labels = torch.tensor([[0.0, 0.5, 1.0, 1.0, 1.0], [0.0, 0.5, 1.0, 1.0, 1.0]])
        assert adaptive_depths(labels, [0.5, 1.0]).tolist() == [[1, 4], [1, 4]]
        assert adaptive_depths(labels, torch.tensor([[0.5, 1.0], [0.5, 0.99]])).tolist() == [[1, 4], [1, 2]]
        assert adaptive_depths(labels, [0.25, 0.5, 0.75, 1.0]).tolist() == [[1, 2, 3, 4]] * 2

    @pytest.mark.parametrize("measure", MEASURES)
    def test_every_measure(self, pair, images, measure):
        r = generate_progressive(*pair, images, [0.2, 0.6, 1.0], GenerationConfig(steps=10, measure=measure, bf16=False))
        assert r.depths[:, -1].tolist() == [10, 10, 10] and r.soft_labels[:, -1].tolist() == [1.0, 1.0, 1.0]


class TestFloat32OutsideAutocast:
    def test_measures_ignore_an_enclosing_autocast(self):
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
        plain = (highpass_amplitude(x), band_amplitude(x), preview_distance(x.clamp(-1, 1), x.clamp(-1, 1) * 0.5))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inside = (highpass_amplitude(x), band_amplitude(x), preview_distance(x.clamp(-1, 1), x.clamp(-1, 1) * 0.5))
        for a, b in zip(plain, inside):
            assert b.dtype == torch.float32 and torch.equal(a, b)

    @pytest.mark.parametrize("measure", MEASURES)
    def test_generator_measures_outside_autocast(self, pair, images, measure, monkeypatch):
        import progaug.generator as gen

        seen = []

        def spy(fn):
            def wrapped(*args, **kwargs):
                seen.append(torch.is_autocast_enabled("cpu"))
                out = fn(*args, **kwargs)
                assert out.dtype == torch.float32
                return out

            return wrapped

        for name in ("measure_states", "labels_from_values", "preview_distance", "preview_x0"):
            monkeypatch.setattr(gen, name, spy(getattr(gen, name)))
        r = generate_progressive(*pair, images, [0.5, 1.0], GenerationConfig(steps=6, measure=measure, bf16=True))
        assert seen and not any(seen)
        if measure == "paper":  # autocast reaches the decodes only: the inversion and its measure are float32
            traj = invert(pair[0], images, DDIMSchedule.from_config(steps=6), return_trajectory=True)
            assert torch.equal(r.measured, highpass_amplitude(traj).T)


# ------------------------------------------------------------------------------ precompute and user faces

CFG = dict(n=6, num_levels=3, steps=6, max_batch=4)


def run(pair_dir, out, resume=False, **kw):
    return precompute(load_pair(pair_dir), random_tiles(2), ["t0", "t1"], out, PrecomputeConfig(**{**CFG, **kw}),
                      resume=resume, progress=False)


def images_of(out):
    return {p.name: p.read_bytes() for p in sorted((out / "images").iterdir())}


def write_as_before_measure(out):
    """Rewrite a finished folder as progaug wrote it before the ``measure`` setting existed."""
    for path in sorted((out / "records").iterdir()):
        record = json.loads(path.read_text())
        for row in record["rows"]:
            del row["measure"]
        record["rows_sha256"] = _rows_digest(record["rows"])
        path.write_text(json.dumps(record))
    run_json = json.loads((out / "run.json").read_text())
    del run_json["config"]["measure"]
    (out / "run.json").write_text(json.dumps(run_json))
    with open(out / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    fields = [k for k in rows[0] if k != "measure"]
    with open(out / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    from progaug.fileio import sha256_file

    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["settings"]["config"]["measure"]
    manifest["files"]["labels.csv"] = sha256_file(out / "labels.csv")
    (out / "manifest.json").write_text(json.dumps(manifest))


class TestPrecompute:
    def test_measure_recorded(self, pair_dir, tmp_path):
        out = run(pair_dir, tmp_path / "c", measure="preview")
        rows = list(csv.DictReader(open(out / "labels.csv")))
        assert {r["measure"] for r in rows} == {"preview"}
        assert json.loads((out / "run.json").read_text())["config"]["measure"] == "preview"
        assert json.loads((out / "manifest.json").read_text())["settings"]["config"]["measure"] == "preview"
        cache = ProgressiveCache.open(out)
        assert cache.measure == "preview" and {r["measure"] for r in cache.rows} == {"preview"}
        assert [r["depth"] for r in cache.rows[2::3]] == [6, 6]  # level 1.0: depth S

    def test_resume_with_another_measure_refused_naming_both(self, pair_dir, tmp_path):
        run(pair_dir, tmp_path / "c", measure="paper")
        with pytest.raises(ValueError, match='made with other settings: config.measure: stored "paper", now "preview"'):
            run(pair_dir, tmp_path / "c", resume=True, measure="preview")

    def test_folder_from_before_the_setting_reads_and_resumes_as_paper(self, pair_dir, tmp_path):
        out = run(pair_dir, tmp_path / "c", measure="paper")
        reference = images_of(out)
        write_as_before_measure(out)
        cache = ProgressiveCache.open(out)
        assert cache.measure == "paper" and {r["measure"] for r in cache.rows} == {"paper"}
        (out / "records" / "000001.json").unlink()
        with pytest.raises(ValueError, match=f'config.measure: stored "paper", now "{DEFAULT_MEASURE}"'):
            run(pair_dir, out, resume=True)  # the default changed since: the old measure must be asked for
        run(pair_dir, out, resume=True, measure="paper")  # accepted: no `measure` stored means "paper"
        assert images_of(out) == reference
        assert {r["measure"] for r in ProgressiveCache.open(out).rows} == {"paper"}
        with pytest.raises(ValueError, match='config.measure: stored "paper", now "reference"'):
            run(pair_dir, out, resume=True, measure="reference")


class TestUserFaces:
    def test_cli_flags(self):
        from progaug.cli import build_parser
        from progaug.cli_args import config_from_args

        parser = build_parser()
        args = parser.parse_args(["precompute", "--measure", "preview"])
        assert config_from_args(PrecomputeConfig, args).measure == "preview"
        assert config_from_args(PrecomputeConfig, parser.parse_args(["precompute"])).measure == DEFAULT_MEASURE
        assert parser.parse_args(["progressive", "--measure", "reference"]).measure == "reference"
        assert config_from_args(GenerationConfig, parser.parse_args(["progressive"])).measure == DEFAULT_MEASURE
        with pytest.raises(SystemExit):
            parser.parse_args(["progressive", "--measure", "noise"])

    def test_progressive_command_passes_the_measure(self, pair_dir, class_folders, tmp_path, monkeypatch):
        import progaug.generator
        from progaug.cli import main

        real, used = progaug.generator.generate_progressive, []
        monkeypatch.setattr(progaug.generator, "generate_progressive",
                            lambda *a, **kw: (used.append(a[4].measure), real(*a, **kw))[1])
        assert main(["progressive", "--pair", str(pair_dir), "--source", str(class_folders / "normal"), "--count", "1",
                     "--num-levels", "2", "--steps", "3", "--threads", "1", "--measure", "preview",
                     "--out", str(tmp_path / "s.png")]) == 0
        assert used == ["preview"]

    def test_transform_passes_and_pickles_the_measure(self, pair_dir, monkeypatch):
        import progaug.generator
        from progaug.transforms import ProgressiveDiffusionAugment

        t = ProgressiveDiffusionAugment(str(pair_dir), p=1.0, levels=[1.0], generation=GenerationConfig(steps=4, measure="preview", max_batch=4))
        clone = pickle.loads(pickle.dumps(t))
        assert clone.measure == "preview" and "measure='preview'" in repr(t)
        real, used = progaug.generator.generate_progressive, []
        monkeypatch.setattr(progaug.generator, "generate_progressive",
                            lambda *a, **kw: (used.append(a[4].measure), real(*a, **kw))[1])
        _, rows = clone(random_tiles(2), torch.tensor([0, 0]))
        assert used == ["preview"] and rows[:, 1].tolist() == [1.0, 1.0]

    def test_dataset_measure(self, pair_dir, tmp_path):
        from progaug.datasets import SoftLabelProgressiveDataset
        from progaug.transforms import ProgressiveDiffusionAugment

        augment = ProgressiveDiffusionAugment(str(pair_dir), generation=GenerationConfig(steps=4))
        ds = SoftLabelProgressiveDataset([], augment, classes=["a", "b"], measure="preview")
        assert ds.measure == ds.augment.measure == "preview" and augment.measure == DEFAULT_MEASURE  # set on a copy
        assert SoftLabelProgressiveDataset([], augment, classes=["a", "b"]).measure == DEFAULT_MEASURE
        paper = SoftLabelProgressiveDataset([], augment, classes=["a", "b"], measure="paper")
        assert paper.measure == paper.augment.measure == "paper" and augment.measure == DEFAULT_MEASURE
        with pytest.raises(ValueError, match="`measure` 'preview' needs an `augment` with a `measure` setting"):
            SoftLabelProgressiveDataset([], None, classes=["a", "b"], measure="preview")
        out = run(pair_dir, tmp_path / "c", measure="reference")
        assert SoftLabelProgressiveDataset.from_cache(out).measure == "reference"
        with pytest.raises(ValueError, match="made with measure 'reference', not the requested 'paper'"):
            SoftLabelProgressiveDataset.from_cache(out, measure="paper")


# ------------------------------------------------------------------------------------------ "decoded"


def test_sketch_grid_and_path():
    assert sketch_grid(50).tolist() == [5, 10, 15, 20, 25, 30, 35, 40, 45, 50]
    assert sketch_grid(7).tolist() == list(range(1, 8)) and sketch_grid(25).tolist()[-1] == 25
    assert sketch_path(50) == [50, 33, 17, 0] and sketch_path(5) == [5, 3, 2, 0] and sketch_path(2) == [2, 1, 0]
    with pytest.raises(ValueError, match="`depth` and `moves` must be >= 1, got 0 and 3"):
        sketch_path(0)


def test_interpolate_grid_is_exact_at_the_grid_and_linear_between():
    values = torch.tensor([[1.0, 3.0], [2.0, 2.0]])
    out = interpolate_grid(torch.tensor([5, 10]), values, 10)
    torch.testing.assert_close(out[:, [0, 5, 10]], torch.tensor([[0.0, 1.0, 3.0], [0.0, 2.0, 2.0]]))
    torch.testing.assert_close(out[0, 6:10], torch.tensor([1.4, 1.8, 2.2, 2.6]))
    torch.testing.assert_close(out[1, :6], torch.linspace(0, 2, 6))
    with pytest.raises(ValueError, match=r"`grid` must rise strictly from >= 1 to steps = 10, got \[5, 9\]"):
        interpolate_grid(torch.tensor([5, 9]), values, 10)


def test_decoded_distances_are_those_of_sketch_decodes(pair, images):  # noqa: F811
    from progaug.config import DiffusionConfig
    from progaug.diffusion import ddim_step

    src, tgt = pair
    r = generate_progressive(src, tgt, images, [0.5, 1.0], GenerationConfig(steps=8, measure="decoded", max_batch=2, bf16=False))
    schedule = DDIMSchedule.from_config(DiffusionConfig(), 8)
    traj = invert(src, images, schedule, return_trajectory=True)
    for depth in (3, 8):
        x = traj[depth]
        path = sketch_path(depth)
        for a, b in zip(path, path[1:]):
            x = ddim_step(tgt, x, timestep=int(schedule.timesteps[a]), alpha_bar_from=float(schedule.alpha_bar[a]),
                          alpha_bar_to=float(schedule.alpha_bar[b]))
        torch.testing.assert_close(r.measured[:, depth], preview_distance(x, images), rtol=1e-4, atol=1e-5)
    labels = r.trajectory_labels
    assert bool((labels[:, 0] == 0).all()) and bool((labels[:, -1] == 1).all()) and bool((labels.diff(dim=1) >= 0).all())
    torch.testing.assert_close(labels, preview_labels(r.measured))
