"""benchmarks/label_cost_floor.py: the cost of an output at stored depths, part by part, and half-margin labels."""

import json

import pytest
import torch

from progaug.diffusion import decode_moves


@pytest.fixture
def floor(load_benchmark):
    return load_benchmark("label_cost_floor", "denoising_margin", "label_fidelity")


def test_cost_floor_counts_each_part_per_output(floor):
    deep = {r["schedule"]: r for r in floor.cost_floor([50.0] * 10, "preview", 50)}
    assert deep["1:0"]["before_decodes"] == 10  # inversion 50 + previews 50, over 10 levels
    assert deep["1:0"]["decodes"] == 50 and deep["2:10"]["decodes"] == decode_moves(50, 2, 10) == 30
    assert deep["2:10"]["total_margin_labels"] == 10 + 30 + floor.MARGIN_EVALUATIONS
    assert not any(deep["1:0"]["meets_goal"].values())
    shallow = {r["schedule"]: r for r in floor.cost_floor([2.2] * 10, "paper", 50)}
    assert shallow["1:0"]["before_decodes"] == 5 and shallow["1:0"]["decodes"] == 2  # rounded mean depth
    assert shallow["1:0"]["meets_goal"] == {"measure_labels": True, "margin_labels": True}


def test_half_margin_labels_keep_the_read_levels_and_interpolate_the_others(floor):
    labels = torch.tensor([[0.1, 0.3, 0.4, 0.6, 0.9, 1.0]])
    half = floor.half_margin_labels(labels)
    assert torch.equal(half[:, 1::2], labels[:, 1::2])
    assert half[0].tolist() == pytest.approx([0.3, 0.3, 0.45, 0.6, 0.8, 1.0])
    with pytest.raises(ValueError, match=r"L even, got shape \(1, 5\)"):
        floor.half_margin_labels(labels[:, :5])


def test_main_reads_a_stored_result_and_writes_its_report(floor, tmp_path):
    gen = torch.Generator().manual_seed(0)
    n, levels = 12, 4
    labels = torch.rand(n, levels, generator=gen).sort(dim=1).values
    judge = (labels + 0.2 * torch.rand(n, levels, generator=gen)).clamp(0, 1)
    stored = {"n": n, "steps": 10, "pair_sha256": {"source": "s", "target": "t"},
              "measures": {"preview+margin": {"per_level": [{"depth_mean": d} for d in (2.0, 4.0, 7.0, 10.0)],
                                              "scatter": {"label": labels.flatten().tolist(), "judge_p": judge.flatten().tolist()}}}}
    path = tmp_path / "lf.json"
    path.write_text(json.dumps(stored))
    out = tmp_path / "floor"
    assert floor.main(["--result", str(path), "--out", str(out)]) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    assert [r["schedule"] for r in res["floor"]] == list(floor.SCHEDULES)
    assert res["floor"][0]["before_decodes"] == 20 / levels and res["floor"][0]["decodes"] == 23 / levels
    half = res["half_margin"]
    assert half["spearman_full"] == pytest.approx(floor.spearman(labels.flatten().double(), judge.flatten().double()))
    lo, hi = half["spearman_half_minus_full"]["ci95"]
    assert lo <= hi and half["label_change"]["max"] >= half["label_change"]["p95"] >= 0
    assert "Half the margins" in out.with_suffix(".md").read_text() and out.with_suffix(".png").is_file()
    with pytest.raises(SystemExit, match="no variant 'paper'"):
        floor.main(["--result", str(path), "--variant", "paper", "--out", str(out)])
