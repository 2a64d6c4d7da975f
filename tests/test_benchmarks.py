"""The benchmark scripts run end to end on a tiny pair (32 px, a few steps) and hold their own claims:
the reference schedule and progaug's agree at the same steps, with fewer U-Net evaluations."""

import json
import re
from pathlib import Path

import pytest
import torch

from conftest import BENCH, make_pair_dir, split_folders
from progaug.evaluation.report import format_diff
from progaug.evaluation.stats import welch
from progaug.labels import DEFAULT_MEASURE

WEIGHTS = Path(__file__).resolve().parents[1].parent / "shared" / "weights"


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    return make_pair_dir(tmp_path_factory.mktemp("bench") / "pair")


@pytest.fixture
def bench(load_benchmark):
    """Import a benchmark module with its cache in ``tmp_path`` (conftest's ``load_benchmark``)."""
    return load_benchmark


def test_speed_on_class_folders(bench, tiny_pair, tmp_path):
    speed = bench("speed")
    out = tmp_path / "speed"
    data = split_folders(tmp_path / "data")
    assert speed.main(["--pair", str(tiny_pair), "--data", str(data), "--images", "2", "--num-levels", "3", "--ref-steps", "12", "--steps", "4",
                       "--max-batch", "auto", "--threads", "1", "--out", str(out)]) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    agree = res["same_steps_agreement"]
    assert agree["depths_identical_fraction"] == 1.0 and agree["max_label_difference"] < 1e-4
    assert agree["max_abs_image_difference"] < 1e-3
    # the second inversion pass is gone: strictly fewer evaluations at the same steps, far fewer at S = 4
    assert res["ratios"]["evals_reference_over_progaug_same_steps"] > 1.0
    assert res["ratios"]["evals_reference_over_progaug"] > 2.0
    assert res["progaug"]["evals"] == res["progaug_one_at_a_time"]["evals"]
    assert out.with_suffix(".md").is_file() and out.with_suffix(".png").is_file()


def test_downstream_on_class_folders(bench, tiny_pair, tmp_path):
    downstream = bench("downstream")
    out = tmp_path / "downstream"
    data = split_folders(tmp_path / "data")
    args = ["--pair", str(tiny_pair), "--data", str(data), "--curve-epochs", "1", "2", "--seeds", "0", "1", "--tune-seeds", "7", "--n", "2", "all",
            "--num-levels", "3", "--steps", "3", "--batch-size", "8", "--p-grid", "0.2", "0.5", "--mixup-grid", "0.5", "--stain-grid", "0.05",
            "--threads", "1", "--out", str(out)]
    assert downstream.main(args) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    arms = set(downstream.all_arms())
    assert {"real", "real, no flips", "+stain", "+Mixup/CutMix", "+ADD-final", "+IDDPM-style", "+ADD-Pro[paper]", f"+ADD-Pro[{DEFAULT_MEASURE}]",
            f"+ADD-Pro[{DEFAULT_MEASURE}] filtered", f"+ADD-Pro[{DEFAULT_MEASURE}] uniform", f"+ADD-Pro[{DEFAULT_MEASURE}]+stain"} == arms
    assert set(res["curve"]) == {"2", "all"} and res["counts"]["test"] == {"stroma": 6, "tumour": 6}
    assert set(res["pair_sha256"]) == {"source", "target"} and all(len(v) == 64 for v in res["pair_sha256"].values())
    assert res["config"]["classifier"] == "cnn" and res["generation_settings"]["num_levels"] == 3
    for key, n_a in (("2", 2), ("all", 6)):
        runs = res["curve"][key]["arms"]
        assert set(runs) == arms
        assert all(r["real_images"] == 2 * n_a and r["generated_images"] == 0 for r in runs["real"]["runs"])
        # ADD sources only from the N class-A tiles: 3 levels each, one full translation each, as many IDDPM samples
        assert all(r["generated_images"] == 3 * n_a for r in runs[f"+ADD-Pro[{DEFAULT_MEASURE}]"]["runs"])
        assert all(r["generated_images"] == n_a for a in ("+ADD-final", "+IDDPM-style") for r in runs[a]["runs"])
        assert res["curve"][key]["tuning"]["+ADD-final"]["chosen"] in (0.2, 0.5)
    assert res["curve"]["all"]["leak"].startswith("unknown")  # the tiny pair's card names no data
    text = out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").is_file() and text.index("## Sanity") < text.index("## N = 2 real tiles per class")
    assert "Classifiers trained in float32." in text and not res["config"]["train_bf16"]  # the benchmark's committed numerics
    # the generated sets are kept and a second run makes none
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert {n.split("-")[1] for n in cached if n.startswith("progressive-")} == {"paper", DEFAULT_MEASURE}
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("*.safetensors")}
    assert downstream.main([*args, "--arms", "+ADD-Pro[paper]", "--out", str(tmp_path / "again")]) == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("*.safetensors")} == before
    again = json.loads((tmp_path / "again.json").read_text())
    assert list(again["curve"]["2"]["arms"]) == ["real", "+ADD-Pro[paper]"]
    # the seed decides the run: the same seeds give the same test predictions again
    first, second = (r["curve"]["2"]["arms"]["real"]["runs"] for r in (res, again))
    assert [r["predictions_sha"] for r in first] == [r["predictions_sha"] for r in second]


def test_downstream_resumes_from_its_run_log(bench, tiny_pair, tmp_path, capsys):
    downstream = bench("downstream")
    data = split_folders(tmp_path / "data")
    args = ["--pair", str(tiny_pair), "--data", str(data), "--curve-epochs", "1", "--seeds", "0", "--tune-seeds", "7", "--n", "2",
            "--num-levels", "2", "--steps", "2", "--batch-size", "8", "--arms", "+stain", "--stain-grid", "0.05", "0.1", "--threads", "1",
            "--out", str(tmp_path / "r")]
    assert downstream.main(args) == 0
    first = json.loads((tmp_path / "r.json").read_text())
    log = tmp_path / "r.runs.jsonl"
    lines = log.read_text().splitlines()
    assert len(lines) == 1 + 2 + 2  # curve, two tuning values, two arms x one seed
    log.write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])  # a run killed while writing its fourth line
    capsys.readouterr()
    assert downstream.main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count("kept from an earlier run") == 3
    again = json.loads((tmp_path / "r.json").read_text())
    def runs(res):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in res["curve"]["2"]["arms"]["+stain"]["runs"]]

    assert runs(again) == runs(first)  # the torn line's training made again, the same


@pytest.mark.parametrize("bad, match", [(["--n", "0"], "N takes positive integers or 'all'"), (["--n", "ten"], "N takes"),
                                        (["--arms", "+nope"], r"--arms: arm '\+nope' unknown"),
                                        (["--seeds", "1", "1"], "`seeds` must hold at least one value, each once"),
                                        (["--classifier", "resnet"], "`classifier` must be one of"),
                                        (["--seeds", "100"], "`tune_seeds` .* must differ from `seeds`")])
def test_downstream_refuses_bad_arguments(bench, capsys, bad, match):
    with pytest.raises(SystemExit):
        bench("downstream").parse_args(bad)
    assert re.search(match, capsys.readouterr().err)


def test_downstream_quick_fills_in_what_is_not_given(bench):
    args = bench("downstream").parse_args(["--quick", "--steps", "7"])
    assert args.generation.steps == 7 and args.protocol.seeds == (0, 1) and args.protocol.n == ("25",) and args.generation.num_levels == 4
    assert args.arms[0] == "real" and args.out.endswith("downstream_cnn")


def test_downstream_needs_three_splits(bench, tiny_pair, tmp_path):
    from PIL import Image

    for cls in ("stroma", "tumour"):
        (tmp_path / "flat" / cls).mkdir(parents=True)
        Image.new("RGB", (32, 32), (200, 100, 150)).save(tmp_path / "flat" / cls / "a.png")
    with pytest.raises(SystemExit, match="needs train/, val/ and test/"):
        bench("downstream").main(["--pair", str(tiny_pair), "--data", str(tmp_path / "flat"), "--threads", "1"])


