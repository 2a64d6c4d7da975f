"""Shared fixtures: tiny U-Net configs and dummy epsilon models whose exact answers are known."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from progaug.config import DiffusionConfig, UNetConfig
from progaug.diffusion.schedule import training_alpha_bar
from progaug.nn.unet import UNet

TINY = dict(image_size=32, model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(16,), num_heads=2, gaussian_skip=0.0)


def tiny_config(attention: str = "global", **overrides) -> UNetConfig:
    return UNetConfig(**{**TINY, "attention": attention, **overrides})


def tiny_unet(attention: str = "global", seed: int = 0, **overrides) -> UNet:
    """A seeded tiny U-Net whose zero-initialised output layers are perturbed, so it predicts non-zero noise."""
    torch.manual_seed(seed)
    model = UNet(tiny_config(attention, **overrides))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1 and not p.abs().sum():
                p.copy_(0.01 * torch.randn(p.shape, generator=gen))
    return model.eval()


class GaussianEps:
    """The exact noise predictor for data ``N(mu, s^2 I)``: ``E[eps | x_t]``.

    With ``x_t = sqrt(a) x0 + sqrt(1 - a) eps``: ``E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a)``.
    The probability-flow ODE then maps ``x0`` to ``sqrt(a) mu + sqrt(a s^2 + 1 - a) (x0 - mu) / s``.
    """

    def __init__(self, mu: float, s: float, config: DiffusionConfig | None = None) -> None:
        self.mu, self.s = mu, s
        self.alpha_bar = torch.from_numpy(training_alpha_bar(config))

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.alpha_bar[t].to(x.dtype).view(-1, 1, 1, 1)
        return torch.sqrt(1 - a) * (x - torch.sqrt(a) * self.mu) / (a * self.s**2 + 1 - a)

    def exact(self, x0: torch.Tensor, alpha_bar: float) -> torch.Tensor:
        a = alpha_bar
        return math.sqrt(a) * self.mu + math.sqrt(a * self.s**2 + 1 - a) * (x0 - self.mu) / self.s


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: bit-identity holds at equal thread counts (torchrun and the
    subprocesses of the tests run one thread each; pinned digests are taken on one thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(autouse=True)
def _clean_progaug_environment(monkeypatch, tmp_path_factory) -> None:
    """Tests never depend on the ambient environment: every ``PROGAUG_*`` variable a user may have set
    (``PROGAUG_OFFLINE=1`` in a shell profile, a ``PROGAUG_HOME``) is cleared, and ``PROGAUG_HOME``
    points at a fresh temporary folder; a test that needs one sets it itself."""
    import os

    for name in [n for n in os.environ if n.startswith("PROGAUG_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PROGAUG_HOME", str(tmp_path_factory.mktemp("progaug_home")))


def drop_model_field(path, meta_key: str, field: str = "norm_group_channels") -> None:
    """Rewrite a safetensors file as an older progaug wrote it: ``field`` removed from every U-Net config
    in the JSON metadata entry ``meta_key`` (``"config"`` of a U-Net file, ``"run"`` of a training state)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    entry = json.loads(meta[meta_key])
    for config in (entry[k] for k in ("source_model", "target_model")) if meta_key == "run" else (entry,):
        del config[field]
    save_file(tensors, str(path), metadata={**meta, meta_key: json.dumps(entry)})


def make_pair_dir(folder, classes=("stroma", "tumour"), **overrides):
    """A pair folder of two seeded tiny (32 px) U-Nets, as `progaug train` writes it (``overrides``: UNetConfig fields)."""
    from progaug.checkpoint import save_unet
    from progaug.config import DiffusionConfig
    from progaug.pair import write_card

    folder.mkdir(parents=True, exist_ok=True)
    save_unet(tiny_unet("global", seed=0, **overrides), folder / "source.safetensors")
    save_unet(tiny_unet("local", seed=1, **overrides), folder / "target.safetensors")
    write_card(folder, {"direction": {"source_class": classes[0], "target_class": classes[1]},
                        "diffusion": DiffusionConfig().to_dict(),
                        "source": {"attention": "global"}, "target": {"attention": "local"}})
    return folder


@pytest.fixture
def pair_dir(tmp_path):
    return make_pair_dir(tmp_path / "pair")


@pytest.fixture
def class_folders(tmp_path):
    """``root/normal/*.png`` and ``root/tumour/*.png``: three 32-px tiles per class."""
    from PIL import Image

    root = tmp_path / "data"
    for c, cls in enumerate(("normal", "tumour")):
        (root / cls).mkdir(parents=True)
        for i, tile in enumerate(random_tiles(3, seed=c)):
            Image.fromarray(tile.permute(1, 2, 0).numpy()).save(root / cls / f"{i}.png")
    return root


def random_tiles(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    base = torch.randint(60, 200, (n, 3, 1, 1), generator=gen)
    return (base + torch.randint(-50, 50, (n, 3, size, size), generator=gen)).clamp(0, 255).to(torch.uint8)


def split_folders(root, per_class: int = 6):
    """``root/{train,val,test}/{stroma,tumour}/*.png``: 32-px tiles of random texture."""
    from PIL import Image

    for i, split in enumerate(("train", "val", "test")):
        for j, cls in enumerate(("stroma", "tumour")):
            (root / split / cls).mkdir(parents=True)
            for k, tile in enumerate(random_tiles(per_class, seed=10 * i + j)):
                Image.fromarray(tile.permute(1, 2, 0).numpy()).save(root / split / cls / f"{k}.png")
    return root


BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def load_benchmark(monkeypatch, tmp_path):
    """``load(name, *also)``: import ``benchmarks/<name>.py`` afresh (``also`` and ``common`` re-imported too), its
    generated-set cache in ``tmp_path``; the thread count (the benchmarks set it) restored afterwards."""
    monkeypatch.setenv("PROGAUG_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(BENCH))
    threads = torch.get_num_threads()

    def load(name: str, *also: str):
        for mod in (name, *also, "common"):
            sys.modules.pop(mod, None)
        return __import__(name)

    yield load
    torch.set_num_threads(threads)
