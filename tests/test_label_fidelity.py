"""benchmarks/label_fidelity.py: its rank correlation and figure helpers, and an end-to-end run on a tiny
pair (32 px, a few steps) and tiny class folders, holding the claims that can fail."""

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_pair_dir
WEIGHTS = Path(__file__).resolve().parents[1].parent / "shared" / "weights"


@pytest.fixture
def fidelity(load_benchmark):
    """The benchmark module, with its generated-set cache in ``tmp_path``; the thread count restored afterwards."""
    return load_benchmark("label_fidelity")


@pytest.fixture
def weights():
    if not WEIGHTS.is_dir():
        pytest.skip("needs ../shared/weights (offline LPIPS weights)")
    return WEIGHTS


def split_folders(root: Path, counts=(("train", 6), ("val", 3), ("test", 3))) -> Path:
    """``root/<split>/{stroma,tumour}/*.png``: 32-px random-texture tiles, the tumour ones darker, so the
    judge has something to learn."""
    from PIL import Image

    from conftest import random_tiles

    for i, (split, n) in enumerate(counts):
        for j, cls in enumerate(("stroma", "tumour")):
            (root / split / cls).mkdir(parents=True)
            tiles = random_tiles(n, seed=10 * i + j)
            tiles = (tiles.float() * (0.5 if cls == "tumour" else 1.0)).to(torch.uint8)
            for k, tile in enumerate(tiles):
                Image.fromarray(tile.permute(1, 2, 0).numpy()).save(root / split / cls / f"{k}.png")
    return root


class TestSpearman:
    def test_identical_and_reversed_rankings(self, fidelity):
        x = torch.tensor([0.1, 0.4, 0.2, 0.9, 0.5])
        assert fidelity.spearman(x, x) == pytest.approx(1.0)
        assert fidelity.spearman(x, x * 10 + 3) == pytest.approx(1.0)  # monotone transforms keep the ranking
        assert fidelity.spearman(x, -x) == pytest.approx(-1.0)

    def test_ties_share_their_average_rank(self, fidelity):
        assert fidelity.average_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
        # Pearson on average ranks: x ranks (1, 2.5, 2.5, 4) against y ranks (1, 2, 3, 4) -> 0.9487
        assert fidelity.spearman(torch.tensor([1.0, 2.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 3.0, 4.0])) == pytest.approx(0.9486833, abs=1e-6)

    def test_constant_side_has_no_correlation(self, fidelity):
        assert fidelity.spearman(torch.ones(4), torch.arange(4.0)) is None

    def test_sizes_must_match(self, fidelity):
        with pytest.raises(ValueError, match="equal size"):
            fidelity.spearman(torch.arange(3.0), torch.arange(4.0))


class TestFigures:
    def test_depth_lists_differ(self, fidelity):
        depths = torch.tensor([[1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 3, 4]])
        assert fidelity.depth_lists_differ(depths) == (0.25, 2)
        assert fidelity.depth_lists_differ(depths[:3]) == (0.0, 1)

    def test_lpips_steps_start_at_the_source(self, fidelity):
        steps, ratio = fidelity.lpips_steps([0.2, 0.4, 1.0])
        assert steps == pytest.approx([0.2, 0.2, 0.6]) and ratio == pytest.approx(3.0)
        assert fidelity.lpips_steps([0.3, 0.2, 1.0])[1] is None  # a step backwards: no ratio

    def test_judged_a_share_counts_only_labels_at_or_above_the_threshold(self, fidelity):
        labels = torch.tensor([[0.5, 0.6, 0.95], [0.2, 0.9, 1.0]])
        judge_p = torch.tensor([[0.4, 0.3, 0.8], [0.1, 0.49, 0.5]])  # p(B) < 0.5 is "judged A"; 0.5 is not
        assert fidelity.judged_a_at_or_above(labels, judge_p, 0.5) == {"count": 5, "judged_a": pytest.approx(3 / 5)}
        assert fidelity.judged_a_at_or_above(labels, judge_p, 0.9) == {"count": 3, "judged_a": pytest.approx(1 / 3)}
        assert fidelity.judged_a_at_or_above(labels, judge_p, 1.0) == {"count": 1, "judged_a": 0.0}
        assert fidelity.judged_a_at_or_above(labels * 0, judge_p, 0.5) == {"count": 0, "judged_a": None}

    def test_goals(self, fidelity):
        overall = {"spearman_label_judge": 0.85, "lpips_step_ratio": 2.0, "high_label_judged_a": 0.0, "depth_lists_differ": 0.5}
        assert set(fidelity.goals(overall, 0.9, False).values()) == {True, False}  # Spearman below the paper's
        assert all(fidelity.goals(overall, 0.7, False).values())
        assert fidelity.goals({**overall, "depth_lists_differ": 0.0}, None, True)["depths_differ"] is False


