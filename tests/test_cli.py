"""The progaug command end to end on a tiny folder: train -> precompute -> progressive; errors."""

import argparse
import dataclasses
import json
import subprocess
import sys

import pytest
from PIL import Image

from progaug.cache import ProgressiveCache
from progaug.cli import build_parser, main


TINY = ["--tile-size", "32", "--model-channels", "16", "--channel-mult", "1", "2", "--attention-resolutions", "16",
        "--num-heads", "2", "--num-res-blocks", "1"]


@pytest.fixture
def folder(class_folders):
    return class_folders


def test_train_precompute_progressive(folder, tmp_path, capsys):
    pair = tmp_path / "pair"
    train = ["train", "--data", str(folder), "--out", str(pair), "--train-steps", "2", "--batch-size", "2",
             "--checkpoint-every", "1", "--sample-grid-steps", "2", "--device", "cpu", *TINY]
    assert main(train) == 0
    card = json.loads((pair / "card.json").read_text())
    assert card["direction"] == {"source_class": "normal", "target_class": "tumour"}
    assert card["source"]["config"]["model_channels"] == 16 and card["target"]["attention"] == "local"
    assert card["command"] == " ".join(["progaug", *train])
    from progaug.data import folder_tiles

    assert card["data"]["digests"] == folder_tiles(str(folder), tile_size=32).digests_by_class()  # what `leak` compares

    cache = tmp_path / "cache"
    assert main(["precompute", "--pair", str(pair), "--source", str(folder / "normal"), "--n", "4", "--num-levels", "2",
                 "--steps", "4", "--max-batch", "4", "--out", str(cache), "--device", "cpu"]) == 0
    assert len(ProgressiveCache.open(cache)) == 4

    png = tmp_path / "strip.png"
    assert main(["progressive", "--pair", str(pair), "--source", str(folder / "normal"), "--count", "2",
                 "--num-levels", "2", "--steps", "4", "--out", str(png)]) == 0
    assert Image.open(png).size[0] > 3 * 64
    out = capsys.readouterr().out
    assert "soft labels [" in out and "soft labels from the measure (labels=auto)" in out  # a fresh pair has no calibration
    assert f"progaug calibrate --pair {pair} --data ROOT" in out.split("pair written to")[1].splitlines()[0]
    assert f"4 samples in {cache} (labels.csv, manifest.json, preview.png); soft labels from the measure ({pair} has no margin_calibration.json" in out
    assert json.loads((cache / "run.json").read_text())["config"]["labels"] == "measure"

    from progaug.margin import MarginCalibration, write_calibration

    write_calibration(pair, MarginCalibration(slope=1e3, intercept=0.0, timesteps=(500, 900)))
    assert main(["precompute", "--pair", str(pair), "--source", str(folder / "normal"), "--n", "2", "--num-levels", "2",
                 "--steps", "4", "--max-batch", "4", "--out", str(tmp_path / "cache2"), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip().endswith("preview.png); soft labels from the margin")


def test_errors_exit_2_with_message(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "data folder not found" in capsys.readouterr().err
    assert main(["precompute", "--pair", str(tmp_path / "nopair"), "--out", str(tmp_path / "c")]) == 2
    assert "neither a registry name" in capsys.readouterr().err


def test_class_flag_checked(folder, tmp_path):
    with pytest.raises(SystemExit, match="--source-class 'stroma' is not one of the classes"):
        main(["train", "--data", str(folder), "--source-class", "stroma", "--out", str(tmp_path / "o"), *TINY])


def _set_card_diffusion(pair, **values):
    path = pair / "card.json"
    card = json.loads(path.read_text())
    card["diffusion"].update(values)
    path.write_text(json.dumps(card))


def _progressive(pair, folder, out, *extra):
    return ["progressive", "--pair", str(pair), "--source", str(folder / "normal"), "--count", "1", "--num-levels", "2",
            "--threads", "1", "--out", str(out), *extra]


def test_progressive_steps_default_to_the_pair(pair_dir, folder, tmp_path, monkeypatch):
    import progaug.generator

    real, used = progaug.generator.generate_progressive, []

    def recording(*args, **kwargs):
        result = real(*args, **kwargs)
        used.append(result.num_steps)
        return result

    monkeypatch.setattr(progaug.generator, "generate_progressive", recording)
    _set_card_diffusion(pair_dir, sampling_steps=3)
    assert main(_progressive(pair_dir, folder, tmp_path / "a.png")) == 0
    assert main(_progressive(pair_dir, folder, tmp_path / "b.png", "--steps", "4")) == 0
    assert used == [3, 4]


def test_only_user_errors_become_messages(pair_dir, folder, tmp_path, monkeypatch, capsys):
    # a wrongly typed value in a file is a bad value of that file: exit 2 with a message
    _set_card_diffusion(pair_dir, num_train_steps="1000")
    assert main(_progressive(pair_dir, folder, tmp_path / "a.png")) == 2
    assert "`num_train_steps` must be an int, got str '1000'" in capsys.readouterr().err
    # a TypeError raised inside progaug is a bug: it keeps its traceback instead of exit 2
    import progaug.hub

    def broken(*args, **kwargs):
        raise TypeError("a bug")

    monkeypatch.setattr(progaug.hub, "load_pair", broken)
    with pytest.raises(TypeError, match="a bug"):
        main(_progressive(pair_dir, folder, tmp_path / "b.png"))


def _flags(parser):
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [(name, action) for name, p in sub.choices.items() for action in p._actions if action.option_strings]


def test_every_flag_has_a_help_text():
    flags = _flags(build_parser())
    assert len(flags) > 60
    for command, action in flags:
        text = action.help or ""
        assert text and not text.startswith("(default"), (command, action.option_strings, text)


@pytest.mark.parametrize("cls", ["progaug.train.TrainConfig", "progaug.config.UNetConfig", "progaug.config.DiffusionConfig",
                                 "progaug.runtime.RuntimeConfig", "progaug.precomputation.PrecomputeConfig"])
def test_config_fields_carry_their_help(cls):
    import importlib

    module, name = cls.rsplit(".", 1)
    for field in dataclasses.fields(getattr(importlib.import_module(module), name)):
        text = field.metadata.get("help", "")
        assert text, f"{cls}.{field.name} has no metadata['help']"
        if field.default is None:  # the text itself says what None means
            assert "default" in text, f"{cls}.{field.name}: say what the default None means"


def test_defaults_come_from_the_configs():
    from progaug.config import PAIR_ATTENTION, UNetConfig

    args = build_parser().parse_args(["train", "--out", "x"])
    assert args.tile_size == UNetConfig().image_size
    assert (args.source_attention, args.target_attention) == (PAIR_ATTENTION["source"], PAIR_ATTENTION["target"])
    assert build_parser().parse_args(["progressive"]).steps is None  # the pair's diffusion.sampling_steps


def test_python_dash_m():
    proc = subprocess.run([sys.executable, "-m", "progaug", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("progaug ")


def test_every_flag_survives_torchrun():
    """torchrun parses the whole command line with its own parser, abbreviations allowed: a progaug flag that
    is a prefix of one of torchrun's flags (``--n`` of ``--nnodes``) stops the launch before progaug starts."""
    from torch.distributed.run import get_args_parser

    launcher = get_args_parser()
    launcher.exit_on_error = False
    taken = set()
    for command, action in _flags(build_parser()):
        for flag in action.option_strings:
            if flag in ("-h", "--help"):
                continue
            argv = ["--nproc-per-node", "2", "-m", "progaug", command, flag, "1"]
            try:
                got = launcher.parse_args(argv).training_script_args
            except (SystemExit, argparse.ArgumentError):
                taken.add(flag)
                continue
            assert got == [command, flag, "1"], (command, flag, got)
    assert taken == {"--n"}  # precompute's --n has the spelling --num-samples for torchrun


def test_num_samples_is_n(tmp_path):
    args = build_parser().parse_args(["precompute", "--num-samples", "7", "--out", str(tmp_path)])
    assert args.n == 7


def test_attention_defaults_follow_the_tile_size(tmp_path, monkeypatch):
    from progaug.config import UNetConfig

    for size in (32, 64):  # where the fixed default fits, it stays (a resume of an earlier pair is not refused)
        assert UNetConfig.attention_sides_for(size, UNetConfig.channel_mult) == UNetConfig.attention_resolutions == (16, 8)
    assert UNetConfig.attention_sides_for(128, UNetConfig.channel_mult) == (32, 16)
    for cls in ("a", "b"):
        (tmp_path / "d" / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (256, 256), (40 * i, 90, 200)).save(tmp_path / "d" / cls / f"{i}.png")
    specs = []
    monkeypatch.setattr("progaug.train.train_pair", lambda tiles, out, spec, *a, **k: specs.append(spec) or out)
    common = ["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o"), "--tile-size", "256"]
    assert main(common) == 0
    assert specs[-1].source_model.attention_resolutions == (64, 32)
    assert specs[-1].target_model.attention_resolutions == (64, 32)
    assert main([*common, "--channel-mult", "1", "1", "2", "2", "4", "4"]) == 0
    assert specs[-1].source_model.attention_resolutions == (16, 8)
    assert main([*common, "--attention-resolutions", "128"]) == 0  # a given flag wins
    assert specs[-1].source_model.attention_resolutions == (128,)


def test_demo_tiles_refuse_a_larger_tile_size(tmp_path, capsys):
    assert main(["train", "--tile-size", "256", "--out", str(tmp_path / "o")]) == 2
    assert "--tile-size 256: the bundled demo tiles (--data hgsc) are cut from 250-px blocks" in capsys.readouterr().err
