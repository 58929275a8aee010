"""Building blocks shared by the networks: timestep embedding, ResBlock, attention, resampling and a small UNet.

Convolutional pieces follow the DDPM / latent-diffusion family (GroupNorm -> SiLU -> conv, scale-shift time
conditioning, zero-initialised residual branches). The UNet keeps one skip connection per resolution level so that
a whole network reads on one screen; the CDM and SDSeg files build theirs from it.
"""

import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) timesteps -> (B, dim) sinusoidal features, laid out as [cos, sin]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def group_norm(channels: int) -> nn.GroupNorm:
    # Up to 32 groups but at least 4 channels per group: a group of one channel would be instance norm, which
    # erases the per-channel mean (the intensity level) that these networks must reproduce.
    return nn.GroupNorm(math.gcd(32, max(channels // 4, 1)), channels)


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice; an optional embedding modulates the second norm as (1 + scale) * h + shift."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int = 0, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.conv1 = group_norm(in_channels), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_channels)) if emb_dim else None
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))  # block starts as identity
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h)
        if self.emb is not None:
            scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, residual, output projection zero-initialised."""

    def __init__(self, channels: int, num_heads: int = 4):
        super().__init__()
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w).unbind(1)
        y = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.out(y.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int, out_channels: Optional[int] = None):
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Stage(nn.Module):
    """`num_blocks` ResBlocks at one resolution, each followed by self-attention when `attention` is set."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, emb_dim: int = 0,
                 attention: bool = False, num_heads: int = 4, dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(in_channels if i == 0 else out_channels, out_channels, emb_dim, dropout)
                                    for i in range(num_blocks))
        self.attentions = nn.ModuleList(
            SelfAttention(out_channels, num_heads) if attention else nn.Identity() for _ in range(num_blocks))

    def forward(self, x: torch.Tensor, emb: Optional[torch.Tensor] = None) -> torch.Tensor:
        for block, attention in zip(self.blocks, self.attentions):
            x = attention(block(x, emb))
        return x


class UNet(nn.Module):
    """Image-to-image UNet with one skip per level, optionally timestep-conditioned.

    Level l works at 1/2**l of the input size with channels * channel_mult[l] features. `attention_levels` lists
    the levels that get self-attention; the middle always has ResBlock-(attention)-ResBlock. `level_condition`,
    when given, builds a module per encoder level, called as `module(h, condition)` just before the level's skip is
    taken and the features are downsampled (CDM's Condition Embedding uses this hook).
    """

    def __init__(self, in_channels: int, out_channels: int, channels: int = 64,
                 channel_mult: Sequence[int] = (1, 2, 4, 8), num_res_blocks: int = 2,
                 attention_levels: Sequence[int] = (), mid_attention: bool = True, num_heads: int = 4,
                 time_embedding: bool = False, dropout: float = 0.0, zero_init_output: bool = False,
                 level_condition: Optional[Callable[[int], nn.Module]] = None):
        super().__init__()
        widths = [channels * m for m in channel_mult]
        emb_dim = 4 * channels if time_embedding else 0
        self.time_channels = channels
        self.time_mlp = nn.Sequential(nn.Linear(channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)) \
            if time_embedding else None

        def stage(cin, cout, level):
            return Stage(cin, cout, num_res_blocks, emb_dim, level in attention_levels, num_heads, dropout)

        self.input = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.encoder, self.downsamples = nn.ModuleList(), nn.ModuleList()
        previous = channels
        for level, width in enumerate(widths):
            self.encoder.append(stage(previous, width, level))
            self.downsamples.append(Downsample(width) if level < len(widths) - 1 else nn.Identity())
            previous = width
        self.conditions = nn.ModuleList(level_condition(w) for w in widths) if level_condition else None

        deepest = widths[-1]
        self.mid = nn.ModuleList([ResBlock(deepest, deepest, emb_dim, dropout),
                                  SelfAttention(deepest, num_heads) if mid_attention else nn.Identity(),
                                  ResBlock(deepest, deepest, emb_dim, dropout)])

        self.decoder, self.upsamples = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(len(widths))):
            below = widths[level + 1] if level < len(widths) - 1 else deepest
            self.upsamples.append(Upsample(below) if level < len(widths) - 1 else nn.Identity())
            self.decoder.append(stage(below + widths[level], widths[level], level))
        self.output = nn.Sequential(group_norm(widths[0]), nn.SiLU(), nn.Conv2d(widths[0], out_channels, 3, padding=1))
        if zero_init_output:
            zero_module(self.output[-1])

    def forward(self, x: torch.Tensor, t: Optional[torch.Tensor] = None,
                condition: Optional[torch.Tensor] = None) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.time_channels)) if self.time_mlp is not None else None
        h, skips = self.input(x), []
        for level, (stage, down) in enumerate(zip(self.encoder, self.downsamples)):
            h = stage(h, emb)
            if self.conditions is not None:
                h = self.conditions[level](h, condition)
            skips.append(h)
            h = down(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, emb)), emb)
        for stage, up in zip(self.decoder, self.upsamples):
            h = stage(torch.cat([up(h), skips.pop()], dim=1), emb)
        return self.output(h)