def test_measures_are_found_at_run_time(fidelity):
    names = fidelity.available_measures()
    assert isinstance(names, tuple) and "paper" in names


def test_unknown_measure_is_refused(fidelity):
    with pytest.raises(SystemExit):
        fidelity.parse_args(["--measures", "no-such-measure"])


def test_end_to_end_on_class_folders(fidelity, weights, tmp_path):
    pair = make_pair_dir(tmp_path / "pair")
    data = split_folders(tmp_path / "data")
    out = tmp_path / "results" / "label_fidelity"
    levels = 3
    assert fidelity.main(["--pair", str(pair), "--data", str(data), "--metric-weights", str(weights), "--n", "5", "--num-levels", str(levels),
                          "--steps", "4", "--chunk", "3", "--max-batch", "8", "--judge-steps", "15", "--threads", "1", "--device", "cpu",
                          "--out", str(out)]) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    for key in ("classes", "pair_sha256", "command", "judge", "measures", "measures_available", "goals", "n", "levels", "steps", "files"):
        assert key in res
    card = json.loads((pair / "card.json").read_text())
    assert res["pair_sha256"] == {"source": card["source"]["sha256"], "target": card["target"]["sha256"]}
    assert res["command"].startswith("python benchmarks/label_fidelity.py --pair")
    # the judge saw the real training tiles and nothing else; it is scored on the 12 held-out real tiles
    assert res["judge"]["train_tiles"] == 12 and res["judge"]["train_per_class"] == {"stroma": 6, "tumour": 6}
    assert res["judge"]["heldout"]["tiles"] == 12 and 0 <= res["judge"]["heldout"]["accuracy"] <= 1
    assert res["sources_split"] == "heldout" and res["n"] == 5
    assert list(res["measures"]) == res["measures_available"]
    for name, m in res["measures"].items():
        assert [r["level"] for r in m["per_level"]] == pytest.approx([1 / 3, 2 / 3, 1.0], abs=1e-6)
        for r in m["per_level"]:
            assert 0 <= r["label_mean"] <= 1 and 0 <= r["judge_p_mean"] <= 1 and 1 <= r["depth_mean"] <= 4 and r["lpips_share_mean"] >= 0
        o = m["overall"]
        for share in ("high_label_judged_a", "depth_lists_differ"):
            assert o[share] is None or 0 <= o[share] <= 1
        assert 0 <= o["mean_abs_label_minus_judge"] <= 1 and len(o["lpips_steps"]) == levels
        bands = o["judged_a_by_label"]
        assert list(bands) == ["0.5", "0.7", "0.9"] and bands["0.5"]["count"] >= bands["0.7"]["count"] >= bands["0.9"]["count"]
        assert (bands["0.5"]["count"], bands["0.5"]["judged_a"]) == (o["high_label_count"], o["high_label_judged_a"])
        assert o["spearman_label_judge"] is None or -1 <= o["spearman_label_judge"] <= 1
        if name == "paper":  # S / L for the inversion, plus one decode of depth 1..S per output
            assert 4 / levels < o["unet_evals_per_output"] <= 4 + 4 / levels
        assert len(m["scatter"]["label"]) == 5 * levels and set(m["goals_met"]) == set(res["goals"])
        assert (out.parent / f"label_fidelity_strip_{name}.png").is_file()
    assert out.with_suffix(".md").is_file() and out.with_suffix(".png").is_file()
    assert "Judged A by how high the label is (the judge itself calls A" in out.with_suffix(".md").read_text()


