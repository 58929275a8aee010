"""Fitting 2D slices to a model's square input size and back: centre padding, or area-downsampling when larger."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SliceFitter:
    """Maps (B, C, H, W) slices to (B, C, S, S) for the model and the model's output back to (H, W).

    Slices that fit are zero-cost padded (BraTS 240² -> 256²: no interpolation; docs/decisions.md); larger
    slices are resized so the longer side is S, keeping the aspect ratio, then padded.
    """

    height: int
    width: int
    size: int | None  # None: the model takes slices as they are

    @property
    def scale(self) -> float:
        if self.size is None:
            return 1.0
        return min(1.0, self.size / max(self.height, self.width))

    @property
    def resized_shape(self) -> tuple[int, int]:
        if self.scale == 1.0:
            return self.height, self.width
        return max(1, round(self.height * self.scale)), max(1, round(self.width * self.scale))

    def _padding(self) -> tuple[int, int, int, int]:
        h, w = self.resized_shape
        top, left = (self.size - h) // 2, (self.size - w) // 2
        return left, self.size - w - left, top, self.size - h - top

    def to_model(self, slices: torch.Tensor, fill: float, mode: str = "area") -> torch.Tensor:
        """mode: "area" for intensities, "nearest-exact" for label maps (label values must not be averaged)."""
        if self.size is None:
            return slices
        if self.scale < 1.0:
            slices = F.interpolate(slices, size=self.resized_shape, mode=mode)
        return F.pad(slices, self._padding(), value=fill)

    def to_model_per_channel(self, slices: torch.Tensor, fills: list[float]) -> torch.Tensor:
        """to_model with each channel padded by its own background value (F.pad takes one value for all)."""
        if self.size is None:
            return slices
        fitted = self.to_model(slices, fill=0.0)
        outside = self.to_model(torch.ones_like(slices[:, :1]), fill=0.0) == 0
        background = torch.tensor(fills, dtype=fitted.dtype).view(1, -1, 1, 1).expand_as(fitted)
        return torch.where(outside, background, fitted)

    def from_model(self, output: torch.Tensor) -> torch.Tensor:
        if self.size is None:
            return output
        left, _, top, _ = self._padding()
        h, w = self.resized_shape
        output = output[..., top:top + h, left:left + w]
        if self.scale < 1.0:
            output = F.interpolate(output, size=(self.height, self.width), mode="bilinear", align_corners=False)
        return output


def per_slice_seed(seed: int, slice_index: int, stream: int = 0) -> int:
    """A seed for one slice's noise: independent of batch size and device, different for every slice."""
    # Integer mixing of the three numbers (splitmix-style); any fixed bijection-ish mix works.
    value = (seed * 0x9E3779B97F4A7C15 + slice_index * 0xBF58476D1CE4E5B9 + stream * 0x94D049BB133111EB) & (2**63 - 1)
    value ^= value >> 31
    return value


def slice_noise(shape: tuple[int, ...], seed: int, slice_indices: list[int], stream: int, device: torch.device) -> torch.Tensor:
    """Standard normal noise of shape (B, *shape), each slice drawn from its own seeded CPU generator."""
    generator = torch.Generator()
    rows = []
    for index in slice_indices:
        generator.manual_seed(per_slice_seed(seed, index, stream))
        rows.append(torch.randn(shape, generator=generator))
    return torch.stack(rows).to(device)


def batch_count(n_slices: int, batch_size: int) -> int:
    return math.ceil(n_slices / batch_size)