@pytest.mark.skipif(not WEIGHTS.is_dir(), reason="needs ../shared/weights (offline metric weights)")
def test_generation_on_class_folders(bench, tiny_pair, tmp_path):
    generation = bench("generation")
    out = tmp_path / "generation"
    data = split_folders(tmp_path / "data")
    assert generation.main(["--pair", str(tiny_pair), "--data", str(data), "--metric-weights", str(WEIGHTS), "--n", "8",
                            "--steps", "3", "--lpips-pairs", "8", "--threads", "1", "--out", str(out)]) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    assert set(res["methods"]) == {"ADD", "IDDPM-style", "real held-out"}
    assert res["reference_tiles"] == 6 and res["methods"]["real held-out"]["count"] == 8
    for m in res["methods"].values():
        assert m["fid"] > 0 and m["sfid"] > 0 and 0 < m["lpips_diversity"] < 1
    # strided full translations beside the full ones (another image set), without the unconditional samples
    assert generation.main(["--pair", str(tiny_pair), "--data", str(data), "--metric-weights", str(WEIGHTS), "--n", "8",
                            "--steps", "3", "--lpips-pairs", "8", "--threads", "1", "--decode-strides", "2", "2:3", "--no-iddpm",
                            "--out", str(out)]) == 0
    strided = json.loads(out.with_suffix(".json").read_text())
    assert list(strided["methods"]) == ["ADD", "ADD (decode stride 2)", "ADD (decode stride 2, fine 3)", "real held-out"]
    assert strided["decode_strides"] == [2, "2:3"] and strided["methods"]["ADD"] == res["methods"]["ADD"]
    assert strided["methods"]["ADD (decode stride 2)"]["fid"] != res["methods"]["ADD"]["fid"]
    # fine 3 at S = 3 decodes every state: the full translations again
    assert strided["methods"]["ADD (decode stride 2, fine 3)"]["fid"] == pytest.approx(res["methods"]["ADD"]["fid"])
    for bad in ("0", "2:x"):
        with pytest.raises(SystemExit):
            generation.parse_args(["--decode-strides", bad])


def test_results_name_paths_relative_to_the_repository(bench):
    common = bench("common")
    assert common.repo_relative(str(common.ROOT / "progaug" / "pairs" / "hgsc-demo")) == "progaug/pairs/hgsc-demo"
    assert common.repo_relative(common.ROOT / "benchmarks" / "results") == "benchmarks/results"
    outside = str(Path(common.ROOT.anchor) / "elsewhere" / "pair")
    assert [common.repo_relative(v) for v in (outside, "hgsc-demo", "../shared/weights", 3, None)] == [
        outside, "hgsc-demo", "../shared/weights", 3, None]


def test_read_report_returns_the_object_or_names_the_file_it_cannot_read(bench, tmp_path):
    common = bench("common")
    good, listed, broken = tmp_path / "good.json", tmp_path / "listed.json", tmp_path / "broken.json"
    good.write_text(json.dumps({"curve": {"25": {}}, "pair_sha256": "abc"}))
    listed.write_text("[1, 2]")
    broken.write_bytes(b"\xff\xfe not json")
    assert common.read_report(good) == {"curve": {"25": {}}, "pair_sha256": "abc"}
    with pytest.raises(SystemExit, match=r"listed.json: cannot read a report JSON there \(it holds a list, not an object\)"):
        common.read_report(listed)
    with pytest.raises(SystemExit, match=r"--report a=.*broken.json: cannot read a report JSON there \("):
        common.read_report(broken, "--report a")
    with pytest.raises(SystemExit, match=r"missing.json: cannot read a report JSON there \(.*No such file"):
        common.read_report(tmp_path / "missing.json")


def test_throughput(bench, tiny_pair, tmp_path):
    throughput = bench("throughput")
    out = tmp_path / "throughput"
    assert throughput.main(["--pair", str(tiny_pair), "--n", "6", "--variants", "first release", "default",
                            "--steps", "10", "--out", str(out)]) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    entry = res["pairs"][str(tiny_pair)]
    assert entry["image_size"] == 32 and entry["forward_gflops"] > 0
    first, default = entry["variants"]["first release"], entry["variants"]["default"]
    assert (first["batch_size"], first["max_batch"]) == (8, 32) and (default["batch_size"], default["max_batch"]) == (32, 32)
    assert first["flags"][-2:] == default["flags"][-2:] == ["--steps", "10"]
    assert first["unet_evals_per_image"] == pytest.approx(default["unet_evals_per_image"])  # same work, other batching
    assert 0 < default["fraction_of_floor"] < 1


def test_decode_schedule_keeps_labels_and_measures_what_each_schedule_moves(bench, tiny_pair, tmp_path):
    schedule = bench("decode_schedule")
    out = tmp_path / "ds"
    data = split_folders(tmp_path / "data")
    assert schedule.main(["--pair", str(tiny_pair), "--data", str(data), "--n", "2", "--steps", "8", "--num-levels", "3",
                          "--schedules", "2:8", "2:3", "4", "--threads", "1", "--out", str(out)]) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    every, mixed, coarse = (res["schedules"][k] for k in ("stride 2, fine 8", "stride 2, fine 3", "stride 4, fine 0"))
    assert all(r["depths_same"] and r["label_diff_max"] == 0 for r in (every, mixed, coarse))
    # fine >= S decodes every state: the same images and calls
    assert every["psnr_db_min"] > 100 and every["evals_per_output"] == res["evals_per_output_every_state"]
    assert coarse["evals_per_output"] < mixed["evals_per_output"] < every["evals_per_output"]
    assert coarse["psnr_db_median"] < every["psnr_db_median"]
    assert "| stride 2, fine 3 | True |" in out.with_suffix(".md").read_text() and out.with_suffix(".png").is_file()
    with pytest.raises(SystemExit):
        schedule.main(["--schedules", "0:2"])


def test_colour_shift_tells_instance_norms_apart(bench, tmp_path):
    colour_shift = bench("colour_shift")
    data = split_folders(tmp_path / "data")
    pairs = [make_pair_dir(tmp_path / f"g{g}", norm_group_channels=g) for g in (1, 4)]
    out = tmp_path / "colour"
    assert colour_shift.main(["--pair", str(pairs[0]), "--pair", str(pairs[1]), "--data", str(data), "--count", "4", "--out", str(out)]) == 0
    written = json.loads(out.with_suffix(".json").read_text())
    res = written["results"]
    assert [r["models"]["source"]["norm_group_channels"] for r in res] == [1, 4]
    # a comparison names the first --pair as the one measured (stale_results reads the top-level key)
    assert written["pair_sha256"] == res[0]["pair_sha256"] != res[1]["pair_sha256"]
    for role in ("source", "target"):
        legacy, grouped = (abs(r["models"][role]["shift_response"]) for r in res)
        assert grouped > 5 * legacy
        errors = res[1]["models"][role]["by_timestep"]
        assert set(errors) == {"999", "900", "600", "200"} and all(e["eps_mean_rms"] > 0 for e in errors.values())
    assert "| shift response" in out.with_suffix(".md").read_text()


@pytest.mark.skipif(not WEIGHTS.is_dir(), reason="needs ../shared/weights (offline metric weights)")
def test_pair_quality_on_class_folders(bench, tiny_pair, tmp_path):
    pair_quality = bench("pair_quality")
    data = split_folders(tmp_path / "data")
    out = {k: tmp_path / f"pq.{k}" for k in ("json", "md", "png")}
    assert pair_quality.main(["--pair", str(tiny_pair), "--data", str(data), "--metric-weights", str(WEIGHTS), "--n", "6", "--steps", "2",
                              "--recon-steps", "2", "4", "--recon-count", "2", "--batch-size", "4", "--bf16",
                              "--out-json", str(out["json"]), "--out-md", str(out["md"]), "--out-png", str(out["png"])]) == 0
    res = json.loads(out["json"].read_text())
    for cls in ("stroma", "tumour"):
        e = res["per_class"][cls]
        assert e["n_train_real"] == 6 and e["n_heldout_real"] == 12  # held out = val + test folders
        assert e["fid_samples_vs_train"] > 0 and e["fid_heldout_real_vs_train"] > 0
        assert set(e["recon_psnr_db"]) == {"2", "4"} and all(v > 0 for v in e["recon_psnr_db"].values())
    assert res["fid_real_class_a_vs_class_b"] > 0 and out["png"].is_file()
    assert "| stroma | global |" in out["md"].read_text()