def test_every_measure_offered_is_passed_to_the_generator(fidelity, weights, tmp_path, monkeypatch):
    """Every name in ``progaug.labels.MEASURES`` (looked up when the benchmark runs) is passed to the
    generator once; the figures are kept per measure."""
    import types

    from progaug.generator import GenerationConfig, ProgressiveGenerator

    seen = []

    def fake(pair, config):  # records the measure asked for, generates with the paper measure
        seen.append(config.measure)
        return ProgressiveGenerator(pair, GenerationConfig(**{**vars(config), "measure": "paper"}))

    monkeypatch.setattr(fidelity, "GenerationConfig", types.SimpleNamespace)  # "other" is not a real measure
    monkeypatch.setattr(fidelity, "ProgressiveGenerator", fake)
    monkeypatch.setitem(sys.modules, "progaug.labels", types.SimpleNamespace(MEASURES=("paper", "other")))
    assert fidelity.available_measures() == ("paper", "other")
    out = tmp_path / "lf"
    assert fidelity.main(["--pair", str(make_pair_dir(tmp_path / "pair")), "--data", str(split_folders(tmp_path / "data")),
                          "--metric-weights", str(weights), "--n", "2", "--num-levels", "2", "--steps", "3", "--judge-steps", "2",
                          "--threads", "1", "--device", "cpu", "--out", str(out)]) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    assert seen == ["paper", "other"] and list(res["measures"]) == ["paper", "other"]
    # the same images under both names: the same figures, and "above the paper measure's" is not met by a tie
    other = dict(res["measures"]["other"]["overall"])
    assert other.pop("spearman_minus_paper")["mean"] in (0.0, None)  # paired draws: a measure minus itself is 0
    assert other.pop("high_label_judged_a_minus_paper")["mean"] in (0.0, None)
    assert other == {**res["measures"]["paper"]["overall"], "seconds": other["seconds"]}
    assert res["measures"]["other"]["goals_met"]["spearman"] in (False, None)


def test_a_decode_stride_variant_keeps_the_labels_and_costs_less(fidelity, weights, tmp_path):
    out = tmp_path / "lf"
    assert fidelity.main(["--pair", str(make_pair_dir(tmp_path / "pair")), "--data", str(split_folders(tmp_path / "data")),
                          "--metric-weights", str(weights), "--n", "2", "--num-levels", "2", "--steps", "6", "--judge-steps", "2",
                          "--threads", "1", "--device", "cpu", "--measures", "paper", "paper/2", "paper/2:1", "--out", str(out)]) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    every, strided, fine = res["measures"]["paper"], res["measures"]["paper/2"], res["measures"]["paper/2:1"]
    assert strided["scatter"]["label"] == every["scatter"]["label"] == fine["scatter"]["label"]  # same depths and labels, other images
    assert strided["overall"]["unet_evals_per_output"] < every["overall"]["unet_evals_per_output"]
    assert strided["overall"]["unet_evals_per_output"] <= fine["overall"]["unet_evals_per_output"] <= every["overall"]["unet_evals_per_output"]
    assert (out.parent / "lf_strip_paper_stride2.png").is_file() and (out.parent / "lf_strip_paper_stride2_fine1.png").is_file()
    paired = strided["overall"]["minus_stride_1"]
    assert set(paired) == {"spearman", "high_label_judged_a"} and "minus_stride_1" not in every["overall"]
    assert "Strided decodes against the same measure at stride 1" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):
        fidelity.parse_args(["--measures", "paper/0"])


