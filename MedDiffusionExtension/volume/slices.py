"""Placing 2D slices in a model's field of view and back, by physical size.

A model was trained on S x S slices of a known in-plane pixel spacing (its card's `geometry`). Every input slice is
resampled in-plane to that spacing (anti-aliased when it shrinks), so anatomy meets the network at the size it
learnt, whatever the scanner's matrix. The slice is then covered by S x S windows: one, centred on the slice's
content (what differs from the background fill), when the content fits; otherwise overlapping windows at the
positions MONAI's sliding_window_inference uses, blended with the same Gaussian weights. Outputs
are blended, resampled back to the input slice as continuous values (intensities, probabilities), and any label
decision is taken afterwards on the input grid.

`SliceFitter` is the previous fit by matrix size (pad, or area-shrink the longer side to S); it stays for the tests
that compare against it and for cards that ask for it explicitly (`geometry.in_plane_spacing_mm: null`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

# A pixel counts as content when some channel lies this far (model units, range 2) above its background fill.
CONTENT_TOLERANCE = 0.02
BLENDS = ("gaussian", "constant")


@dataclass(frozen=True)
class ModelGrid:
    """Where a model's slices live: `size` x `size` pixels of `spacing_mm` (None: see the module docstring)."""

    size: int | None  # None: the model takes slices as they are (no resampling, no windows)
    spacing_mm: float | None  # None: the legacy fit by matrix size (SliceFitter)
    overlap: float = 0.5  # of a window, between neighbouring windows when a slice needs several
    blend: str = "gaussian"

    def __post_init__(self):
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"window overlap must be in [0, 1), got {self.overlap}")
        if self.blend not in BLENDS:
            raise ValueError(f"blend must be one of {BLENDS}, got {self.blend!r}")


def resampled_shape(height: int, width: int, row_mm: float, column_mm: float, spacing_mm: float) -> tuple[int, int]:
    """The matrix that covers the same physical extent at `spacing_mm`."""
    return max(1, round(height * row_mm / spacing_mm)), max(1, round(width * column_mm / spacing_mm))


def resample_slices(slices: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, *shape), bilinear on pixel areas; anti-aliased where it shrinks."""
    if tuple(slices.shape[-2:]) == tuple(shape):
        return slices
    shrinks = shape[0] < slices.shape[-2] or shape[1] < slices.shape[-1]
    return F.interpolate(slices, size=shape, mode="bilinear", align_corners=False, antialias=shrinks)


def window_starts(length: int, size: int, overlap: float) -> list[int]:
    """Window starts covering [0, length) as MONAI's dense_patch_slices places them (last one flush with the end)."""
    if length <= size:
        return [0]
    interval = max(1, int(size * (1.0 - overlap)))
    count = next(d for d in range(math.ceil(length / interval) + 1) if d * interval + size >= length) + 1
    return [min(d * interval, length - size) for d in range(count)]


def importance_map(size: int, blend: str, sigma_scale: float = 0.125) -> torch.Tensor:
    """(size, size) blending weights: constant, or a Gaussian centred on the window with sigma = sigma_scale * size
    (MONAI's `compute_importance_map`), floored at 1e-3 so that no pixel of a window weighs nothing."""
    if blend == "constant":
        return torch.ones(size, size)
    offsets = torch.arange(size, dtype=torch.float32) - (size - 1) / 2.0
    profile = torch.exp(offsets ** 2 / (-2.0 * (size * sigma_scale) ** 2))
    weights = torch.outer(profile, profile)
    return weights.clamp_min(max(float(weights.min()), 1e-3))