def test_stale_results_finds_figures_of_another_pair(bench, tiny_pair, tmp_path, capsys):
    stale = bench("stale_results")
    card = json.loads((tiny_pair / "card.json").read_text())
    shipped = {r: card[r]["sha256"] for r in ("source", "target")}
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "a.json").write_text(json.dumps({"pair_sha256": shipped}))
    assert stale.main(["--pair", str(tiny_pair), "--results", str(tmp_path / "res")]) == 0
    (tmp_path / "res" / "b.json").write_text(json.dumps({"pair_sha256": {**shipped, "target": "0" * 64}}))
    (tmp_path / "res" / "c.json").write_text(json.dumps({"figures": 1}))
    (tmp_path / "res" / "d.json").write_text(json.dumps({"uses_pair": False}))
    assert stale.main(["--pair", str(tiny_pair), "--results", str(tmp_path / "res"), "--pairs", str(tmp_path / "none")]) == 1
    lines = capsys.readouterr().out.splitlines()[-4:]
    assert [line.split()[0] for line in lines] == ["current", "STALE", "UNKNOWN", "current"]
    # b.json measured a committed benchmark pair (by design): named, and not stale
    other = tmp_path / "pairs" / "nolk"
    other.mkdir(parents=True)
    (other / "card.json").write_text(json.dumps({r: {"sha256": sha} for r, sha in {**shipped, "target": "0" * 64}.items()}))
    (tmp_path / "res" / "c.json").unlink()
    assert stale.main(["--pair", str(tiny_pair), "--results", str(tmp_path / "res"), "--pairs", str(tmp_path / "pairs")]) == 0
    lines = capsys.readouterr().out.splitlines()[-3:]
    assert [line.split()[0] for line in lines] == ["current", "pair:nolk", "current"]


def test_every_committed_result_names_its_pair():
    for path in sorted([*(BENCH / "results").glob("*.json"), *(BENCH / "results" / "spread").glob("*.json")]):
        result = json.loads(path.read_text())
        if result.get("uses_pair") is False:  # e.g. the probe backbone's checks: no pair involved
            continue
        recorded = result.get("pair_sha256")
        assert isinstance(recorded, dict) and set(recorded) >= {"source", "target"}, path.name


def test_memorisation_finds_copies_under_any_flip_or_rotation(bench):
    memorisation = bench("memorisation")
    from progaug.data.tiles import dihedral

    gen = torch.Generator().manual_seed(0)
    train = torch.rand(5, 3, 8, 8, generator=gen)
    copies = torch.stack([dihedral(train[2], 6), train[4]])  # a flipped + rotated copy, a plain copy
    fresh = torch.rand(3, 3, 8, 8, generator=gen)
    views = memorisation.dihedral_views(train)
    assert torch.equal(views[6 * 5 + 2], dihedral(train[2], 6))
    d, i = memorisation.nearest_distance(torch.cat([copies, fresh]), views, chunk=2)
    assert torch.allclose(d[:2], torch.zeros(2), atol=1e-6) and bool((d[2:] > 0.1).all())
    assert int(i[0]) % 5 == 2 and int(i[1]) == 4  # index into the 8 * T views: op * T + tile
    assert torch.equal(dihedral(train, int(i[0]) // 5)[int(i[0]) % 5], copies[0])
    # the distance is the RMSE of [0, 1] pixels
    d_one, _ = memorisation.nearest_distance(torch.full((1, 3, 8, 8), 0.5), torch.full((1, 3, 8, 8), 0.25))
    assert d_one.item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match=r"queries of shape \(3, 4, 4\)"):
        memorisation.nearest_distance(torch.rand(1, 3, 4, 4), views)
    stats = memorisation.copy_statistics(torch.tensor([0.01, 0.2, 0.3, 0.4]), torch.tensor([0.1, 0.2, 0.3]))
    assert stats["near_copy_share"] == pytest.approx(0.25) and stats["heldout_min"] == pytest.approx(0.1)
    assert stats["median_ratio"] == pytest.approx(float(torch.tensor([0.01, 0.2, 0.3, 0.4]).median()) / 0.2)


def test_memorisation_on_class_folders(bench, tiny_pair, tmp_path):
    memorisation = bench("memorisation")
    data = split_folders(tmp_path / "data")
    out = tmp_path / "mem"
    assert memorisation.main(["--pair", str(tiny_pair), "--data", str(data), "--n", "5", "--steps", "2", "--show", "3",
                              "--threads", "1", "--out", str(out)]) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    for cls in ("stroma", "tumour"):
        s = res["per_class"][cls]
        assert s["n_train"] == 6 and s["n_heldout"] == 12 and 0 <= s["near_copy_share"] <= 1
        assert 0 < s["heldout_min"] <= s["median_heldout"] and s["median_sample"] > 0
    assert res["pair_sha256"]["source"] and out.with_suffix(".png").is_file()
    assert "| stroma | 5 | 12 |" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):
        memorisation.main(["--n", "0"])


def test_train_speed_times_every_setting_on_the_same_training(bench, tiny_pair, tmp_path):
    speed = bench("train_speed")
    out = tmp_path / "ts"
    data = split_folders(tmp_path / "data")
    assert speed.main(["--pair", str(tiny_pair), "--data", str(data), "--n", "2", "--epochs", "2", "--rounds", "2", "--threads", "1",
                       "--out", str(out)]) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    assert list(res["settings"]) == ["float32", "channels-last", "bf16", "bf16 + channels-last"] and res["real_images"] == 4
    assert res["settings"]["float32"]["speedup"] == 1.0 and res["uses_pair"] is False
    assert all(len(s["seconds"]) == 2 and 0 <= s["val_accuracy"] <= 1 for s in res["settings"].values())
    assert res["settings"]["bf16 + channels-last"]["bf16"] and "| channels-last |" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):
        speed.main(["--rounds", "0"])


def test_calibration_splits_scores_each_split_with_the_pairs_own_calibration(bench, tiny_pair, tmp_path):
    import shutil

    from progaug.data.splits import load_splits
    from progaug.data.tiles import to_model_range
    from progaug.hub import load_pair
    from progaug.margin import MarginCalibration, pair_margin, write_calibration

    splits_bench = bench("calibration_splits")
    pair_dir = tmp_path / "pair"
    shutil.copytree(tiny_pair, pair_dir)
    data = split_folders(tmp_path / "data", per_class=3)
    args = ["--pair", str(pair_dir), "--data", str(data), "--threads", "1", "--out", str(tmp_path / "cs")]
    with pytest.raises(SystemExit, match="has no margin_calibration.json"):
        splits_bench.main(args)
    cal = MarginCalibration(slope=50.0, intercept=0.1, timesteps=(500, 900), seed=3, fitted_on="test tiles")
    write_calibration(pair_dir, cal)
    assert splits_bench.main(args) == 0
    res = json.loads((tmp_path / "cs.json").read_text())
    assert list(res["splits"]) == ["train", "val", "test"] and res["calibration"]["seed"] == 3
    # the figures are the calibration applied to the margins of exactly those tiles, with its timesteps and seed
    pair = load_pair(str(pair_dir))
    tiles = load_splits(str(data), pair.image_size)["val"].of_class("stroma").images
    expected = cal.probability(pair_margin(pair, to_model_range(tiles), timesteps=(500, 900), seed=3))
    assert res["splits"]["val"]["a"]["tiles"] == 3
    assert res["splits"]["val"]["a"]["mean_p"] == pytest.approx(float(expected.mean()), abs=1e-6)
    assert all(0 <= s["auc"] <= 1 and 0 < s["b"]["mean_p"] < 1 for s in res["splits"].values())
    assert "| val | 3 |" in (tmp_path / "cs.md").read_text() and (tmp_path / "cs.png").is_file()


