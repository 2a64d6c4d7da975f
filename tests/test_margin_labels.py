"""Soft labels read from the decoded images: ``GenerationConfig(labels="margin")`` and ``progaug calibrate``."""

import csv
import json

import pytest
import torch

from conftest import make_pair_dir, split_folders
from progaug.diffusion.schedule import training_alpha_bar
from progaug.generator import GenerationConfig, ProgressiveGenerator
from progaug.hub import load_pair
from progaug.margin import MarginCalibration, denoising_margin, read_calibration, write_calibration

CALIBRATION = MarginCalibration(slope=50.0, intercept=0.1, timesteps=(700, 900), seed=3, tiles=(5, 5), auc=0.9, fitted_on="test")


@pytest.fixture
def calibrated_pair(tmp_path):
    folder = make_pair_dir(tmp_path / "pair")
    write_calibration(folder, CALIBRATION)
    return load_pair(folder)


@pytest.fixture
def images():
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1


def test_margin_labels_are_each_output_s_calibrated_margin_and_the_images_do_not_change(calibrated_pair, images):
    levels = [0.5, 1.0]
    by_measure = ProgressiveGenerator(calibrated_pair, GenerationConfig(steps=8, bf16=False, labels="measure"))(images, levels)
    by_margin = ProgressiveGenerator(calibrated_pair, GenerationConfig(steps=8, bf16=False, labels="margin"))(images, levels)
    assert torch.equal(by_margin.images, by_measure.images) and torch.equal(by_margin.depths, by_measure.depths)
    outputs = by_margin.images.flatten(0, 1)
    margins = denoising_margin(calibrated_pair.source, calibrated_pair.target, training_alpha_bar(calibrated_pair.diffusion), outputs,
                               CALIBRATION.timesteps, seed=CALIBRATION.seed, shared_noise=True)
    torch.testing.assert_close(by_margin.soft_labels, CALIBRATION.probability(margins).view(3, 2))
    assert not torch.allclose(by_margin.soft_labels, by_measure.soft_labels)
    # two evaluations per margin timestep per output on top of the measure's
    assert by_margin.model_evaluations - by_measure.model_evaluations == 2 * 2 * 6


def test_an_output_s_margin_label_does_not_depend_on_its_batch(calibrated_pair, images):
    config = GenerationConfig(steps=6, bf16=False, labels="margin", max_batch=2)
    generator = ProgressiveGenerator(calibrated_pair, config, fixed_batch=True)
    together = generator(images, [0.5, 1.0])
    alone = torch.cat([generator(images[i:i + 1], [0.5, 1.0]).soft_labels for i in range(3)])
    assert torch.equal(together.soft_labels, alone)


def test_margin_labels_need_a_calibration_and_say_how_to_fit_one(pair_dir):
    with pytest.raises(ValueError, match=r"`labels='margin'` needs the pair's margin calibration.*`progaug calibrate --pair PAIR --data ROOT`"):
        ProgressiveGenerator(load_pair(pair_dir), GenerationConfig(labels="margin"))
    with pytest.raises(ValueError, match=r"`labels` must be one of \('auto', 'measure', 'margin'\), got 'judge'"):
        GenerationConfig(labels="judge")
    config = GenerationConfig(labels="margin")
    assert GenerationConfig.from_json(config.to_json()) == config
    from progaug.generator import generate_progressive

    pair = load_pair(pair_dir)
    with pytest.raises(ValueError, match=r"`config.labels` 'margin' needs the pair's calibration.*use ProgressiveGenerator"):
        generate_progressive(pair.source, pair.target, torch.zeros(1, 3, 32, 32), None, config)


def test_the_embedded_pair_ships_a_calibration_fitted_on_validation_tiles():
    pair = load_pair("hgsc-demo")
    cal = pair.margin_calibration
    assert cal is not None and cal.fitted_on.startswith("hgsc val split") and cal.auc > 0.75 and cal.slope > 0
    assert cal.weights_sha256 == (pair.card["source"]["sha256"], pair.card["target"]["sha256"])


