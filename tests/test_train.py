"""progaug train: outputs, exact resume, refused resume, crash safety, torchrun."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import progaug.train as train_mod
from progaug.fileio import sha256_file
from progaug.data.tiles import TileSet
from progaug.pair import load_pair_dir
from progaug.train import PairSpec, TrainConfig, augment_dihedral, train_pair

from conftest import drop_model_field, tiny_config

FAST = dict(batch_size=4, checkpoint_every=2, sample_grid_steps=2, warmup_steps=2)


def toy_tiles(n: int = 6) -> TileSet:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2 * n, 3, 32, 32), generator=gen, dtype=torch.uint8)
    labels = torch.tensor([0] * n + [1] * n)
    return TileSet(images, labels, ("a", "b"), tuple(f"toy:{i}" for i in range(2 * n)))


def run(out, steps, resume=False, **train):
    return train_pair(
        toy_tiles(), out, PairSpec("a", "b", source_model=tiny_config("global")),
        TrainConfig(train_steps=steps, **{**FAST, **train}), resume=resume, device="cpu", progress=False, provenance={"command": "test"},
    )


class TestTrainPair:
    def test_outputs(self, tmp_path):
        out = run(tmp_path / "pair", 2)
        card = json.loads((out / "card.json").read_text())
        assert card["direction"] == {"source_class": "a", "target_class": "b"}
        assert card["source"]["attention"] == "global" and card["target"]["attention"] == "local"
        assert card["training"]["steps_done"] == 2 and card["command"] == "test"
        assert card["training"]["wall_time_s"] > 0
        assert card["source"]["sha256"] == sha256_file(out / "source.safetensors")
        assert (out / "samples" / "step_0000002.png").is_file()
        pair = load_pair_dir(out)
        assert pair.classes == ("a", "b") and pair.target.config.attention == "local"
        assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]

    def test_resume_continues_exactly(self, tmp_path):
        straight = run(tmp_path / "straight", 4)
        run(tmp_path / "split", 2)
        resumed = run(tmp_path / "split", 4, resume=True)
        a, b = load_file(str(straight / "checkpoint.safetensors")), load_file(str(resumed / "checkpoint.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
        # safetensors writes its metadata in hash-map order, so compare tensors, not file bytes
        for role in ("source", "target"):
            x, y = load_file(str(straight / f"{role}.safetensors")), load_file(str(resumed / f"{role}.safetensors"))
            assert all(torch.equal(x[k], y[k]) for k in x)

    def test_resume_at_the_budget_exports_the_pair(self, tmp_path):
        """A training state alone (as kept in training/hgsc-demo) becomes pair files with --steps at its step."""
        trained = run(tmp_path / "a", 2)
        (tmp_path / "b").mkdir()
        (tmp_path / "b" / "checkpoint.safetensors").write_bytes((trained / "checkpoint.safetensors").read_bytes())
        exported = run(tmp_path / "b", 2, resume=True)
        for role in ("source", "target"):
            x, y = load_file(str(trained / f"{role}.safetensors")), load_file(str(exported / f"{role}.safetensors"))
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
        assert load_pair_dir(exported).card["training"]["steps_done"] == 2

    def test_resume_with_changed_config_refused(self, tmp_path):
        run(tmp_path / "p", 2)
        with pytest.raises(ValueError, match="was made with another configuration"):
            run(tmp_path / "p", 4, resume=True, lr=1e-3)

    def test_resume_of_a_state_from_before_norm_group_channels(self, tmp_path):
        """A training state written before the field existed resumes with --norm-group-channels 1 only."""
        def legacy_run(out, steps, resume=False, group_channels=1):
            return train_pair(
                toy_tiles(), out, PairSpec("a", "b", source_model=tiny_config("global", norm_group_channels=group_channels)),
                TrainConfig(train_steps=steps, **FAST), resume=resume, device="cpu", progress=False, provenance={"command": "test"},
            )

        out = legacy_run(tmp_path / "p", 2)
        drop_model_field(out / "checkpoint.safetensors", "run")
        with pytest.raises(ValueError, match="was made with another configuration"):
            legacy_run(out, 3, resume=True, group_channels=4)
        assert load_pair_dir(legacy_run(out, 3, resume=True)).card["training"]["steps_done"] == 3

    def test_resume_checks_the_tiles_digests_where_recorded(self, tmp_path):
        def digest_run(out, steps, digests, resume=False):
            data = {"counts": {"a": 6, "b": 6}, **({"digests": digests} if digests is not None else {})}
            return train_pair(toy_tiles(), out, PairSpec("a", "b", source_model=tiny_config("global")),
                              TrainConfig(train_steps=steps, **FAST), resume=resume, device="cpu", progress=False,
                              provenance={"command": "test", "data": data})

        same = toy_tiles().digests_by_class()
        digest_run(tmp_path / "p", 2, same)
        other = {**same, "a": sorted(["0" * 16, *same["a"][1:]])}
        with pytest.raises(ValueError, match=r"another configuration.*digests"):
            digest_run(tmp_path / "p", 3, other, resume=True)
        assert load_pair_dir(digest_run(tmp_path / "p", 3, same, resume=True)).card["data"]["digests"] == same
        # a state from before cards recorded digests resumes with them
        digest_run(tmp_path / "q", 2, None)
        assert load_pair_dir(digest_run(tmp_path / "q", 3, same, resume=True)).card["data"]["digests"] == same

    def test_existing_checkpoint_needs_resume(self, tmp_path):
        run(tmp_path / "p", 2)
        with pytest.raises(FileExistsError, match="pass --resume"):
            run(tmp_path / "p", 4)
        with pytest.raises(FileNotFoundError, match="no checkpoint"):
            run(tmp_path / "q", 4, resume=True)

    def test_crash_mid_training_keeps_last_checkpoint(self, tmp_path, monkeypatch):
        real_step = train_mod._train_step

        def crashing(m, step, *args, **kwargs):
            if step == 3:
                raise RuntimeError("simulated crash")
            return real_step(m, step, *args, **kwargs)

        monkeypatch.setattr(train_mod, "_train_step", crashing)
        with pytest.raises(RuntimeError, match="simulated crash"):
            run(tmp_path / "p", 6)
        monkeypatch.setattr(train_mod, "_train_step", real_step)
        assert load_pair_dir(tmp_path / "p").card["training"]["steps_done"] == 2
        run(tmp_path / "p", 4, resume=True)  # continues from step 2

    def test_crash_while_saving_keeps_previous_files(self, tmp_path, monkeypatch):
        run(tmp_path / "p", 2)
        before = sha256_file(tmp_path / "p" / "checkpoint.safetensors")

        def broken_replace(src, dst):
            raise OSError("disk full")

        monkeypatch.setattr(os, "replace", broken_replace)
        with pytest.raises(OSError, match="disk full"):
            run(tmp_path / "p", 4, resume=True)
        monkeypatch.undo()
        assert sha256_file(tmp_path / "p" / "checkpoint.safetensors") == before
        assert not [p for p in (tmp_path / "p").rglob("*") if p.name.endswith(".tmp")]
        load_pair_dir(tmp_path / "p")

    def test_bad_arguments(self, tmp_path):
        with pytest.raises(ValueError, match="`train_steps` must be >= 1, got 0"):
            TrainConfig(train_steps=0)
        with pytest.raises(ValueError, match="`source_model.image_size` 64 differs from the tile size 32"):
            train_pair(toy_tiles(), tmp_path, PairSpec("a", "b"))
        with pytest.raises(ValueError, match="unknown class 'c'"):
            train_pair(toy_tiles(), tmp_path, PairSpec("a", "c", source_model=tiny_config()))
        with pytest.raises(TypeError, match="`spec` must be a PairSpec, got dict"):
            train_pair(toy_tiles(), tmp_path, {"source_class": "a"})
        with pytest.raises(ValueError, match="`provenance` takes the keys 'data' and 'command', got \\['cmd'\\]"):
            train_pair(toy_tiles(), tmp_path, PairSpec("a", "b", source_model=tiny_config()), provenance={"cmd": "x"})
        with pytest.raises(ValueError, match="`source_class` and `target_class` must differ, both are 'a'"):
            PairSpec("a", "a")
        with pytest.raises(TypeError, match="`target_class` must be a class name"):
            PairSpec("a", None)
        with pytest.raises(TypeError, match="`diffusion` must be a DiffusionConfig, got dict"):
            PairSpec("a", "b", diffusion={})
        assert PairSpec("a", "b").target_model.attention == "local" and PairSpec("a", "b").source_model.attention == "global"


class TestLossWeighting:
    def test_min_snr_weights(self):
        from progaug.train import loss_weights

        cfg = TrainConfig(loss_weighting="min_snr", min_snr_gamma=5.0)
        # SNR = a / (1 - a): 99 (low noise), 5 (the cut), 1, 0.01 (high noise)
        a = torch.tensor([0.99, 5 / 6, 0.5, 1 / 101], dtype=torch.float64)
        w = loss_weights(a, cfg)
        assert torch.allclose(w, torch.tensor([5 / 99, 1.0, 1.0, 1.0], dtype=torch.float64))
        assert torch.equal(loss_weights(a, TrainConfig(loss_weighting="uniform")), torch.ones(4, dtype=torch.float64))

    def test_min_snr_changes_training_and_is_recorded(self, tmp_path):
        plain = load_file(str(run(tmp_path / "u", 2, loss_weighting="uniform") / "source.safetensors"))
        out = run(tmp_path / "m", 2, loss_weighting="min_snr")
        weighted = load_file(str(out / "source.safetensors"))
        assert any(not torch.equal(plain[k], weighted[k]) for k in plain)
        assert load_pair_dir(out).card["training"]["loss_weighting"] == "min_snr"
        with pytest.raises(ValueError, match="was made with another configuration"):
            run(tmp_path / "m", 3, resume=True, loss_weighting="uniform")  # uniform weighting on a min_snr state

    def test_state_from_before_the_field_resumes_as_uniform(self, tmp_path):
        from safetensors import safe_open
        from safetensors.torch import load_file as load, save_file

        out = run(tmp_path / "p", 2, loss_weighting="uniform")
        path = out / "checkpoint.safetensors"
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        stored = json.loads(meta["run"])
        del stored["train"]["loss_weighting"], stored["train"]["min_snr_gamma"]
        save_file(load(str(path)), str(path), metadata={**meta, "run": json.dumps(stored, sort_keys=True)})
        with pytest.raises(ValueError, match="train.loss_weighting: stored \"uniform\", now \"min_snr\""):
            run(out, 3, resume=True)  # today's default is min_snr
        assert load_pair_dir(run(out, 3, resume=True, loss_weighting="uniform")).card["training"]["steps_done"] == 3

    def test_bad_values(self):
        with pytest.raises(ValueError, match="`loss_weighting` must be 'uniform' or 'min_snr', got 'snr'"):
            TrainConfig(loss_weighting="snr")
        with pytest.raises(ValueError, match="`min_snr_gamma` must be > 0, got 0"):
            TrainConfig(min_snr_gamma=0)


def test_augment_dihedral_is_a_permutation_of_pixels():
    x = torch.arange(2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    y = augment_dihedral(x, torch.Generator().manual_seed(0))
    for i in range(2):
        assert torch.equal(x[i].flatten().sort().values, y[i].flatten().sort().values)


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        "from test_train import run\n"
        f"run({str(tmp_path / 'pair')!r}, 2)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533", str(script)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = json.loads((tmp_path / "pair" / "card.json").read_text())
    assert card["training"]["world_size"] == 2 and card["training"]["steps_done"] == 2
