"""benchmarks/denoising_margin.py: its AUC and bootstrap helpers, and an end-to-end run on a tiny pair and
tiny class folders."""

import json

import pytest
import torch

from conftest import make_pair_dir
from test_label_fidelity import split_folders


@pytest.fixture
def bench(load_benchmark):
    return load_benchmark("denoising_margin", "label_fidelity")


def test_paired_difference_is_margin_minus_label(bench):
    judged = torch.linspace(0, 1, 24).view(6, 4)
    perfect, reversed_ = judged.clone(), -judged
    d = bench.paired_spearman_ci(reversed_, perfect, judged)
    assert d["mean"] == pytest.approx(2.0)
    assert d["ci95"][0] == pytest.approx(2.0) and d["ci95"][1] == pytest.approx(2.0)
    assert bench.judged_a_share(torch.tensor([True, True, False]), torch.tensor([0.2, 0.7, 0.1])) == 0.5
    assert bench.judged_a_share(torch.tensor([False]), torch.tensor([0.2])) is None
    flat = bench.paired_spearman_ci(torch.zeros(6, 4), perfect, judged)  # constant labels: no correlation
    assert flat == {"mean": None, "ci95": None}


def test_end_to_end_on_class_folders(bench, tmp_path):
    pair = make_pair_dir(tmp_path / "pair")
    data = split_folders(tmp_path / "data")
    out = tmp_path / "results" / "denoising_margin"
    assert bench.main(["--pair", str(pair), "--data", str(data), "--n", "3", "--num-levels", "2", "--steps", "3", "--chunk", "3",
                       "--max-batch", "8", "--judge-steps", "5", "--judge-seeds", "1", "2", "--timesteps", "500", "900",
                       "--threads", "1", "--out", str(out)]) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    assert res["command"].startswith("python benchmarks/denoising_margin.py --pair") and res["timesteps"] == [500, 900]
    assert set(res["real_auc"]) == {"train", "heldout"} and all(0 <= v <= 1 for v in res["real_auc"].values())
    assert list(res["measures"]) == ["paper", "preview"]
    for m in res["measures"].values():
        assert len(m["scatter"]["margin"]) == 6 and set(m["judges"]) == {"1", "2"}
        for j in m["judges"].values():
            assert len(j["judge_p"]) == 6 and j["margin_minus_label"]["ci95"][0] <= j["margin_minus_label"]["ci95"][1]
    assert out.with_suffix(".md").is_file() and out.with_suffix(".png").is_file()


def test_anchored_labels_start_at_the_source_and_keep_the_order(load_benchmark):
    anchored = load_benchmark("anchored_margin")
    margins = torch.tensor([[-2e-4, -1e-4, 0.0], [1e-4, 2e-4, 3e-4]])
    sources = torch.tensor([-2e-4, 1e-4])
    out = anchored.anchored_labels(margins, sources, slope=1e4, intercept=0.5, margin_a=-1e-4, margin_b=1e-4)
    assert out["margin"][0, 0] == pytest.approx(torch.sigmoid(torch.tensor(-1.5, dtype=torch.float64)).item())
    assert out["linear"][:, 0].tolist() == [0.0, 0.0] and out["relative"][:, 0].tolist() == [0.0, 0.0]
    # at its source, every image reads as the typical A tile; one typical A-to-B step on, linear reaches 1
    assert out["shifted"][:, 0].tolist() == pytest.approx([torch.sigmoid(torch.tensor(-0.5, dtype=torch.float64)).item()] * 2)
    assert out["linear"][1, 2].item() == pytest.approx(1.0) and out["linear"][0, 1].item() == pytest.approx(0.5)
    for labels in out.values():
        assert (labels.diff(dim=1) >= 0).all() and ((labels >= 0) & (labels <= 1)).all()
    with pytest.raises(ValueError, match="typical B margin .* must exceed the typical A margin"):
        anchored.anchored_labels(margins, sources, slope=1e4, intercept=0.0, margin_a=1e-4, margin_b=1e-4)


def test_anchored_margin_end_to_end(bench, load_benchmark, tmp_path):
    from progaug.margin import MarginCalibration, write_calibration

    pair = make_pair_dir(tmp_path / "pair")
    data = split_folders(tmp_path / "data")
    scatter = tmp_path / "results" / "scatter"
    assert bench.main(["--pair", str(pair), "--data", str(data), "--n", "3", "--num-levels", "2", "--steps", "3", "--chunk", "3",
                       "--max-batch", "8", "--judge-steps", "5", "--judge-seeds", "1", "--timesteps", "500", "900", "--shared-noise",
                       "--measures", "preview", "--threads", "1", "--out", str(scatter)]) == 0
    anchored = load_benchmark("anchored_margin")
    out = tmp_path / "results" / "anchored"
    args = ["--pair", str(pair), "--data", str(data), "--scatter", str(scatter.with_suffix(".json")), "--threads", "1", "--out", str(out)]
    with pytest.raises(SystemExit, match="has no margin_calibration.json"):
        anchored.main(args)
    write_calibration(pair, MarginCalibration(slope=1e3, intercept=0.0, timesteps=(500, 700), seed=0))
    with pytest.raises(SystemExit, match=r"are not the calibration's \(timesteps \[500, 700\]"):
        anchored.main(args)
    write_calibration(pair, MarginCalibration(slope=1e3, intercept=0.0, timesteps=(500, 900), seed=0))
    assert anchored.main(args) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    assert list(res["labels"]) == ["measure", "margin", "shifted", "linear", "relative"] and res["sources"]["all"] == 3
    stored = json.loads(scatter.with_suffix(".json").read_text())["measures"]["preview"]
    assert res["labels"]["measure"]["per_level_mean"] == pytest.approx(torch.tensor(stored["scatter"]["label"]).view(3, 2).mean(0).tolist())
    assert out.with_suffix(".md").is_file() and out.with_suffix(".png").is_file()