def test_gpu_session_script_parses_and_names_each_mode_in_its_usage(tmp_path):
    """benchmarks/gpu_session.sh cannot be run here (no GPU); it must at least parse, and its usage line
    must offer every mode it has, so a lease is not spent on a typo."""
    import subprocess

    script = BENCH / "gpu_session.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    modes = re.findall(r"^(\w+)\)$", text, flags=re.MULTILINE)
    assert {"train", "measure", "all", "vit"} <= set(modes)
    usage = subprocess.run(["bash", str(script)], capture_output=True, text=True, env={"OUT": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert usage.returncode == 2 and f"usage: bash benchmarks/gpu_session.sh {'|'.join(modes)}" in usage.stderr


def test_gpu_session_vit_passes_each_arm_whole_and_continues_a_given_log(tmp_path):
    """The vit mode with stand-ins for python3 and nvidia-smi: arms given as VIT_ARMS reach downstream.py one
    argument each (names with spaces intact), and VIT_LOG is the run log it continues under $OUT."""
    import shlex
    import subprocess

    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "nvidia-smi").write_text("#!/bin/sh\necho fake-gpu\n")
    (stubs / "python3").write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done > "$OUT/argv"\necho trained\n')
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    log = tmp_path / "cpu.runs.jsonl"
    log.write_text('{"key": "from the cpu"}\n')
    out = tmp_path / "out"
    env = {"OUT": str(out), "PATH": f"{stubs}:/usr/bin:/bin", "VIT_N": "all", "VIT_SEEDS": "3", "VIT_LOG": str(log),
           "VIT_ARMS": "+stain;+ADD-Pro[preview] margin labels"}
    run = subprocess.run(["bash", str(BENCH / "gpu_session.sh"), "vit"], capture_output=True, text=True, env=env,
                         cwd=BENCH.parent)
    assert run.returncode == 0, run.stderr
    argv = (out / "argv").read_text().splitlines()
    arms = argv[argv.index("--arms") + 1:argv.index("--out")]
    assert arms == ["+stain", "+ADD-Pro[preview] margin labels"], shlex.join(argv)
    assert argv[argv.index("--seeds") + 1:argv.index("--curve-epochs")] == ["0", "1", "2"]
    assert argv[argv.index("--log") + 1] == str(out / "downstream_vit_gpu.runs.jsonl")
    assert (out / "downstream_vit_gpu.runs.jsonl").read_text() == log.read_text()
    assert "--epochs" not in argv and argv[argv.index("--curve-epochs") + 1:argv.index("--no-bf16")] == ["20", "40", "80", "160", "320", "640"]
    # VIT_EPOCHS: a fixed budget instead of the curve (the GPU rerun of session 31's CPU replication)
    run = subprocess.run(["bash", str(BENCH / "gpu_session.sh"), "vit"], capture_output=True, text=True,
                         env={**env, "VIT_EPOCHS": "320"}, cwd=BENCH.parent)
    assert run.returncode == 0, run.stderr
    argv = (out / "argv").read_text().splitlines()
    assert "--curve-epochs" not in argv and argv[argv.index("--epochs") + 1] == "320"
    env["VIT_LOG"] = str(tmp_path / "missing.jsonl")
    assert subprocess.run(["bash", str(BENCH / "gpu_session.sh"), "vit"], capture_output=True, env=env,
                          cwd=BENCH.parent).returncode == 2


def _report(arm_acc: dict[str, list[float]], real_sha: list[str], pair: str = "p") -> dict:
    """A minimal downstream report at N = 100: per arm, one run per seed (macro-F1 = accuracy - 0.01)."""
    def runs(name, accs):
        return [{"seed": s, "accuracy": a, "f1_macro": a - 0.01,
                 **({"predictions_sha": real_sha[s]} if name == "real" else {})} for s, a in enumerate(accs)]
    return {"pair": pair, "pair_sha256": {"source": pair, "target": pair},
            "curve": {"100": {"arms": {name: {"runs": runs(name, accs)} for name, accs in arm_acc.items()}}}}


def test_compare_reports_pairs_an_arm_across_reports_per_seed(bench, tmp_path):
    cmp = bench("compare_reports")
    real = [0.70, 0.72, 0.68, 0.71]
    shas = ["a", "b", "c", "d"]
    one = _report({"real": real, "+ADD": [r + d for r, d in zip(real, (0.05, 0.04, 0.06, 0.05))]}, shas, "shipped")
    two = _report({"real": real, "+ADD": [r + d for r, d in zip(real, (0.01, -0.01, 0.0, 0.02))]}, shas, "other")
    reports = [("shipped", one, Path("one.json")), ("other", two, Path("two.json"))]
    res = cmp.compare(reports, "100", "+ADD")
    assert res["seeds"] == [0, 1, 2, 3]
    assert res["arms"]["shipped"]["accuracy"]["mean"] == pytest.approx(0.05)
    assert res["arms"]["shipped"]["verdict"] == "helps" and res["arms"]["other"]["verdict"] == "not told apart"
    versus = res["versus_first"]["other"]["accuracy"]
    assert versus["per_seed"] == pytest.approx([-0.04, -0.05, -0.06, -0.03]) and versus["verdict"] == "worse"
    assert res["means"]["real"]["accuracy"] == pytest.approx(sum(real) / 4)
    # only the seeds every report has are paired
    two["curve"]["100"]["arms"]["+ADD"]["runs"].pop()
    assert cmp.compare(reports, "100", "+ADD")["seeds"] == [0, 1, 2]
    # real runs that are not the same runs cannot be paired across reports
    two["curve"]["100"]["arms"]["real"]["runs"][1]["predictions_sha"] = "z"
    with pytest.raises(ValueError, match="differ on seed 1"):
        cmp.compare(reports, "100", "+ADD")
    with pytest.raises(ValueError, match=r"one.json: no arm '\+Mixup'"):
        cmp.compare(reports, "100", "+Mixup")
    with pytest.raises(ValueError, match=r"no N = '25'"):
        cmp.compare(reports, "25", "+ADD")


def test_compare_reports_pairs_each_reports_own_arm_on_both_blocks(bench, tmp_path):
    """An ADD arm of one report against a standard arm of a later report into the same log (the same real runs):
    per seed, on test (accuracy, macro-F1) and, where every run logged it, on the choosing block."""
    cmp = bench("compare_reports")
    real, shas = [0.70, 0.72, 0.68, 0.71], ["a", "b", "c", "d"]
    add = _report({"real": real, "+ADD": [r + 0.05 for r in real]}, shas)
    sanity = _report({"real": real, "+stain": [r + d for r, d in zip(real, (0.04, 0.02, 0.05, 0.01))]}, shas)
    for report, gain in ((add, 0.03), (sanity, 0.01)):
        for name, arm in report["curve"]["100"]["arms"].items():
            for run in arm["runs"]:
                run["val_accuracy"] = 0.8 + run["seed"] / 100 + gain * (name != "real")
    reports = [("add", add, Path("add.json")), ("stain", sanity, Path("stain.json"))]
    res = cmp.compare(reports, "100", ["+ADD", "+stain"])
    assert res["arm_of"] == {"add": "+ADD", "stain": "+stain"} and res["metrics"] == ["accuracy", "f1_macro", "val_accuracy"]
    versus = res["versus_first"]["stain"]
    assert versus["accuracy"]["per_seed"] == pytest.approx([-0.01, -0.03, 0.0, -0.04])
    assert versus["val_accuracy"]["per_seed"] == pytest.approx([-0.02] * 4) and versus["val_accuracy"]["verdict"] == "worse"
    assert res["arms"]["add"]["val_accuracy"]["mean"] == pytest.approx(0.03)
    text = cmp.render_markdown({"comparison": res, "command": "c", "reports": [
        {"label": "add", "path": "add.json", "pair": "p"}, {"label": "stain", "path": "stain.json", "pair": "p"}]})
    assert text.startswith("# +ADD (add) vs +stain (stain) across reports at N = 100")
    assert (f"| stain: +stain - add: +ADD | {format_diff(versus['accuracy'])} | {format_diff(versus['f1_macro'])} | "
            f"{format_diff(versus['val_accuracy'])} | 0 / 3 |") in text
    # one run without the choosing block's figure: that metric is left out, not half-compared
    del sanity["curve"]["100"]["arms"]["+stain"]["runs"][2]["val_accuracy"]
    assert cmp.compare(reports, "100", ["+ADD", "+stain"])["metrics"] == ["accuracy", "f1_macro"]
    with pytest.raises(ValueError, match="one name or one per report, got 3 for 2"):
        cmp.compare(reports, "100", ["+ADD", "+stain", "+Mixup"])
    with pytest.raises(ValueError, match=r"stain.json: no arm '\+ADD'"):
        cmp.compare(reports, "100", "+ADD")
    with pytest.raises(SystemExit):
        cmp.parse_args(["--n", "100", "--arm", "a", "--arm", "b", "--arm", "c", "--report", "x=1", "--report", "y=2"])


def test_compare_reports_unpaired_compares_gains_of_reports_whose_real_runs_differ(bench, tmp_path):
    cmp = bench("compare_reports")
    gains_one, gains_two = (0.05, 0.03, 0.06, 0.04), (0.0, -0.01, 0.01, 0.0)
    real_one, real_two = [0.70, 0.72, 0.68, 0.71], [0.74, 0.72, 0.69, 0.70]
    one = _report({"real": real_one, "+ADD": [r + g for r, g in zip(real_one, gains_one)]}, ["a", "b", "c", "d"], "gpu")
    two = _report({"real": real_two, "+ADD": [r + g for r, g in zip(real_two, gains_two)]}, ["x", "b", "y", "z"], "cpu")
    reports = [("gpu", one, Path("one.json")), ("cpu", two, Path("two.json"))]
    with pytest.raises(ValueError, match="differ on seed 0"):
        cmp.compare(reports, "100", "+ADD")
    res = cmp.compare(reports, "100", "+ADD", unpaired=True)
    assert res["unpaired"] and res["same_baseline"] == {"gpu": [0, 1, 2, 3], "cpu": [1]}
    # each arm against its own report's real runs
    assert res["arms"]["cpu"]["accuracy"]["per_seed"] == pytest.approx(list(gains_two))
    versus = res["versus_first"]["cpu"]["accuracy"]
    assert versus == pytest.approx(welch(list(gains_two), list(gains_one)))
    assert versus["mean"] == pytest.approx(0.0 - 0.045) and versus["verdict"] == "worse" and "per_seed" not in versus
    assert res["means"]["real (cpu)"]["accuracy"] == pytest.approx(sum(real_two) / 4)
    base = res["baseline_versus_first"]["cpu"]["accuracy"]
    assert base["per_seed"] == pytest.approx([0.04, 0.0, 0.01, -0.01]) and base["verdict"] == "not told apart"
    assert cmp.compare(reports[:1] + [("gpu2", one, Path("one.json"))], "100", "+ADD")["baseline_versus_first"] == {}
    text = cmp.render_markdown({"comparison": res, "command": "c", "reports": [
        {"label": "gpu", "path": "one.json", "pair": "p"}, {"label": "cpu", "path": "two.json", "pair": "p"}]})
    assert "`cpu` 1 of 4" in text and "Welch" in text and f"| cpu - gpu | {format_diff(versus)}" in text
    assert f"| cpu - gpu | {format_diff(base)} | {format_diff(res['baseline_versus_first']['cpu']['f1_macro'])} | 2 / 1 |" in text


def test_held_out_regions_pairs_both_blocks_and_names_them_by_role(bench, tmp_path):
    regions = bench("held_out_regions")

    def report(swapped: bool, gains: tuple[float, float], checkpoint: str = "best") -> dict:
        runs = {name: [{"seed": s, "val_accuracy": 0.9 + g_val * (name != "real"), "accuracy": 0.7 + s / 100 + g_test * (name != "real"),
                        "f1_macro": 0.69 + g_test * (name != "real")} for s in range(3)]
                for name, (g_val, g_test) in (("real", (0, 0)), ("+ADD", gains))}
        config = {"swap_held_out": swapped, **({"checkpoint": checkpoint} if checkpoint != "best" else {})}  # older reports lack the key
        return {"pair_sha256": {"source": "s", "target": "t"}, "config": config, "curve": {"100": {"arms": {n: {"runs": r} for n, r in runs.items()},
                                                                          "tuning": {"+ADD": {"chosen": 0.3}}}}}

    (row,) = regions.rows_of(report(False, (-0.01, 0.03)), "plain")
    assert row["choosing"]["mean"] == pytest.approx(-0.01) and row["scored"]["mean"] == pytest.approx(0.03)
    assert row["tuned"] == 0.3 and row["seeds"] == 3 and not row["swapped"]
    (tmp_path / "a.json").write_text(json.dumps(report(False, (-0.01, 0.03))))
    (tmp_path / "b.json").write_text(json.dumps(report(True, (0.02, 0.0))))
    (tmp_path / "c.json").write_text(json.dumps(report(False, (0.04, 0.01), checkpoint="last")))
    out = tmp_path / "res" / "regions"
    res = regions.main([str(tmp_path / "a.json"), str(tmp_path / "b.json"), str(tmp_path / "c.json"), "--out", str(out)])
    text = out.with_suffix(".md").read_text()
    assert "| a | 100 | +ADD | 0.3 | 3 | val: -1.0 [-1.0, -1.0] (best) | test: +3.0 [+3.0, +3.0] |" in text
    assert "| b | 100 | +ADD | 0.3 | 3 | test: +2.0 [+2.0, +2.0] (best) | val: +0.0 [+0.0, +0.0] |" in text  # roles swapped
    assert "| c | 100 | +ADD | 0.3 | 3 | val: +4.0 [+4.0, +4.0] (last) | test: +1.0 [+1.0, +1.0] |" in text  # nothing chosen per run
    assert len(res["rows"]) == 3 and out.with_suffix(".png").stat().st_size > 0
    assert json.loads(out.with_suffix(".json").read_text())["pair_sha256"] == {"source": "s", "target": "t"}
    bad = report(False, (0, 0))
    bad["curve"]["100"]["arms"]["+ADD"]["runs"].pop()
    with pytest.raises(ValueError, match="bad: N = 100 '\\+ADD' against 'real': paired differences need the same seeds"):
        regions.rows_of(bad, "bad")
    old = report(False, (0, 0))
    del old["curve"]["100"]["arms"]["real"]["runs"][0]["val_accuracy"]
    with pytest.raises(ValueError, match="old: N = 100 '\\+ADD': runs without `val_accuracy`"):
        regions.rows_of(old, "old")
    with pytest.raises(SystemExit, match="none.json: cannot read a report JSON"):
        regions.main([str(tmp_path / "none.json")])


def test_compare_reports_writes_its_report_and_refuses_bad_arguments(bench, tmp_path, capsys):
    cmp = bench("compare_reports")
    real, shas = [0.70, 0.72, 0.68], ["a", "b", "c"]
    for name, gain in (("one", 0.03), ("two", 0.0)):
        (tmp_path / f"{name}.json").write_text(json.dumps(_report({"real": real, "+ADD": [r + gain for r in real]}, shas, name)))
    out = tmp_path / "res" / "cmp"
    argv = ["--n", "100", "--arm", "+ADD", "--report", f"a={tmp_path / 'one.json'}", "--report", f"b={tmp_path / 'two.json'}"]
    assert cmp.main([*argv, "--out", str(out)]) == 0
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["pair_sha256"] == {"source": "one", "target": "one"}
    assert saved["comparison"]["versus_first"]["b"]["accuracy"]["mean"] == pytest.approx(-0.03)
    text = out.with_suffix(".md").read_text()
    assert "| b - a | -3.0 [-3.0, -3.0]" in text and out.with_suffix(".png").stat().st_size > 0
    for bad, match in ((["--report", "nolabel"], "LABEL=PATH"), (argv[:6], "two or more"),
                       ([*argv[:6], "--report", f"a={tmp_path / 'two.json'}"], "labels must differ")):
        with pytest.raises(SystemExit):
            cmp.parse_args(["--n", "100", "--arm", "x", *bad] if bad[0] == "--report" and len(bad) == 2 else bad)
        assert match in capsys.readouterr().err
    with pytest.raises(SystemExit, match="cannot read a report JSON"):
        cmp.main(["--n", "100", "--arm", "+ADD", "--report", f"a={tmp_path / 'one.json'}", "--report", f"b={tmp_path / 'none.json'}"])



def test_orientation_reports_every_split_and_subset(bench, tmp_path):
    orientation = bench("orientation")
    out = tmp_path / "orientation"
    assert orientation.main(["--data", str(split_folders(tmp_path / "data")), "--size", "32", "--subsets", "0", "--n", "3",
                             "--out", str(out)]) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    assert res["uses_pair"] is False and out.with_suffix(".png").is_file()
    assert [r["group"] for r in res["rows"]][::2] == ["train", "val", "test", "train subset 0 (N = 3)"]
    first = res["rows"][0]
    assert first["tiles"] == len(first["angles"]) == 6 and 0 <= first["bias"] <= first["coherence"] <= 1


def _tuning_report(values: dict[str, float], *, checkpoint="last", subset=None, n="25", classifier="vit", arm="+ADD") -> dict:
    chosen = max(values, key=values.get)
    tuning = {"knob": "replace_prob", "chosen": float(chosen), "values": values}
    return {"config": {"classifier": classifier, "checkpoint": checkpoint, "subset_seed": subset},
            "pair_sha256": {"source": "ab" * 32, "target": "cd" * 32},
            "curve": {n: {"budget": {"epochs": 640},
                          "tuning": {arm: tuning, "real": {"knob": None, "chosen": None, "values": {}}}}}}


def test_tuning_summary_counts_each_tuning_once_and_pairs_values_per_tuning(bench, tmp_path):
    summary = bench("tuning_summary")
    reports = {
        "a.json": _tuning_report({"0.1": 0.80, "0.3": 0.82, "0.5": 0.85}),
        "a_again.json": _tuning_report({"0.1": 0.80, "0.3": 0.82, "0.5": 0.85}),  # the same log, written again
        "a_wider.json": _tuning_report({"0.1": 0.80, "0.3": 0.82, "0.5": 0.85, "0.7": 0.79}),  # a wider grid on it
        "b.json": _tuning_report({"0.1": 0.70, "0.3": 0.75, "0.5": 0.74}, subset=1),
        "c.json": _tuning_report({"0.1": 0.90, "0.3": 0.86, "0.5": 0.87}, n="all"),
        "old.json": _tuning_report({"0.1": 0.99, "0.3": 0.50, "0.5": 0.50}, checkpoint=None),  # validation-chosen: 'best'
        "fixed.json": _tuning_report({"0.3": 0.60}, n="50"),  # one value: chose nothing
        "other.json": {"uses_pair": False, "rows": []},  # another benchmark's result
    }
    for name, res in reports.items():
        (tmp_path / name).write_text(json.dumps(res))
    out = tmp_path / "res" / "tuning"
    assert summary.main(["--arm", "+ADD", "--reference", "0.3", "--out", str(out), str(tmp_path / "*.json")]) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    s = res["summary"]
    assert s["tunings"] == 3 and s["grid"] == [0.1, 0.3, 0.5] and res["uses_pair"] is False
    wide = next(t for t in res["tunings"] if t["n"] == "25" and t["subset_seed"] is None)
    assert wide["report"] == "a_wider.json" and sorted(wide["repeats"]) == ["a.json", "a_again.json"]
    assert [s["values"][v]["chosen"] for v in ("0.1", "0.3", "0.5")] == [1, 1, 1]
    assert s["values"]["0.5"]["mean_val_accuracy"] == pytest.approx((0.85 + 0.74 + 0.87) / 3)
    d = s["values"]["0.5"]["versus_reference"]
    assert d["per_seed"] == pytest.approx([0.03, -0.01, 0.01]) and d["low"] < d["mean"] < d["high"]
    assert s["values"]["0.3"]["versus_reference"] is None
    text = out.with_suffix(".md").read_text()
    assert "| 0.5 | 1 of 3 | 82.0 | +1.0 [" in text and "a_wider.json (+2 repeats)" in text and "drawn per seed" in text
    assert out.with_suffix(".png").stat().st_size > 0
    # the older protocol's report is read with --checkpoint best or any; the default reference is the most chosen
    both = summary.summarise(summary.collect(sorted(tmp_path.glob("*.json")), "+ADD", "any"), None)
    assert both["tunings"] == 4 and both["reference"] == 0.1  # chosen twice (once in the older report)


def test_tuning_summary_refuses_what_it_cannot_summarise(bench, tmp_path):
    summary = bench("tuning_summary")
    (tmp_path / "one.json").write_text(json.dumps(_tuning_report({"0.1": 0.8, "0.3": 0.9})))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SystemExit, match="no report matches"):
        summary.main(["--arm", "+ADD", str(tmp_path / "none*.json")])
    with pytest.raises(SystemExit, match="bad.json: cannot read a report JSON there"):
        summary.main(["--arm", "+ADD", str(tmp_path / "bad.json")])
    with pytest.raises(SystemExit, match="no report holds a tuning of this arm"):
        summary.main(["--arm", "+stain", str(tmp_path / "one.json")])
    with pytest.raises(SystemExit, match="--reference 0.5 is not a value every tuning tried"):
        summary.main(["--arm", "+ADD", "--reference", "0.5", str(tmp_path / "one.json")])


