"""progaug: progressive soft-labelled augmentation for pathology from two small diffusion models.

Implements ADD (Liu et al., MICCAI 2024). Public names are imported lazily so that
``import progaug`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "UNetConfig": "progaug.config",
    "DiffusionConfig": "progaug.config",
    "UNet": "progaug.nn.unet",
    "AttentionBlock": "progaug.nn.attention",
    "DDIMSchedule": "progaug.diffusion.schedule",
    "invert": "progaug.diffusion.ddim",
    "sample": "progaug.diffusion.ddim",
    "bridge": "progaug.diffusion.ddim",
    "highpass_amplitude": "progaug.frequency",
    "soft_labels": "progaug.frequency",
    "adaptive_depths": "progaug.frequency",
    "depth_for_label": "progaug.frequency",
    "MEASURES": "progaug.labels",
    "DEFAULT_MEASURE": "progaug.labels",
    "generate_progressive": "progaug.generator",
    "GenerationConfig": "progaug.generator",
    "ProgressiveGenerator": "progaug.generator",
    "ProgressiveResult": "progaug.generator",
    "save_unet": "progaug.checkpoint",
    "load_unet": "progaug.checkpoint",
    "load_pair": "progaug.hub",
    "Pair": "progaug.pair",
    "ProgressiveDiffusionAugment": "progaug.transforms",
    "SoftLabelProgressiveDataset": "progaug.datasets",
    "SelectiveFilter": "progaug.selection",
    "ProtocolConfig": "progaug.evaluation.protocol",
    "SoftLabelCrossEntropy": "progaug.losses",
    "BinarySoftTargetLoss": "progaug.losses",
    "PrecomputeConfig": "progaug.precomputation",
    "precompute": "progaug.precomputation",
    "ProgressiveCache": "progaug.cache",
    "PairSpec": "progaug.train",
    "TrainConfig": "progaug.train",
    "train_pair": "progaug.train",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'progaug' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