def test_a_calibration_of_other_weights_is_refused_and_an_unbound_one_kept(tmp_path):
    import dataclasses

    from progaug.margin import MarginCalibration, write_calibration
    from progaug.precomputation import PrecomputeConfig, precompute

    folder = make_pair_dir(tmp_path / "pair")
    legacy = MarginCalibration(slope=1e3, timesteps=(500, 900))  # written before calibrations recorded their weights
    write_calibration(folder, legacy)
    assert load_pair(folder).margin_calibration == legacy
    card = json.loads((folder / "card.json").read_text())
    bound = dataclasses.replace(legacy, weights_sha256=(card["source"]["sha256"], card["target"]["sha256"]))
    write_calibration(folder, bound)
    assert load_pair(folder).margin_calibration == bound
    write_calibration(folder, dataclasses.replace(legacy, weights_sha256=("0" * 64, card["target"]["sha256"])))  # trained further since
    pair = load_pair(folder)
    with pytest.raises(ValueError, match=r"margin_calibration.json was fitted with other weights of this pair \(source sha256 000000000000"
                                         r".*fit it again with `progaug calibrate --pair .* or delete it"):
        pair.margin_calibration
    sources = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(ValueError, match="was fitted with other weights"):  # labels="auto" does not fall back silently
        precompute(pair, sources, ["a.png"], tmp_path / "cache", PrecomputeConfig(n=1, num_levels=1, steps=4, device="cpu"))
    assert not (tmp_path / "cache").exists()
    with pytest.raises(ValueError, match=r"`weights_sha256` must be two sha256 hex strings \(source, target\), got \('abc',\)"):
        MarginCalibration(weights_sha256=("abc",))
    assert MarginCalibration.from_json(bound.to_json()) == bound and "weights_sha256" not in bound.identity()


@pytest.mark.parametrize("sign", [1, -1])
def test_progaug_calibrate_fits_on_the_validation_split_and_writes_beside_the_card(tmp_path, capsys, monkeypatch, sign):
    import progaug.margin
    from progaug.cli import main
    from test_label_fidelity import split_folders as darker_tumour_folders

    folder = make_pair_dir(tmp_path / "pair")
    data = darker_tumour_folders(tmp_path / "data", counts=(("train", 1), ("val", 4), ("test", 1)))
    # a stand-in margin that rises (sign 1) or falls (sign -1) with darkness: tumour tiles are the darker ones
    monkeypatch.setattr(progaug.margin, "denoising_margin", lambda s, t, ab, x, steps, seed, max_batch, shared_noise: -sign * x.mean((1, 2, 3)))
    rc = main(["calibrate", "--pair", str(folder), "--data", str(data), "--timesteps", "500", "900", "--threads", "1"])
    out, err = capsys.readouterr()
    if sign == 1:
        assert rc == 0
        cal = read_calibration(folder)
        assert cal.timesteps == (500, 900) and cal.tiles == (4, 4) and cal.auc == 1.0 and f"{data / 'val'}" in cal.fitted_on
        assert f"wrote {folder / 'margin_calibration.json'}" in out
        assert load_pair(folder).margin_calibration == cal
        card = json.loads((folder / "card.json").read_text())
        assert cal.weights_sha256 == (card["source"]["sha256"], card["target"]["sha256"])  # bound to the weights it read
    else:
        assert rc != 0 and "does not rise towards class B on these tiles (AUC 0.000)" in err
        assert not (folder / "margin_calibration.json").exists()


@pytest.mark.parametrize("pair_arg, match", [
    ("hgsc-demo", "is not a folder"),
    ("EMBEDDED", "is the embedded pair, which ships its own calibration"),
])
def test_progaug_calibrate_refuses_pairs_it_cannot_write_into(tmp_path, capsys, pair_arg, match):
    from progaug.cli import main
    from progaug.hub import embedded_pair_dir

    pair_arg = str(embedded_pair_dir("hgsc-demo")) if pair_arg == "EMBEDDED" else pair_arg
    assert main(["calibrate", "--pair", pair_arg, "--data", "hgsc"]) != 0
    assert match in capsys.readouterr().err


