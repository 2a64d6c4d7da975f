"""benchmarks/margin_calibration.py: which sources it scores, its interval and bin helpers, and an end-to-end
run on a tiny pair, tiny class folders and a stored denoising_margin.py result written here."""

import json
from pathlib import Path

import pytest
import torch

from conftest import make_pair_dir
from test_label_fidelity import split_folders


@pytest.fixture
def bench(load_benchmark):
    return load_benchmark("margin_calibration", "denoising_margin", "label_fidelity")


def test_mean_abs_difference_is_calibrated_minus_label(bench):
    judged = torch.full((5, 2), 0.8)
    res = bench.mean_abs_ci(torch.full((5, 2), 0.2), torch.full((5, 2), 0.7), judged)
    assert res["label"] == pytest.approx(0.6) and res["calibrated"] == pytest.approx(0.1)
    assert res["difference"]["mean"] == pytest.approx(-0.5) and res["difference"]["ci95"] == pytest.approx([-0.5, -0.5])


def test_reliability_bins_hold_their_images_and_the_top_bin_holds_one(bench):
    labels = torch.tensor([0.05, 0.07, 0.55, 1.0])
    judged = torch.tensor([0.1, 0.3, 0.9, 0.6])
    rel = bench.reliability(labels, judged)
    assert [r["images"] for r in rel] == [2, 1, 1]
    assert rel[0]["mean_judge"] == pytest.approx(0.2) and rel[-1]["bin"] == [0.9, 1.0]
    assert bench.judged_b_share(torch.tensor([True, True]), torch.tensor([0.2, 0.7])) == 0.5
    assert bench.judged_b_share(torch.tensor([False]), torch.tensor([0.7])) is None


def _stored_run(path: Path, pair, n: int, levels: int) -> Path:
    """A denoising_margin.py result for ``n`` held-out sources: labels rise with the level, margins follow
    the judge more closely than the labels."""
    from common import pair_sha256

    judge = torch.linspace(0.05, 0.95, n * levels)
    res = {"pair_sha256": pair_sha256(pair), "sources_split": "heldout", "timesteps": [500, 900], "margin_seed": 0, "levels": levels,
           "shared_noise": True,
           "command": "python benchmarks/denoising_margin.py --n 6", "measures": {"preview": {
               "scatter": {"label": torch.linspace(0.1, 1.0, levels).repeat(n).tolist(), "margin": (judge - 0.5).tolist()},
               "judges": {"1": {"judge_p": judge.tolist()}}}}}
    path.write_text(json.dumps(res))
    return path


def test_end_to_end_fits_on_val_scores_test_sources_and_saves(bench, monkeypatch, tmp_path):
    from progaug.hub import load_pair
    from progaug.margin import read_calibration

    pair_dir = make_pair_dir(tmp_path / "pair")
    data = split_folders(tmp_path / "data", counts=(("train", 2), ("val", 4), ("test", 3)))
    # darker (tumour) tiles get the larger margin: a separable stand-in for the pair's own margin
    import progaug.margin

    def darkness(s, t, ab, images, steps, seed, max_batch, shared_noise):
        assert shared_noise
        return -images.mean((1, 2, 3))

    monkeypatch.setattr(progaug.margin, "denoising_margin", darkness)
    scatter = _stored_run(tmp_path / "dm.json", load_pair(pair_dir), n=6, levels=2)
    out = tmp_path / "results" / "margin_calibration"
    assert bench.main(["--pair", str(pair_dir), "--data", str(data), "--scatter", str(scatter), "--threads", "1",
                       "--save-to", str(pair_dir), "--out", str(out)]) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    expected_test = bench.source_splits(bench.open_benchmark(bench.parse_args(["--pair", str(pair_dir), "--data", str(data)]))[2],
                                        "stroma", 6, 1).count("test")
    assert res["sources"] == {"test": expected_test, "val_left_out": 6 - expected_test}
    assert res["calibration"]["tiles"] == [4, 4] and res["calibration"]["timesteps"] == [500, 900]
    assert res["real_test_tiles"]["tiles"] == [3, 3] and res["real_test_tiles"]["auc"] == 1.0
    saved = read_calibration(pair_dir)
    assert saved is not None and saved.slope == pytest.approx(res["calibration"]["slope"]) and "val split" in saved.fitted_on
    j = res["judges"]["1"]
    assert j["spearman_calibrated"] == pytest.approx(1.0)  # monotone in the margin, which is monotone in the judge here
    assert out.with_suffix(".md").is_file() and out.with_suffix(".png").is_file()


def test_a_run_of_another_pair_or_noise_is_refused(bench, tmp_path):
    from common import pair_sha256
    from progaug.hub import load_pair

    pair = load_pair(make_pair_dir(tmp_path / "pair"))
    path = tmp_path / "dm.json"
    path.write_text(json.dumps({"pair_sha256": {"source": "0" * 64, "target": "1" * 64}, "measures": {}, "sources_split": "heldout"}))
    with pytest.raises(SystemExit, match="dm.json was measured on another pair"):
        bench.read_scatter(path, "preview", pair)
    path.write_text(json.dumps({"pair_sha256": pair_sha256(pair), "measures": {"preview": {}}, "sources_split": "heldout"}))
    with pytest.raises(SystemExit, match="dm.json drew the margin's noise per image.*--shared-noise"):
        bench.read_scatter(path, "preview", pair)
