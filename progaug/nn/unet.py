"""ADM-style epsilon-prediction U-Net (guided-diffusion's design, rewritten small and typed).

Residual blocks with a sinusoidal timestep embedding injected as a FiLM scale and shift after the
second GroupNorm, attention blocks at the feature-map sides in ``config.attention_resolutions`` and
in the middle, stride-2 convolutions down, nearest-neighbour upsampling plus a convolution up, skip
connections concatenated on the way up. Output layers start at zero, as in ADM.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from progaug.config import UNetConfig
from progaug.nn.attention import AttentionBlock, group_norm

__all__ = ["UNet", "timestep_embedding"]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of ``(B,)`` timesteps, ``(B, dim)`` float32 (cos half, then sin half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the timestep embedding in between; ``(B, Ci, H, W) -> (B, Co, H, W)``."""

    def __init__(
        self, in_ch: int, out_ch: int, emb_ch: int, dropout: float, scale_shift: bool, min_group_channels: int = 1
    ) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(
            group_norm(in_ch, min_group_channels), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, 2 * out_ch if scale_shift else out_ch))
        self.out_norm = group_norm(out_ch, min_group_channels)
        self.out_layers = nn.Sequential(nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(out_ch, out_ch, 3, padding=1))
        nn.init.zeros_(self.out_layers[-1].weight)
        nn.init.zeros_(self.out_layers[-1].bias)
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        e = self.emb_layers(emb).to(h.dtype)[..., None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_norm(h) * (1 + scale) + shift
        else:
            h = self.out_norm(h + e)
        return self.skip(x) + self.out_layers(h)


class _Level(nn.Module):
    """A residual block optionally followed by attention."""

    def __init__(self, res: ResBlock, attn: AttentionBlock | None) -> None:
        super().__init__()
        self.res = res
        self.attn = attn

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.res(x, emb)
        return self.attn(x) if self.attn is not None else x


class UNet(nn.Module):
    """Epsilon-prediction U-Net; the attention priority comes from ``config.attention``.

    Args:
        config: Shape of the network.

    Shape:
        ``x``: ``(B, 3, H, W)`` float, H and W divisible by ``config.downsample_factor``;
        ``t``: ``(B,)`` int64 training timesteps in ``[0, T)``. Returns ``(B, 3, H, W)`` predicted noise.
    """

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or UNetConfig()
        ch0, emb_ch = cfg.model_channels, 4 * cfg.model_channels
        self.time_embed = nn.Sequential(nn.Linear(ch0, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        self.input_conv = nn.Conv2d(cfg.in_channels, ch0, 3, padding=1)

        gn = cfg.norm_group_channels

        def res(i: int, o: int) -> ResBlock:
            return ResBlock(i, o, emb_ch, cfg.dropout, cfg.use_scale_shift_norm, gn)

        def attention(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, cfg.heads_for(ch), cfg.attention, gn)

        def block(i: int, o: int, side: int) -> _Level:
            attn = attention(o) if side in cfg.attention_resolutions else None  # first: keeps seeded inits
            return _Level(res(i, o), attn)

        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips, ch, side = [ch0], ch0, cfg.image_size
        for level, width in enumerate(cfg.level_channels):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                blocks.append(block(ch, width, side))
                ch = width
                skips.append(ch)
            self.down.append(blocks)
            if level < len(cfg.level_channels) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
                side //= 2
        self.middle = nn.ModuleList(
            [
                _Level(res(ch, ch), None),
                _Level(res(ch, ch), attention(ch)),
            ]
        )
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level, width in reversed(list(enumerate(cfg.level_channels))):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(block(ch + skips.pop(), width, side))
                ch = width
            self.up.append(blocks)
            if level > 0:
                self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1))
                side *= 2
        self.out = nn.Sequential(group_norm(ch, gn), nn.SiLU(), nn.Conv2d(ch, cfg.in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        if cfg.gaussian_skip:
            from progaug.diffusion.schedule import training_alpha_bar

            # alpha_bar of the training schedule, stored with the weights (train sets its own schedule)
            self.register_buffer("skip_alpha_bar", torch.tensor(training_alpha_bar(), dtype=torch.float32))  # follows torch.device(...)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self._check_input(x, t)
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(x.dtype))
        h = self.input_conv(x)
        skips = [h]
        for level, blocks in enumerate(self.down):
            for blk in blocks:
                h = blk(h, emb)
                skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
                skips.append(h)
        for blk in self.middle:
            h = blk(h, emb)
        for level, blocks in enumerate(self.up):
            for blk in blocks:
                h = blk(torch.cat([h, skips.pop()], dim=1), emb)
            if level < len(self.upsample):
                h = self.upsample[level](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        out = self.out(h)
        if not self.config.gaussian_skip:
            return out
        return out.float() + self.gaussian_eps(x, t)

    def gaussian_eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The built-in predictor of ``config.gaussian_skip``: ``sqrt(1 - a) x / (a sigma^2 + 1 - a)``,
        the exact ``E[eps | x_t]`` for data ``N(0, sigma^2 I)`` (float32, shape of ``x``)."""
        a = self.skip_alpha_bar[t].float().view(-1, 1, 1, 1)
        sigma2 = float(self.config.gaussian_skip) ** 2
        return (1 - a).sqrt() * x.float() / (a * sigma2 + 1 - a)

    def _check_input(self, x: torch.Tensor, t: torch.Tensor) -> None:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"`x` must have shape (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}")
        f = cfg.downsample_factor
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"`x` sides must be divisible by {f} for this U-Net, got {tuple(x.shape[-2:])}")
        if t.shape != (x.shape[0],):
            raise ValueError(f"`t` must have shape ({x.shape[0]},), got {tuple(t.shape)}")

    @property
    def attention(self) -> str:
        """The attention priority, ``"global"`` or ``"local"``."""
        return self.config.attention

    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters())