def test_progaug_calibrate_names_missing_classes(tmp_path, capsys):
    from progaug.cli import main

    folder = make_pair_dir(tmp_path / "pair", classes=("stroma", "necrosis"))
    data = split_folders(tmp_path / "data", per_class=2)
    assert main(["calibrate", "--pair", str(folder), "--data", str(data)]) != 0
    assert "no tiles of the pair's class(es) ['necrosis']" in capsys.readouterr().err


def test_precompute_with_margin_labels_records_the_calibration_and_refuses_a_pair_without_one(tmp_path, calibrated_pair):
    from progaug.precomputation import PrecomputeConfig, precompute

    sources = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    config = PrecomputeConfig(n=4, num_levels=2, steps=4, max_batch=4, bf16=False, labels="margin", device="cpu")
    out = precompute(calibrated_pair, sources, ["a.png", "b.png"], tmp_path / "cache", config)
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["labels"] == "margin" and run["margin_calibration"] == CALIBRATION.identity()  # the weights are keyed apart
    labels = [float(row["soft_label"]) for row in csv.DictReader((out / "labels.csv").open())]
    assert len(labels) == 4 and all(0 < v < 1 for v in labels)
    with pytest.raises(ValueError, match="needs the pair's margin calibration"):
        precompute(load_pair(make_pair_dir(tmp_path / "bare")), sources, ["a.png", "b.png"], tmp_path / "other", config)
    assert not (tmp_path / "other").exists()
    write_calibration(calibrated_pair.path, MarginCalibration(slope=60.0, timesteps=(700, 900), seed=3))  # a refit
    with pytest.raises(ValueError, match=r"--resume: .* was made with other settings: .*margin_calibration.slope: stored 50.0, now 60.0"):
        precompute(calibrated_pair, sources, ["a.png", "b.png"], out, config, resume=True)


def test_auto_labels_are_the_margin_where_the_pair_carries_a_calibration_else_the_measure(tmp_path, calibrated_pair, images):
    from progaug.generator import generate_progressive, resolve_labels
    from progaug.precomputation import PrecomputeConfig, precompute

    bare = load_pair(make_pair_dir(tmp_path / "bare"))
    assert GenerationConfig().labels == "auto" and PrecomputeConfig().labels == "auto"
    assert (resolve_labels("auto", calibrated_pair), resolve_labels("auto", bare), resolve_labels("auto", bare.source)) == ("margin", "measure", "measure")
    assert resolve_labels("measure", calibrated_pair) == "measure" and resolve_labels("margin", bare) == "margin"
    levels = [0.5, 1.0]
    auto = ProgressiveGenerator(calibrated_pair, GenerationConfig(steps=8, bf16=False))
    margin = ProgressiveGenerator(calibrated_pair, GenerationConfig(steps=8, bf16=False, labels="margin"))(images, levels)
    assert auto.resolved("cpu").labels == "margin" and auto.calibration == CALIBRATION
    torch.testing.assert_close(auto(images, levels).soft_labels, margin.soft_labels, rtol=0, atol=0)
    plain = GenerationConfig(steps=8, bf16=False)
    on_bare = ProgressiveGenerator(bare, plain)
    assert on_bare.calibration is None and on_bare.resolved("cpu").labels == "measure"
    by_measure = generate_progressive(bare.source, bare.target, images, levels, plain)  # a bare model: the measure
    torch.testing.assert_close(on_bare(images, levels).soft_labels, by_measure.soft_labels, rtol=0, atol=0)
    # precompute records the labels it used, not "auto"
    sources = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    config = PrecomputeConfig(n=2, num_levels=1, steps=4, max_batch=4, bf16=False, device="cpu")
    for pair, name, expected in ((calibrated_pair, "from-calibrated", "margin"), (bare, "from-bare", "measure")):
        run = json.loads((precompute(pair, sources, ["a.png", "b.png"], tmp_path / name, config) / "run.json").read_text())
        assert run["config"]["labels"] == expected and ("margin_calibration" in run) == (expected == "margin")


