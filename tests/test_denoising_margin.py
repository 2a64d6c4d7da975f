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
