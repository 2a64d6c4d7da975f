"""``progaug evaluate``: the protocol on a user's class folders from the installed command."""

import json

import pytest

from conftest import make_pair_dir, split_folders
from progaug.cli import main

SMALL = ["--curve-epochs", "1", "--seeds", "0", "--tune-seeds", "3", "--n", "2", "--num-levels", "2", "--steps", "2", "--batch-size", "8",
         "--p-grid", "0.3", "--mixup-grid", "0.5", "--stain-grid", "0.05", "--threads", "1"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_pair_dir(tmp_path_factory.mktemp("evaluate") / "pair")


def test_evaluate_writes_the_report_and_resumes(pair, tmp_path, capsys):
    data = split_folders(tmp_path / "data")
    out = tmp_path / "eval"
    argv = ["evaluate", "--data", str(data), "--pair", str(pair), "--out", str(out), *SMALL]
    assert main(argv) == 0
    res = json.loads((out / "report.json").read_text())
    assert res["complete"] and list(res["curve"]) == ["2"] and res["command"] == " ".join(["progaug", *argv])
    assert list(res["curve"]["2"]["arms"]) == ["real", "+stain", "+Mixup/CutMix", "+ADD-final", "+ADD-Pro[preview]", "+ADD-Pro[preview] filtered"]
    assert (out / "report.md").read_text().startswith("# Downstream CNN, stroma -> tumour") and (out / "report.png").is_file()
    assert set(res["orientation"]) == {"stroma", "tumour"} and res["orientation"]["stroma"]["tiles"] == 6
    assert "Orientation of the training tiles" in (out / "report.md").read_text()
    assert any((out / "generated").glob("progressive-*.safetensors"))
    done = len((out / "runs.jsonl").read_text().splitlines())
    assert main(argv) == 0  # the same command again: nothing trained anew
    assert len((out / "runs.jsonl").read_text().splitlines()) == done
    assert json.loads((out / "report.json").read_text())["curve"] == res["curve"]


def test_evaluate_adds_the_margin_labelled_arm_for_a_calibrated_pair(pair, tmp_path):
    import shutil

    from progaug.margin import MarginCalibration, write_calibration

    calibrated = tmp_path / "pair"
    shutil.copytree(pair, calibrated)
    write_calibration(calibrated, MarginCalibration(slope=50.0, intercept=0.0, timesteps=(500, 900), fitted_on="test tiles"))
    out = tmp_path / "eval"
    argv = ["evaluate", "--data", str(split_folders(tmp_path / "data")), "--pair", str(calibrated), "--out", str(out), *SMALL]
    assert main(argv) == 0
    res = json.loads((out / "report.json").read_text())
    assert list(res["curve"]["2"]["arms"])[-1] == "+ADD-Pro[preview] margin labels"
    runs = res["curve"]["2"]["arms"]["+ADD-Pro[preview] margin labels"]["runs"]
    assert runs and all(r["generated_images"] == 2 * 2 for r in runs)  # N = 2 sources x 2 levels
    report = (out / "report.md").read_text()
    assert ("Classifiers trained with" in report) == bool(res["config"]["train_bf16"] or res["config"]["train_channels_last"])


def test_evaluate_warns_when_the_pair_saw_a_test_tile(pair, tmp_path, capsys):
    import shutil

    from progaug.data import folder_tiles
    from progaug.pair import load_pair_dir

    data = split_folders(tmp_path / "data")
    leaky = tmp_path / "pair"
    shutil.copytree(pair, leaky)
    card = json.loads((leaky / "card.json").read_text())
    size = load_pair_dir(pair).image_size
    card["data"] = {"name": "elsewhere", "split": "all", "digests": {"stroma": folder_tiles(str(data / "test"), tile_size=size).digests()[:1]}}
    (leaky / "card.json").write_text(json.dumps(card))
    out = tmp_path / "eval"
    assert main(["evaluate", "--data", str(data), "--pair", str(leaky), "--out", str(out), *SMALL, "--arms", "real"]) == 0
    assert "progaug: warning: CONTAMINATED: the pair was trained on 0 validation and 1 test tiles" in capsys.readouterr().err
    assert "Pair leak: CONTAMINATED" in (out / "report.md").read_text()


@pytest.mark.parametrize("extra, match", [(["--arms", "+nope"], r"--arms: arm '\+nope' unknown"),
                                          (["--device", "gpu"], "`device` must name a torch device such as .cpu."),
                                          (["--seeds", "3"], "`tune_seeds` .* must differ from `seeds`")])
def test_evaluate_refuses_bad_arguments_in_one_line(pair, tmp_path, extra, match):
    with pytest.raises(SystemExit, match=match):
        main(["evaluate", "--pair", str(pair), "--out", str(tmp_path / "e"), *SMALL, *extra])
    assert not (tmp_path / "e").exists()


def test_evaluate_needs_validation_and_test_folders(pair, tmp_path):
    data = split_folders(tmp_path / "data")
    import shutil

    shutil.rmtree(data / "test")
    with pytest.raises(SystemExit, match="needs train/, val/ and test/ class folders"):
        main(["evaluate", "--data", str(data), "--pair", str(pair), "--out", str(tmp_path / "e"), *SMALL])