def _subset_report(subset: int, offsets: dict[str, float], *, pair: str = "p", seeds=(0, 1, 2, 3, 4), epochs: int = 640) -> dict:
    """A minimal downstream report of one subset at N = 25: each arm's accuracy is real's plus its offset plus a
    per-seed jitter shared by every arm (so arm-minus-arm differences are constant); macro-F1 = accuracy - 0.01,
    validation accuracy = accuracy + 0.01."""
    real = [0.70, 0.72, 0.68, 0.71, 0.69, 0.70][:len(seeds)]
    jitter = [0.01, -0.01, 0.0, 0.005, -0.005, 0.0][:len(seeds)]

    def runs(offset):
        accs = [r + offset + (j if offset else 0.0) for r, j in zip(real, jitter)]
        return [{"seed": s, "accuracy": a, "f1_macro": a - 0.01, "val_accuracy": a + 0.01} for s, a in zip(seeds, accs)]
    arms = {"real": {"runs": runs(0.0)}, **{name: {"runs": runs(o)} for name, o in offsets.items()}}
    return {"pair": pair, "pair_sha256": {"source": pair, "target": pair}, "complete": True,
            "config": {"subset_seed": subset, "classifier": "vit", "checkpoint": "last", "epochs": epochs, "seeds": list(seeds)},
            "curve": {"25": {"arms": arms}}}