def test_bootstrap_intervals_pair_the_measures(fidelity):
    gen = torch.Generator().manual_seed(0)
    n, levels = 40, 5
    labels = torch.linspace(0.2, 1.0, levels).repeat(n, 1)
    offset = torch.rand(n, 1, generator=gen) * 0.6  # a per-source judge offset, as on real data
    good = (labels * 0.4 + offset).clamp(0, 1)  # rises with the label in every chain
    noise = torch.rand(n, levels, generator=gen)  # unrelated to the label
    res = {"n": n, "measures": {m: {"per_level": [{}] * levels, "overall": {"spearman_label_judge": 0.0, "high_label_judged_a": 0.0},
                                    "scatter": {"label": labels.flatten().tolist(), "judge_p": p.flatten().tolist()}}
                                for m, p in (("paper", noise), ("preview", good))}}
    fidelity.bootstrap_intervals(res, draws=200)
    lo, hi = res["measures"]["preview"]["overall"]["spearman_ci95"]
    assert 0 < lo <= hi < 1
    d = res["measures"]["preview"]["overall"]["spearman_minus_paper"]
    assert d["ci95"][0] > 0 and d["mean"] > 0  # the label-following judge wins, and the interval says so
    # high labels (>= 0.5) judged A: noise calls about half of them A, the label-following judge few of them
    w = res["measures"]["preview"]["overall"]["high_label_judged_a_minus_paper"]
    assert w["ci95"][1] < 0 and w["mean"] < 0
    assert "spearman_minus_paper" not in res["measures"]["paper"]["overall"] and res["bootstrap"]["draws"] == 200


def test_a_margin_variant_relabels_the_same_images(fidelity, weights, tmp_path):
    from progaug.margin import MarginCalibration, write_calibration

    pair = make_pair_dir(tmp_path / "pair")
    args = ["--pair", str(pair), "--data", str(split_folders(tmp_path / "data")), "--metric-weights", str(weights), "--n", "2",
            "--num-levels", "2", "--steps", "6", "--judge-steps", "2", "--threads", "1", "--device", "cpu", "--measures", "paper",
            "paper+margin", "--out", str(tmp_path / "lf")]
    with pytest.raises(SystemExit, match="has no margin_calibration.json"):
        fidelity.main(args)
    calibration = MarginCalibration(slope=50.0, intercept=0.1, timesteps=(700, 900), seed=3, tiles=(5, 5), auc=0.9, fitted_on="test")
    write_calibration(pair, calibration)
    assert fidelity.main(args) == 0
    res = json.loads((tmp_path / "lf.json").read_text())
    measured, margin = res["measures"]["paper"], res["measures"]["paper+margin"]
    assert margin["scatter"]["judge_p"] == measured["scatter"]["judge_p"]  # the same images
    assert margin["scatter"]["label"] != measured["scatter"]["label"]
    assert margin["overall"]["unet_evals_per_output"] == pytest.approx(measured["overall"]["unet_evals_per_output"] + 4)
    # the plain variant keeps its measure's labels and cost although the pair now carries a calibration
    # (labels="auto", the generator's default, would label by the margin and count its evaluations twice)
    from progaug.data.tiles import to_model_range
    from progaug.frequency import default_levels
    from progaug.generator import GenerationConfig, ProgressiveGenerator
    from progaug.pair import load_pair_dir

    loaded, sources = load_pair_dir(pair), torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    run_args = fidelity.parse_args(args)
    got = fidelity.generate(loaded, sources, "paper", run_args)
    want = ProgressiveGenerator(loaded, GenerationConfig(steps=run_args.steps, measure="paper", max_batch=run_args.max_batch, bf16=run_args.bf16,
                                                         labels="measure"))(to_model_range(sources), default_levels(run_args.num_levels))
    assert torch.equal(got["labels"], want.soft_labels.float()) and got["evals"] == want.model_evaluations
    assert "spearman_minus_paper" in margin["overall"] and res["margin_calibration"]["fitted_on"] == "test"
    assert (tmp_path / "lf_strip_paper+margin.png").is_file()
