"""One self-attention block with the two priorities of the hybrid attention strategy (paper 2.2).

- ``"global"`` (the source / diffusion model): one projection over *all* channels computes q, k, v,
  which are then split into heads. Each head's q, k, v mix every channel.
- ``"local"`` (the target / denoising model): channels are split into heads first and each head
  has its own q, k, v projection (a grouped 1x1 convolution). Each head sees only its channels.

The priorities differ in parameters, not only in layout: the qkv projection has ``3 C^2 + 3 C``
weights under ``global`` and ``3 C^2 / heads + 3 C`` under ``local``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from progaug.config import ATTENTION_PRIORITIES

__all__ = ["AttentionBlock", "group_norm", "norm_groups"]


def norm_groups(channels: int, min_group_channels: int = 1) -> int:
    """Number of GroupNorm groups for ``channels`` channels.

    ADM uses 32 groups; here the most groups that divide ``channels``, at most 32, with at least
    ``min_group_channels`` channels in each; ``min_group_channels=1`` gives ``gcd(32, channels)``. With
    one channel per group GroupNorm is an instance norm: it removes each channel's spatial mean, so a
    network built only of such norms cannot see a uniform colour shift of its input (``docs/method.md``).
    """
    groups = math.gcd(32, channels)
    while groups > 1 and channels // groups < min_group_channels:
        groups //= 2
    return groups


def group_norm(channels: int, min_group_channels: int = 1) -> nn.GroupNorm:
    """GroupNorm over :func:`norm_groups` groups of ``channels``."""
    return nn.GroupNorm(norm_groups(channels, min_group_channels), channels)


class AttentionBlock(nn.Module):
    """Residual multi-head self-attention over the pixels of a feature map.

    Args:
        channels: Feature channels ``C``; divisible by ``num_heads``.
        num_heads: Attention heads.
        priority: ``"global"`` or ``"local"`` (see the module docstring).

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, channels: int, num_heads: int, priority: str = "global", min_group_channels: int = 1) -> None:
        super().__init__()
        if priority not in ATTENTION_PRIORITIES:
            raise ValueError(f"`priority` must be one of {ATTENTION_PRIORITIES}, got {priority!r}")
        if channels % num_heads:
            raise ValueError(f"`channels` {channels} is not divisible by `num_heads` {num_heads}")
        self.channels = channels
        self.num_heads = num_heads
        self.priority = priority
        self.norm = group_norm(channels, min_group_channels)
        groups = 1 if priority == "global" else num_heads
        self.qkv = nn.Conv1d(channels, 3 * channels, 1, groups=groups)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x).reshape(b, c, h * w))  # (B, 3C, N)
        heads, d = self.num_heads, c // self.num_heads
        if self.priority == "global":
            # project over all channels, then split each of q, k, v into heads
            q, k, v = (t.reshape(b, heads, d, h * w) for t in qkv.chunk(3, dim=1))
        else:
            # the grouped projection wrote each head's q, k, v next to each other
            q, k, v = qkv.reshape(b, heads, 3 * d, h * w).chunk(3, dim=2)
        # (B, heads, N, d) with the last dim contiguous: PyTorch's fused CPU kernel needs unit stride there and falls
        # back to the unfused math (3-4x slower at 16 x 16 pixels) for the transposed views (docs/performance.md)
        q, k, v = (t.transpose(-1, -2).contiguous() for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, h * w)
        return x + self.proj_out(out).reshape(b, c, h, w)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, num_heads={self.num_heads}, priority={self.priority!r}"
