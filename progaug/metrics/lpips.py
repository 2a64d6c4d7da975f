"""LPIPS v0.1 with the AlexNet backbone (Zhang et al. 2018), from local safetensors weights.

``d(x, y) = sum_l mean_hw( w_l . (f_l(x) / |f_l(x)| - f_l(y) / |f_l(y)|)^2 )`` over the five ReLU
outputs of AlexNet's convolutions, channel-normalised, weighted by the learned 1x1 heads ``w_l``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LPIPS"]

_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_TAPS = (1, 4, 7, 9, 11)  # ReLU outputs in torchvision's alexnet.features


class LPIPS(nn.Module):
    """Perceptual distance between two batches of images in [-1, 1].

    Args:
        features: AlexNet ``features.*`` state dict (torchvision layout).
        heads: LPIPS ``lin{0..4}.model.1.weight`` state dict.

    Shape:
        ``(B, 3, H, W), (B, 3, H, W) -> (B,)`` float32 distances (0 for identical images).
    """

    def __init__(self, features: dict[str, torch.Tensor], heads: dict[str, torch.Tensor]) -> None:
        super().__init__()
        from torchvision.models import alexnet

        backbone = alexnet(weights=None).features
        backbone.load_state_dict({k.removeprefix("features."): v for k, v in features.items()}, strict=True)
        self.features = backbone[: _TAPS[-1] + 1].eval().requires_grad_(False)
        self.heads = nn.ParameterList([nn.Parameter(heads[f"lin{i}.model.1.weight"], requires_grad=False) for i in range(5)])
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x.float() - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _TAPS:
                out.append(x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return out

    @torch.no_grad()
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape:
            raise ValueError(f"LPIPS inputs must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        total = torch.zeros(x.shape[0], device=x.device)
        for fx, fy, w in zip(self._taps(x), self._taps(y), self.heads):
            total += ((fx - fy).pow(2) * w).sum(dim=1).mean(dim=(1, 2))
        return total