ADD_OFFSETS = (0.05, 0.04, -0.03, -0.04, 0.06, 0.0, 0.03, 0.05)
STAIN_OFFSETS = (0.04, 0.05, 0.06, 0.05, 0.04, 0.05, 0.06, 0.04)


def _spread_reports():
    return [(_subset_report(3 + k, {"+ADD": a, "+stain": s}), Path(f"s{3 + k}.json"))
            for k, (a, s) in enumerate(zip(ADD_OFFSETS, STAIN_OFFSETS))]


def test_subset_spread_takes_the_subset_as_the_unit_and_applies_the_fixed_rules(bench):
    sp_mod = bench("subset_spread")
    reports = _spread_reports()[::-1]  # any order in, ascending subsets out
    res = sp_mod.spread(reports, "25", ["+ADD", "+stain"])
    assert [s["subset"] for s in res["subsets"]] == list(range(3, 11))
    one = res["subsets"][2]["arms"]["+ADD"]  # subset 5: -3 points, its own five-seed interval below 0
    assert one["test"]["mean"] == pytest.approx(-0.03) and one["test"]["high"] < 0
    assert one["test macro-F1"]["mean"] == pytest.approx(-0.03) and one["validation"]["mean"] == pytest.approx(-0.03)
    add = res["across"]["+ADD"]["test"]
    assert add["interval"]["mean"] == pytest.approx(sum(ADD_OFFSETS) / 8) and add["n_subsets"] == 8
    assert (add["gain"], add["gain_beyond"], add["lose_beyond"]) == (5, 5, 2)  # 0.00 neither gains nor loses
    assert add["interval"]["low"] < 0 < add["interval"]["high"]
    assert res["rules"]["+ADD"] == {"helps_over_subsets": False, "subset_dependent": True, "holds_zero": True,
                                    "quarter_lose": True}
    stain = res["across"]["+stain"]["test"]
    assert stain["interval"]["mean"] == pytest.approx(sum(STAIN_OFFSETS) / 8) and stain["interval"]["low"] > 0.02
    assert res["rules"]["+stain"]["helps_over_subsets"] and not res["rules"]["+stain"]["subset_dependent"]
    # ADD minus stain, paired per seed within each subset (the shared jitter cancels: zero width)
    versus = res["subsets"][0]["versus"]["+ADD - +stain"]["test"]
    assert versus["mean"] == pytest.approx(0.01) and versus["half_width"] == pytest.approx(0, abs=1e-12)
    vs = res["across_versus"]["+ADD - +stain"]["test"]
    assert vs["means"] == pytest.approx([a - s for a, s in zip(ADD_OFFSETS, STAIN_OFFSETS)])
    assert (vs["gain_beyond"], vs["lose_beyond"]) == (3, 5) and res["rules_versus"]["+ADD - +stain"]["quarter_lose"]