def content_box(canvas: torch.Tensor, fills: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) bounds of the pixels of a (C, H, W) slice that differ from the fill; None if none."""
    content = (canvas > fills.view(-1, 1, 1) + CONTENT_TOLERANCE).any(0)
    rows, columns = content.any(1).nonzero(), content.any(0).nonzero()
    if rows.numel() == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(columns[0]), int(columns[-1]) + 1


def _axis_starts(low: int, high: int, length: int, size: int, overlap: float) -> list[int]:
    """Window starts along one axis of a canvas of `length` (>= size) covering the content [low, high)."""
    if high - low <= size:
        centred = (low + high) // 2 - size // 2
        return [min(max(centred, 0), length - size)]
    return [low + start for start in window_starts(high - low, size, overlap)]


@dataclass(frozen=True)
class SliceWindows:
    """How the slices of one volume (H x W pixels of row_mm x column_mm) meet a model grid, and back."""

    height: int
    width: int
    row_mm: float
    column_mm: float
    grid: ModelGrid

    @property
    def shape(self) -> tuple[int, int]:
        """The slice resampled to the model spacing."""
        return resampled_shape(self.height, self.width, self.row_mm, self.column_mm, self.grid.spacing_mm)

    @property
    def canvas_shape(self) -> tuple[int, int]:
        size = self.grid.size
        return max(self.shape[0], size), max(self.shape[1], size)

    def _padding(self) -> tuple[int, int, int, int]:
        (h, w), (ch, cw) = self.shape, self.canvas_shape
        top, left = (ch - h) // 2, (cw - w) // 2
        return left, cw - w - left, top, ch - h - top

    def canvas(self, slices: torch.Tensor, fills: Sequence[float]) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, canvas) at the model spacing, each channel padded with its own fill."""
        resampled = resample_slices(slices, self.shape)
        padded = F.pad(resampled, self._padding(), value=0.0)
        if padded.shape[-2:] == resampled.shape[-2:]:
            return padded
        left, _, top, _ = self._padding()
        inside = torch.zeros(padded.shape[-2:], dtype=torch.bool)
        inside[top:top + self.shape[0], left:left + self.shape[1]] = True
        background = torch.tensor(list(fills), dtype=padded.dtype).view(1, -1, 1, 1)
        return torch.where(inside, padded, background)

    def windows(self, canvas: torch.Tensor, fills: Sequence[float]) -> list[tuple[int, int]]:
        """(top, left) of the S x S windows for one (C, canvas) slice; [] when it holds nothing but background."""
        box = content_box(canvas, torch.tensor(list(fills), dtype=canvas.dtype))
        if box is None:
            return []
        size, (ch, cw) = self.grid.size, self.canvas_shape
        rows = _axis_starts(box[0], box[1], ch, size, self.grid.overlap)
        columns = _axis_starts(box[2], box[3], cw, size, self.grid.overlap)
        return [(top, left) for top in rows for left in columns]

    def centred_window(self, canvas: torch.Tensor, fills: Sequence[float]) -> tuple[int, int]:
        """(top, left) of one S x S window centred on a (C, canvas) slice's content (training crops)."""
        box = content_box(canvas, torch.tensor(list(fills), dtype=canvas.dtype))
        (ch, cw), size = self.canvas_shape, self.grid.size
        box = box or (0, ch, 0, cw)
        centre = ((box[0] + box[1]) // 2 - size // 2, (box[2] + box[3]) // 2 - size // 2)
        return min(max(centre[0], 0), ch - size), min(max(centre[1], 0), cw - size)

    def run(self, slices: torch.Tensor, fills: Sequence[float], model: Callable[[torch.Tensor, list[int]], torch.Tensor],
            out_channels: int, background: Sequence[float], batch_size: int) -> torch.Tensor:
        """(B, C, H, W) -> (B, out_channels, H, W): windows through `model(items, slice_numbers)` at most
        `batch_size` at a time, blended, back to the input slice; `background` where no window was needed."""
        canvas = self.canvas(slices, fills)
        size = self.grid.size
        placed = [(b, top, left) for b in range(canvas.shape[0]) for top, left in self.windows(canvas[b], fills)]
        weight = importance_map(size, self.grid.blend)
        total = torch.zeros((canvas.shape[0], out_channels, *canvas.shape[-2:]))
        weights = torch.zeros((canvas.shape[0], 1, *canvas.shape[-2:]))
        for first in range(0, len(placed), batch_size):
            chunk = placed[first:first + batch_size]
            items = torch.stack([canvas[b, :, top:top + size, left:left + size] for b, top, left in chunk])
            output = model(items, [b for b, _, _ in chunk]).float().cpu()
            if output.shape[1] != out_channels:
                raise RuntimeError(f"slice model returned {output.shape[1]} channels, expected {out_channels}")
            for (b, top, left), item in zip(chunk, output):
                total[b, :, top:top + size, left:left + size] += item * weight
                weights[b, :, top:top + size, left:left + size] += weight
        fallback = torch.tensor(list(background), dtype=total.dtype).view(1, -1, 1, 1)
        blended = torch.where(weights > 0, total / weights.clamp_min(1e-12), fallback)
        left, _, top, _ = self._padding()
        blended = blended[..., top:top + self.shape[0], left:left + self.shape[1]]
        return resample_slices(blended, (self.height, self.width))


@dataclass(frozen=True)
class SliceFitter:
    """The legacy fit by matrix size: (B, C, H, W) slices to (B, C, S, S) and the model's output back to (H, W).

    Slices that fit are padded; larger slices are resized so the longer side is S, keeping the aspect ratio, then
    padded. It ignores the pixel spacing, so anatomy reaches the model at a size that depends on the scanner's
    matrix: only for tests and cards that ask for it (see the module docstring).
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
