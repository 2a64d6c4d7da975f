"""The FID Inception network (pytorch-fid's variant of torchvision's Inception3) and its features.

pytorch-fid reproduces the TensorFlow 2015-12-05 graph with torchvision's Inception3 plus four
changes: average pools in the A, C and first E blocks exclude padding from the mean, and the last E
block max-pools its pool branch. Inputs in [0, 1] are resized to 299 x 299 (bilinear) and mapped
to [-1, 1].

Features returned: ``pool`` (2048-d, FID) and ``spatial`` (the first 7 channels of the 1x1 branch
of ``Mixed_6d`` — TF ``mixed_6/conv`` — at 17 x 17, flattened to 2023-d, sFID as in the ADM suite).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FIDInception"]


def _pool_branch(block: nn.Module, x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "max":
        return block.branch_pool(F.max_pool2d(x, kernel_size=3, stride=1, padding=1))
    return block.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False))


def _patch_a(block: nn.Module) -> None:
    def forward(x: torch.Tensor) -> torch.Tensor:
        b1 = block.branch1x1(x)
        b5 = block.branch5x5_2(block.branch5x5_1(x))
        b3 = block.branch3x3dbl_3(block.branch3x3dbl_2(block.branch3x3dbl_1(x)))
        return torch.cat([b1, b5, b3, _pool_branch(block, x, "avg")], 1)

    block.forward = forward


def _patch_c(block: nn.Module) -> None:
    def forward(x: torch.Tensor) -> torch.Tensor:
        b1 = block.branch1x1(x)
        b7 = block.branch7x7_3(block.branch7x7_2(block.branch7x7_1(x)))
        d = x
        for name in ("branch7x7dbl_1", "branch7x7dbl_2", "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5"):
            d = getattr(block, name)(d)
        return torch.cat([b1, b7, d, _pool_branch(block, x, "avg")], 1)

    block.forward = forward


def _patch_e(block: nn.Module, pool: str) -> None:
    def forward(x: torch.Tensor) -> torch.Tensor:
        b1 = block.branch1x1(x)
        b3 = block.branch3x3_1(x)
        b3 = torch.cat([block.branch3x3_2a(b3), block.branch3x3_2b(b3)], 1)
        d = block.branch3x3dbl_2(block.branch3x3dbl_1(x))
        d = torch.cat([block.branch3x3dbl_3a(d), block.branch3x3dbl_3b(d)], 1)
        return torch.cat([b1, b3, d, _pool_branch(block, x, pool)], 1)

    block.forward = forward


class FIDInception(nn.Module):
    """Inception features for FID and sFID.

    Args:
        state_dict: The pytorch-fid weights in torchvision key layout (see :mod:`progaug.metrics.weights`).

    Shape:
        ``(B, 3, H, W)`` float images in [0, 1] -> dict with ``pool`` ``(B, 2048)`` and ``spatial``
        ``(B, 2023)``, float64.
    """

    def __init__(self, state_dict: dict[str, torch.Tensor]) -> None:
        super().__init__()
        from torchvision.models.inception import Inception3

        net = Inception3(num_classes=1008, aux_logits=False, init_weights=False, transform_input=False)
        net.load_state_dict(state_dict, strict=True)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
            _patch_a(getattr(net, name))
        for name in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
            _patch_c(getattr(net, name))
        _patch_e(net.Mixed_7b, "avg")
        _patch_e(net.Mixed_7c, "max")
        self.net = net.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        n = self.net
        x = F.interpolate(x.float(), size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                     "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c"):
            x = getattr(n, name)(x)
        spatial = n.Mixed_6d.branch1x1(x)[:, :7].flatten(1)
        for name in ("Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(n, name)(x)
        pool = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return {"pool": pool.double(), "spatial": spatial.double()}