def test_subset_spread_rules_need_two_points_and_a_quarter_of_subsets(bench):
    sp_mod = bench("subset_spread")
    # above 0 on every subset but by 1.5 points: neither helps (mean < 2) nor is it subset-dependent
    small = [(_subset_report(s, {"+ADD": 0.015}), Path(f"{s}.json")) for s in range(8)]
    r = sp_mod.spread(small, "25", ["+ADD"])["rules"]["+ADD"]
    assert not r["helps_over_subsets"] and not r["subset_dependent"]
    # one of eight subsets losing beyond its interval is under a quarter; the interval still lies above 0
    one_loses = [(_subset_report(s, {"+ADD": -0.02 if s == 0 else 0.05}), Path(f"{s}.json")) for s in range(8)]
    res = sp_mod.spread(one_loses, "25", ["+ADD"])
    assert res["across"]["+ADD"]["test"]["lose_beyond"] == 1
    assert res["rules"]["+ADD"] == {"helps_over_subsets": True, "subset_dependent": False, "holds_zero": False,
                                    "quarter_lose": False}
    # a block some run did not log is left out, the others are read
    del one_loses[3][0]["curve"]["25"]["arms"]["+ADD"]["runs"][2]["val_accuracy"]
    res = sp_mod.spread(one_loses, "25", ["+ADD"])
    assert "validation" not in res["across"]["+ADD"] and "test" in res["across"]["+ADD"]


def test_subset_spread_refuses_reports_that_are_not_one_protocol_on_distinct_subsets(bench):
    sp_mod = bench("subset_spread")
    reports = _spread_reports()
    beside = [(_subset_report(0, {"+ADD": 0.1, "+stain": 0.05}, seeds=tuple(range(6))), Path("s0.json"))]
    res = sp_mod.spread(reports, "25", ["+ADD", "+stain"], beside=beside)
    assert [s["subset"] for s in res["beside"]] == [0] and len(res["beside"][0]["seeds"]) == 6
    assert res["across"]["+ADD"]["test"]["n_subsets"] == 8  # beside: not pooled
    cases = [
        (lambda r: r[1][0].update(pair_sha256={"source": "x", "target": "x"}), r"s4.json: another pair"),
        (lambda r: r[2][0]["config"].update(subset_seed=3), r"s5.json: subset 3 again \(also s3.json\)"),
        (lambda r: r[1][0]["config"].update(epochs=320), r"s4.json: config epochs = 320, but s3.json has 640"),
        (lambda r: r[1][0]["config"].update(subset_seed=None), r"s4.json: run without --subset-seed"),
        (lambda r: r[1][0].update(complete=False), r"s4.json: an incomplete report"),
        (lambda r: r[1][0]["curve"]["25"]["arms"].pop("+stain"), r"s4.json: no arm '\+stain' at N = 25"),
        (lambda r: r[1][0]["curve"]["25"]["arms"]["+ADD"]["runs"].pop(), r"s4.json: paired differences need the same seeds"),
    ]
    for spoil, message in cases:
        spoilt = _spread_reports()
        spoil(spoilt)
        with pytest.raises(ValueError, match=message):
            sp_mod.spread(spoilt, "25", ["+ADD", "+stain"])
    with pytest.raises(ValueError, match=r"no N = '100'"):
        sp_mod.spread(reports, "100", ["+ADD"])
    other_pair = [(_subset_report(0, {"+ADD": 0.1, "+stain": 0.0}, pair="q"), Path("q0.json"))]
    with pytest.raises(ValueError, match="q0.json: another pair"):
        sp_mod.spread(reports, "25", ["+ADD", "+stain"], beside=other_pair)


def test_subset_spread_writes_its_report_and_refuses_bad_arguments(bench, tmp_path, capsys):
    sp_mod = bench("subset_spread")
    paths = []
    for report, name in [*_spread_reports(), (_subset_report(0, {"+ADD": 0.1, "+stain": 0.05}), Path("s0.json"))]:
        paths.append(tmp_path / name)
        paths[-1].write_text(json.dumps(report))
    out = tmp_path / "spread"
    argv = ["--n", "25", "--arm", "+ADD", "--arm", "+stain", "--out", str(out), *map(str, paths[:-1]), "--beside", str(paths[-1])]
    assert sp_mod.main(argv) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    assert res["pair_sha256"] == {"source": "p", "target": "p"} and res["protocol"]["epochs"] == 640
    md = out.with_suffix(".md").read_text()
    assert "| +ADD | test | +2.0 [" in md and "5 of 8" in md and "## Beside, not pooled" in md
    assert "- +ADD: does not help over subsets, **subset-dependent** (the interval holds 0; a quarter or more" in md
    assert "- +stain: **helps over subsets**, not subset-dependent" in md
    assert "- +ADD - +stain: is not above the second arm over subsets, **subset-dependent**" in md
    assert out.with_suffix(".png").stat().st_size > 0
    for bad, message in [(["--n", "25", "--arm", "+ADD", str(paths[0])], "two or more reports"),
                         (["--n", "25", "--arm", "real", *map(str, paths[:2])], "other than the baseline"),
                         (["--n", "25", "--arm", "+ADD", "--arm", "+ADD", *map(str, paths[:2])], "distinct arms")]:
        with pytest.raises(SystemExit) as exc:
            sp_mod.main(bad)
        assert exc.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit, match="nothing.json: cannot read a report JSON"):
        sp_mod.main(["--n", "25", "--arm", "+ADD", str(paths[0]), str(tmp_path / "nothing.json")])


def _recall_run(seed: int, test: tuple[int, int], val: tuple[int, int], sizes=((90, 93), (40, 78))) -> dict:
    """A run's logged figures (float32 accuracies, as the downstream logs hold them) from its numbers right per class."""
    def figures(right, n):
        f1 = lambda tp, fn, fp: 2 * tp / (2 * tp + fn + fp) if tp else 0.0  # noqa: E731
        macro = (f1(right[0], n[0] - right[0], n[1] - right[1]) + f1(right[1], n[1] - right[1], n[0] - right[0])) / 2
        return float(torch.tensor(sum(right) / sum(n)).float()), macro, (right[0] / n[0] + right[1] / n[1]) / 2
    acc, f1, bal = figures(test, sizes[0])
    vacc, vf1, _ = figures(val, sizes[1])
    return {"seed": seed, "accuracy": acc, "f1_macro": f1, "balanced_accuracy": bal, "val_accuracy": vacc, "val_f1_macro": vf1}