def test_arm_named_takes_margin_labels_on_any_progressive_variant():
    from progaug.evaluation.arms import arm_named

    arm = arm_named("+ADD-Pro[preview] margin labels")
    assert (arm.generated, arm.measure, arm.labels, arm.set_key, arm.knob) == ("pro", "preview", "margin", "preview+margin", "replace_prob")
    assert arm_named("+ADD-Pro[decoded/2] margin labels").set_key == "decoded/2+margin"
    assert arm_named("+ADD-Pro[preview]").set_key == "preview" and arm_named("+stain").set_key is None
    for bad in ("+stain margin labels", "+ADD-Pro[nope] margin labels", " margin labels"):
        with pytest.raises(ValueError, match=r"unknown; .*optionally followed by '\+stain' or '\+Mixup/CutMix' and/or ' margin labels'"):
            arm_named(bad)


@pytest.mark.parametrize("kwargs, match", [({"generated": "pro", "measure": "preview", "labels": "judge"}, r"`labels` must be one of \('measure', 'margin'\), got 'judge'"),
                                           ({"generated": "final", "labels": "margin"}, r"`labels='margin'` needs progressive images .*got generated='final'")])
def test_an_arm_refuses_labels_it_cannot_give(kwargs, match):
    from progaug.evaluation.arms import Arm

    with pytest.raises(ValueError, match=match):
        Arm("x", **kwargs)


def test_evaluation_margin_arm_has_the_measure_s_images_relabelled_by_the_margin(calibrated_pair, tmp_path, capsys):
    from conftest import random_tiles
    from progaug.evaluation.pipeline import GenerationSettings, make_sets
    from progaug.evaluation.arms import arm_named
    from progaug.data.tiles import to_model_range
    from progaug.margin import margin_labels

    settings = GenerationSettings(steps=6, num_levels=2, bf16=False, max_batch=8, cache_dir=str(tmp_path / "cache"))
    arms = [arm_named("+ADD-Pro[paper]"), arm_named("+ADD-Pro[paper] margin labels")]
    sets, cost = make_sets(calibrated_pair, random_tiles(3), arms, settings, needed=torch.tensor([0, 2]))
    (images, measured), (same, labels) = sets.pro["paper"], sets.pro["paper+margin"]
    assert torch.equal(images, same) and labels.shape == measured.shape == (3, 2)
    expected = margin_labels(calibrated_pair.source, calibrated_pair.target, training_alpha_bar(calibrated_pair.diffusion),
                             to_model_range(images[[0, 2]].flatten(0, 1)), CALIBRATION)
    assert torch.allclose(labels[[0, 2]].flatten(), expected, atol=1e-6) and not torch.equal(labels[[0, 2]], measured[[0, 2]])
    assert torch.equal(labels[1], torch.zeros(2))  # a tile no subset uses is not labelled
    assert cost["pro:paper+margin"]["unet_evals_per_image"] == cost["pro:paper"]["unet_evals_per_image"] + 2 * len(CALIBRATION.timesteps)
    capsys.readouterr()
    again, _ = make_sets(calibrated_pair, random_tiles(3), arms, settings, needed=torch.tensor([0, 2]))
    out = capsys.readouterr().out
    assert torch.equal(again.pro["paper+margin"][1], labels) and "reusing" in out and "margin labels:" not in out


def test_evaluation_margin_arm_needs_a_calibration(pair_dir, tmp_path):
    from conftest import random_tiles
    from progaug.evaluation.pipeline import GenerationSettings, make_sets
    from progaug.evaluation.arms import arm_named

    settings = GenerationSettings(steps=4, num_levels=2, bf16=False, max_batch=8)
    with pytest.raises(ValueError, match=r"`labels='margin'` needs the pair's margin calibration"):
        make_sets(load_pair(pair_dir), random_tiles(1), [arm_named("+ADD-Pro[paper] margin labels")], settings)


def test_run_keys_of_measure_labelled_arms_are_as_before_the_labels_field():
    import dataclasses

    from progaug.evaluation.arms import arm_named

    assert "labels" not in arm_named("+ADD-Pro[preview]").run_fields()
    assert arm_named("+ADD-Pro[preview] margin labels").run_fields()["labels"] == "margin"
    assert set(arm_named("+stain").run_fields()) == {f.name for f in dataclasses.fields(arm_named("+stain"))} - {"labels"}