def _recall_report(subset: int, arms: dict[str, list[tuple[tuple[int, int], tuple[int, int]]]]) -> dict:
    return {"pair": "p", "pair_sha256": {"source": "p", "target": "p"}, "classes": ["stroma", "tumour"],
            "counts": {"val": {"stroma": 40, "tumour": 78}, "test": {"stroma": 90, "tumour": 93}},
            "config": {"subset_seed": subset},
            "curve": {"25": {"arms": {a: {"runs": [_recall_run(s, t, v) for s, (t, v) in enumerate(runs)]}
                                      for a, runs in arms.items()}}}}


def test_class_recall_reads_each_class_from_the_logged_figures(bench):
    cr = bench("class_recall")
    # the logged figures give back the numbers right per class, on both blocks
    for test, val in [((70, 90), (38, 50)), ((90, 0), (0, 78)), ((45, 93), (40, 77))]:
        run = _recall_run(0, test, val)
        assert cr.class_splits((90, 93), run["accuracy"], run["f1_macro"], run["balanced_accuracy"]) == [test]
        assert cr.recalls(run, "test", (90, 93)) == pytest.approx((test[0] / 90, test[1] / 93))
    # macro-F1 alone cannot tell (37, 40) from (40, 37) of (40, 78): exchanged (false negatives, false positives)
    run = _recall_run(0, (70, 90), (37, 40))
    assert cr.class_splits((40, 78), run["val_accuracy"], run["val_f1_macro"]) == [(37, 40), (40, 37)]
    assert cr.recalls(run, "validation", (40, 78)) is None
    assert cr.class_splits((40, 78), 0.5, 0.9) == []  # figures that fit no split
    with pytest.raises(ValueError, match=r"no split of the numbers right over classes of 40 and 78 tiles"):
        cr.recalls({**run, "val_f1_macro": 0.9}, "validation", (40, 78))
    with pytest.raises(ValueError, match=r"`sizes` must hold two positive class sizes, got \(0, 5\)"):
        cr.class_splits((0, 5), 0.5, 0.5)


def test_class_recall_pairs_per_seed_and_leaves_out_runs_that_fit_two_splits(bench, tmp_path):
    cr = bench("class_recall")
    real = [((70, 90), (38, 60)), ((72, 90), (38, 62)), ((68, 91), (37, 40))]  # seed 2's validation fits two splits
    shifted = [((60, 92), (38, 70)), ((62, 92), (38, 70)), ((59, 93), (38, 70))]  # stroma lost on test, tumour won on val
    reports = [(_recall_report(s, {"real": real, "+Mix": shifted}), Path(f"s{s}.json")) for s in (3, 4)]
    res = cr.class_recall(reports, "25", ["+Mix"])
    one = res["reports"][0]
    assert one["unread"] == {"real": {"test": [], "validation": [2]}, "+Mix": {"test": [], "validation": []}}
    stroma_test, tumour_test = one["diff"]["+Mix"]["test"]
    assert stroma_test["per_seed"] == pytest.approx([-10 / 90, -10 / 90, -9 / 90]) and stroma_test["verdict"] == "worse"
    assert tumour_test["per_seed"] == pytest.approx([2 / 93, 2 / 93, 2 / 93])
    tumour_val = one["diff"]["+Mix"]["validation"][1]
    assert tumour_val["per_seed"] == pytest.approx([10 / 78, 8 / 78])  # seed 2 left out: its real run is unread
    assert one["recall"]["real"]["validation"][1] == pytest.approx(61 / 78)
    across = res["across"]["+Mix"]["test"][0]
    assert across["interval"]["mean"] == pytest.approx(-29 / 270) and across["lower_beyond"] == 2
    assert res["over"] == "reports" and across["interval"]["half_width"] == pytest.approx(0, abs=1e-12)
    single = cr.class_recall(reports[:1], "25", ["+Mix"])  # one report: its interval over seeds is the one shown
    shown = single["across"]["+Mix"]["test"][0]["interval"]
    assert single["over"] == "seeds" and shown["low"] == pytest.approx(stroma_test["low"])
    assert shown["half_width"] > 0
    # the script writes its report; bad inputs name the file
    paths = []
    for rep, path in reports:
        (tmp_path / path).write_text(json.dumps(rep))
        paths.append(str(tmp_path / path))
    out = tmp_path / "recall"
    assert cr.main(["--n", "25", "--arm", "+Mix", "--out", str(out), *paths]) == 0
    md = out.with_suffix(".md").read_text()
    assert "| +Mix | " in md and "subset 3 real validation seed 2" in md and out.with_suffix(".png").stat().st_size > 0
    assert json.loads(out.with_suffix(".json").read_text())["pair_sha256"] == {"source": "p", "target": "p"}
    other = _recall_report(5, {"real": real, "+Mix": shifted})
    other["counts"]["test"]["stroma"] = 80
    with pytest.raises(ValueError, match=r"s5.json: classes or held-out block sizes differ from s3.json"):
        cr.class_recall([*reports, (other, Path("s5.json"))], "25", ["+Mix"])
    three = _recall_report(6, {"real": real, "+Mix": shifted})
    three["classes"] = ["a", "b", "c"]
    with pytest.raises(ValueError, match=r"s6.json: per-class recall is read for two classes"):
        cr.class_recall([(three, Path("s6.json"))], "25", ["+Mix"])
    bad = _recall_report(7, {"real": real, "+Mix": shifted})
    del bad["curve"]["25"]["arms"]["+Mix"]["runs"][0]["val_f1_macro"]
    with pytest.raises(ValueError, match=r"s7.json: arm '\+Mix' logged no 'val_f1_macro' for the validation block"):
        cr.class_recall([(bad, Path("s7.json"))], "25", ["+Mix"])


def test_class_recall_reads_logged_recall_and_compares_auroc(bench):
    cr = bench("class_recall")
    real = [((70, 90), (37, 40))] * 3  # macro-F1 alone would fit two validation splits; the logged recall decides
    shifted = [((60, 92), (38, 70))] * 3
    rep = _recall_report(3, {"real": real, "+Mix": shifted})
    for name, aurocs in (("real", (0.90, 0.91, 0.92)), ("+Mix", (0.90, 0.92, 0.90))):
        for run, (test, val), a in zip(rep["curve"]["25"]["arms"][name]["runs"], real if name == "real" else shifted, aurocs):
            run.update(recall=[test[0] / 90, test[1] / 93], val_recall=[val[0] / 40, val[1] / 78], auroc=a, val_auroc=a - 0.1)
    res = cr.class_recall([(rep, Path("s3.json"))], "25", ["+Mix"])
    one = res["reports"][0]
    assert one["unread"]["real"]["validation"] == [] and one["recall"]["real"]["validation"] == pytest.approx([37 / 40, 40 / 78])
    assert one["auroc_diff"]["+Mix"]["test"]["per_seed"] == pytest.approx([0.0, 0.01, -0.02])
    assert res["auroc"]["real"]["validation"] == pytest.approx(0.81)
    assert res["auroc_across"]["+Mix"]["test"]["mean"] == pytest.approx(-0.01 / 3)
    md = cr.render_markdown({"class_recall": res, "command": "c"})
    assert "## AUROC of p(tumour)" in md and "| real | 0.910 | - | 0.810 | - |" in md
    del rep["curve"]["25"]["arms"]["+Mix"]["runs"][1]["val_auroc"]  # a block some run did not log: no AUROC there
    res = cr.class_recall([(rep, Path("s3.json"))], "25", ["+Mix"])
    assert set(res["auroc_across"]["+Mix"]) == {"test"}
    rep["curve"]["25"]["arms"]["+Mix"]["runs"][0]["recall"] = [0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match=r"s3.json: arm '\+Mix', test block: per-class recall is read for two classes"):
        cr.class_recall([(rep, Path("s3.json"))], "25", ["+Mix"])
