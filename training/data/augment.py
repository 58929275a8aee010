"""Acquisition randomization for training slices (the idea behind SynthSeg and nnU-Net's augmentation).

The phantoms come from one synthetic scanner; real scans differ in resolution, slice thickness, contrast phase,
reconstruction kernel, noise, field of view, coil shading and patient size and position. Every recipe augments its
training slices here, on (C, S, S) float tensors already at the model's pixel spacing (what the slice cache holds),
with one parameter dataclass per modality whose ranges are documented field by field:

- CT (`CTAcquisition`, channels [image windowed to [-1, 1], BTCV label map]): contrast phase and per-organ HU from
  the label map, tissue HU jitter, slice thickness (partial volume over neighbouring cached slices), body size and
  position, in-plane acquisition spacing, reconstruction kernel (sharpen/blur, correlated noise), truncated field of
  view (a reconstruction circle, or straight cuts through the body). The label map is only ever moved with
  nearest-neighbour sampling.
- MRI (`MRIAcquisition`, channels [sources..., targets...], each percentile-normalized to [-1, 1], background -1):
  per-channel contrast curve (gamma), smooth bias field, Rician noise, in-plane spacing, slice thickness, field of view
  (scale / shift / rotation / crop, identical for every channel) and a small rigid misalignment of the later source
  channels (T2) relative to the first (T1), with which the targets stay aligned. The scanner degradations reach the
  sources only (the model learns to produce clean targets) unless `degrade_targets`.

Randomness: every item draws from its own torch.Generator seeded by (augmentation seed, item, round), where round is
the epoch when the dataset is told it (`set_epoch`) and otherwise the number of times that item was fetched before in
this process group (a counter in shared memory that DataLoader workers see): the draws never depend on how many
workers load the data or which one loads an item. The counter restarts with the process, so a resumed run repeats
epoch 0's draws unless the trainer calls `dataset.set_epoch(epoch)` before each epoch (then it is exact).

Order on one item: CT: organ / tissue HU (each slice of the slab, from its own labels) -> slice thickness -> body
size and position -> in-plane spacing -> kernel (sharpen / blur, noise) -> field of view. MRI: slice thickness ->
contrast curve -> bias field -> field of view and T2 misalignment -> in-plane spacing -> Rician noise -> crop.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from MedDiffusionExtension.errors import InputError

# BTCV organ numbers (label map values) and their typical HU per contrast phase (adult abdomen, literature values
# rounded): non-contrast, late arterial (~35 s) and portal-venous (~70 s). Unknown label values are left alone.
ORGANS = ("spleen", "right_kidney", "left_kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta", "ivc",
          "portal_vein", "pancreas", "right_adrenal", "left_adrenal")
PHASES = ("non_contrast", "arterial", "portal_venous")
PHASE_HU = {
    #                spl   rk   lk   gb  eso  liv  sto   ao  ivc   pv  pan  rad  lad
    "non_contrast": (45, 32, 32, 10, 40, 58, 35, 42, 40, 40, 42, 28, 28),
    "arterial": (115, 160, 160, 10, 70, 75, 80, 280, 90, 150, 115, 70, 70),
    "portal_venous": (125, 170, 170, 10, 80, 110, 90, 165, 140, 175, 100, 65, 65),
}
SOFT_TISSUE_HU = 40.0  # the fixed point of the unlabelled-tissue contrast scale
_SATURATED = 1e-3  # window units: pixels this close to -1 / +1 lie outside the window (air, fat, bone) and stay there
_DRAWS = 64  # uniform numbers drawn per item (at least), in a fixed order: switching one operation off never shifts another
MAX_OPPOSITE_CUT = 0.6  # a field cut on two opposite sides keeps at least 40 % of its width between them


Range = tuple[float, float]


@dataclass(frozen=True)
class CTAcquisition:
    """CT acquisition ranges; every value is drawn uniformly in its range for each item."""

    spacing_mm: float = 1.6  # the model's in-plane pixel spacing (what the cached slices are at)
    slice_distance_mm: float = 2.5  # distance between neighbouring cached slices, when the case does not say
    window: Range = (-175.0, 250.0)  # HU mapped to [-1, 1] in the cache
    # contrast: with phase_probability the organs are brought to a phase's HU (PHASE_HU; enhancement = HU above the
    # non-contrast value, times a dose/timing factor), else they keep their own mean; then every organ moves by its own
    # offset within +-organ_jitter_hu. Unlabelled tissue inside the window: HU -> 40 + (HU - 40) * scale + offset.
    phase_probability: float = 0.8
    phases: tuple[str, ...] = PHASES
    enhancement: Range = (0.7, 1.3)
    organ_jitter_hu: float = 20.0
    tissue_scale: Range = (0.9, 1.1)
    tissue_offset_hu: float = 20.0  # +-
    # slice thickness: a box profile over the neighbouring cached slices (partial volume); thinner than the cache's
    # slice distance leaves the slice as it is
    thickness_mm: Range = (0.6, 5.0)
    # body size and position (image bilinear, label nearest; outside the body: -1 / label 0)
    scale: Range = (0.8, 1.2)
    shift: float = 0.1  # +- fraction of the field of view, each axis
    rotation_deg: float = 10.0  # +-
    # in-plane acquisition spacing: coarser than spacing_mm is shrunk (anti-aliased) by the ratio and enlarged back,
    # as the engine resamples a coarse scan; finer changes nothing
    in_plane_mm: Range = (0.5, 3.5)
    # reconstruction kernel: x + a * (x - binomial_blur(x)) (a = -1: a soft kernel's blur, a > 0 sharpens), then
    # correlated noise of the given HU standard deviation and correlation length (pixels; <= 1: white) inside the window
    sharpen: Range = (-1.0, 1.5)
    noise_hu: Range = (0.0, 40.0)
    noise_correlation_px: Range = (0.5, 2.5)
    # truncated field of view: with fov_probability a reconstruction circle of this diameter, centred within
    # +-fov_offset of the field of view; outside it image -1 and label 0 (the scanner saw nothing there)
    fov_probability: float = 0.3
    fov_diameter_mm: Range = (250.0, 500.0)
    fov_offset: float = 0.1
    # a field cut by straight edges through the body, as a stored crop or a reconstruction targeted off the body's
    # centre (one kidney, the liver) leaves it: with cut_probability each side of the field is cut with probability
    # 1/2 (at least one side), by a fraction in cut_fraction of the field; outside it image -1 and label 0, as the
    # engine pads a small field with air. Off by default, so the recipes of earlier models draw what they drew.
    cut_probability: float = 0.0
    cut_fraction: Range = (0.1, 0.45)

    @classmethod
    def neutral(cls, **changes) -> "CTAcquisition":
        """Settings that change nothing (each range collapsed onto its identity), with `changes` on top."""
        return replace(cls(phase_probability=0.0, enhancement=(1.0, 1.0), organ_jitter_hu=0.0, tissue_scale=(1.0, 1.0),
                           tissue_offset_hu=0.0, thickness_mm=(0.0, 0.0), scale=(1.0, 1.0), shift=0.0, rotation_deg=0.0,
                           in_plane_mm=(0.0, 0.0), sharpen=(0.0, 0.0), noise_hu=(0.0, 0.0), fov_probability=0.0), **changes)


@dataclass(frozen=True)
class MRIAcquisition:
    """Brain MRI acquisition ranges; every value is drawn uniformly (gamma: log-uniformly) per item and channel."""

    spacing_mm: float = 1.875  # the model's in-plane pixel spacing
    slice_distance_mm: float = 1.0  # distance between neighbouring cached slices, when the case does not say
    n_sources: int = 2  # channels [0, n_sources) are the inputs (t1n, t2w), the rest the targets (t1c, t2f)
    degrade_targets: bool = False  # scanner effects on the targets too (geometry always reaches every channel)
    # contrast curve per channel on [0, 1]: u -> u ** gamma (a cheap proxy for TR / TE / TI differences)
    gamma: Range = (0.6, 1.7)
    # multiplicative bias field per channel: exp of a random polynomial of degree <= bias_order over the slice,
    # zero-mean over the foreground, peak |log field| drawn in [0, bias_strength]
    bias_strength: float = 0.3
    bias_order: int = 3
    # Rician noise per channel: |u + n1 + i n2|, n ~ N(0, sigma), sigma a fraction of the 99.5th percentile
    noise: Range = (0.0, 0.05)
    in_plane_mm: Range = (0.5, 3.0)  # per channel, as CTAcquisition.in_plane_mm
    thickness_mm: Range = (1.0, 6.0)  # per channel, partial volume over neighbouring cached slices
    # field of view, identical for every channel
    scale: Range = (0.85, 1.15)
    shift: float = 0.08  # +- fraction of the field of view
    rotation_deg: float = 8.0  # +-
    crop_probability: float = 0.2  # cut each border of the field of view by up to crop_fraction of it
    crop_fraction: float = 0.15
    # rigid misalignment of source channels 1.. (T2) relative to channel 0 (T1): +-misalign_mm each axis, +-misalign_deg
    misalign_mm: float = 2.0
    misalign_deg: float = 2.0

    @classmethod
    def neutral(cls, **changes) -> "MRIAcquisition":
        """Settings that change nothing, with `changes` on top."""
        return replace(cls(gamma=(1.0, 1.0), bias_strength=0.0, noise=(0.0, 0.0), in_plane_mm=(0.0, 0.0),
                           thickness_mm=(0.0, 0.0), scale=(1.0, 1.0), shift=0.0, rotation_deg=0.0, crop_probability=0.0,
                           misalign_mm=0.0, misalign_deg=0.0), **changes)


# ---- draws ------------------------------------------------------------------------------------------------------


def _mix(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64 steps), different for every (seed, item, round)."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (int(part) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        value ^= value >> 31
        value = value * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        value ^= value >> 29
    return value & (2**63 - 1)


def item_generator(seed: int, item: int, round_: int = 0) -> torch.Generator:
    """The generator one item draws its augmentation from (independent of worker count and batch composition)."""
    return torch.Generator().manual_seed(_mix(seed, item, round_))


class _Uniforms:
    def __init__(self, generator: torch.Generator, count: int = _DRAWS):
        self.values = torch.rand(max(count, _DRAWS), generator=generator, dtype=torch.float64).tolist()
        self.next = 0

    def __call__(self, low: float = 0.0, high: float = 1.0) -> float:
        value = self.values[self.next]
        self.next += 1
        return low + (high - low) * value

    def symmetric(self, bound: float) -> float:
        return self(-bound, bound)

    def log(self, low: float, high: float) -> float:
        return math.exp(self(math.log(low), math.log(high)))


@dataclass
class CTDraw:
    """One item's CT acquisition (what `CTAugment.draw` picked)."""

    phase: str | None  # None: the organs keep their own mean HU
    enhancement: float
    organ_offsets_hu: tuple[float, ...]
    tissue_scale: float
    tissue_offset_hu: float
    thickness_mm: float
    scale: float
    rotation_deg: float
    shift: tuple[float, float]  # (x, y) fractions of the field of view
    in_plane_mm: float
    sharpen: float
    noise_hu: float
    noise_correlation_px: float
    fov_diameter_mm: float | None  # None: the whole field of view
    fov_centre: tuple[float, float]  # (x, y) offsets, fractions of the field of view
    noise: torch.Tensor = field(repr=False)  # (m, m) standard normal, m = noise_grid(S, noise_correlation_px)
    cut: tuple[float, float, float, float] | None = None  # (left, right, top, bottom) fractions cut; None: no cut


@dataclass
class MRIDraw:
    """One item's MRI acquisition; per-channel values are lists over every channel (used for the degraded ones)."""

    gamma: list[float]
    bias_strength: list[float]
    bias_coefficients: list[list[float]]
    noise: list[float]
    in_plane_mm: list[float]
    thickness_mm: list[float]
    scale: float
    rotation_deg: float
    shift: tuple[float, float]
    crop: tuple[float, float, float, float] | None  # (left, right, top, bottom) fractions, None: no crop
    misalign_mm: tuple[float, float]
    misalign_deg: float
    noise_fields: torch.Tensor = field(repr=False)  # (degraded channels, S, S) standard normal


# ---- operations on single slices ----------------------------------------------------------------------------------


def thickness_weights(thickness_mm: float, distance_mm: float, radius: int) -> torch.Tensor:
    """(2 radius + 1,) weights of the cached slices at offsets -radius..radius for a box slice profile of the given
    thickness centred on the middle one, each cached slice standing for distance_mm of tissue (sums to 1)."""
    half = thickness_mm / 2.0
    weights = []
    for k in range(-radius, radius + 1):
        low, high = max(k * distance_mm - distance_mm / 2.0, -half), min(k * distance_mm + distance_mm / 2.0, half)
        weights.append(max(high - low, 0.0))
    total = sum(weights)
    if total <= 0.0:
        weights = [0.0] * radius + [1.0] + [0.0] * radius
        total = 1.0
    return torch.tensor(weights, dtype=torch.float32) / total


def slab_radius(max_thickness_mm: float, distance_mm: float, limit: int = 8) -> int:
    """Neighbours needed on each side for the thickest profile."""
    if distance_mm <= 0 or max_thickness_mm <= distance_mm:
        return 0
    return min(limit, math.ceil((max_thickness_mm / distance_mm - 1.0) / 2.0 - 1e-9))


def binomial_blur(x: torch.Tensor) -> torch.Tensor:
    """(..., H, W) filtered by the 3 x 3 binomial kernel [1, 2, 1]^2 / 16 (a Gaussian of ~0.7 px), edges replicated."""
    shape = x.shape
    padded = F.pad(x.reshape(-1, 1, *shape[-2:]), (1, 1, 1, 1), mode="replicate")[:, 0]
    rows = padded[:, :, :-2] + 2.0 * padded[:, :, 1:-1] + padded[:, :, 2:]
    return ((rows[:, :-2] + 2.0 * rows[:, 1:-1] + rows[:, 2:]) / 16.0).reshape(shape)


def noise_grid(size: int, correlation_px: float) -> int:
    """Side of the grid correlated noise is drawn on: correlation_px times coarser than the slice (at least 1 px)."""
    return size if correlation_px <= 1.0 else max(2, round(size / correlation_px))


def correlated_noise(coarse: torch.Tensor, size: int) -> torch.Tensor:
    """Standard normal noise drawn on a coarse (m, m) grid, enlarged bilinearly to (size, size) and rescaled to unit
    standard deviation: Gaussian-like correlation over size / m pixels (white when m == size)."""
    if coarse.shape[-1] == size:
        return coarse
    noise = F.interpolate(coarse[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    return noise / noise.std().clamp_min(1e-6)


def simulate_in_plane(x: torch.Tensor, acquired_mm: float, model_mm: float) -> torch.Tensor:
    """(..., S, S) acquired at acquired_mm and resampled to model_mm: shrink (anti-aliased) and enlarge back,
    bilinear as the engine resamples; unchanged when the acquisition is at least as fine as the model."""
    size = x.shape[-2:]
    small = (max(2, round(size[0] * model_mm / acquired_mm)), max(2, round(size[1] * model_mm / acquired_mm))) \
        if acquired_mm > 0 else tuple(size)
    if small[0] >= size[0] and small[1] >= size[1]:
        return x
    flat = x.reshape(-1, 1, *size) + 1.0  # in the (x + 1) domain: background (-1) stays exactly -1
    flat = F.interpolate(flat, size=small, mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(flat, size=tuple(size), mode="bilinear", align_corners=False).reshape(x.shape) - 1.0


Affine = tuple[float, float, float, float, float, float]  # (a, b, c, d, e, f): x' = a x + b y + c, y' = d x + e y + f
IDENTITY: Affine = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def similarity(scale: float = 1.0, rotation_deg: float = 0.0, shift: tuple[float, float] = (0.0, 0.0)) -> Affine:
    """Forward transform in normalized coordinates ([-1, 1] across the square field): p -> scale R p + shift."""
    angle = math.radians(rotation_deg)
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    return (c, -s, shift[0], s, c, shift[1])


def compose(outer: Affine, inner: Affine) -> Affine:
    """outer after inner."""
    a, b, c, d, e, f = outer
    p, q, r, s, t, u = inner
    return (a * p + b * s, a * q + b * t, a * r + b * u + c, d * p + e * s, d * q + e * t, d * r + e * u + f)


def invert(m: Affine) -> Affine:
    a, b, c, d, e, f = m
    det = a * e - b * d
    ia, ib, id_, ie = e / det, -b / det, -d / det, a / det
    return (ia, ib, -(ia * c + ib * f), id_, ie, -(id_ * c + ie * f))


def _is_identity(m: Affine) -> bool:
    return all(abs(v - w) < 1e-9 for v, w in zip(m, IDENTITY))


_AXES: dict[int, torch.Tensor] = {}


def sampling_grid(forward: Affine, size: int) -> torch.Tensor:
    """(S, S, 2) grid_sample grid (align_corners=False) that moves an image by `forward`."""
    if size not in _AXES:
        _AXES[size] = (torch.arange(size, dtype=torch.float32) * 2.0 + 1.0) / size - 1.0
    axis = _AXES[size]
    a, b, c, d, e, f = invert(forward)  # output -> input
    grid = torch.empty(size, size, 2)
    torch.add(axis[None, :] * a, axis[:, None] * b + c, out=grid[..., 0])
    torch.add(axis[None, :] * d, axis[:, None] * e + f, out=grid[..., 1])
    return grid


def warp(x: torch.Tensor, grids: torch.Tensor, fill: float, mode: str = "bilinear") -> torch.Tensor:
    """(C, S, S) resampled on (C, S, S, 2) grids (sampling_grid); outside the field: fill."""
    moved = F.grid_sample((x - fill).unsqueeze(1), grids, mode=mode, padding_mode="zeros", align_corners=False)
    return moved.squeeze(1) + fill


_BASES: dict[tuple[int, int], torch.Tensor] = {}


def _polynomial_basis(size: int, order: int) -> torch.Tensor:
    """(terms, S, S) monomials x^i y^j, 1 <= i + j <= order, over [-1, 1]^2."""
    key = (size, order)
    if key not in _BASES:
        axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2.0 - 1.0
        y, x = torch.meshgrid(axis, axis, indexing="ij")
        _BASES[key] = torch.stack([x ** i * y ** j for i in range(order + 1) for j in range(order + 1 - i) if i + j > 0])
    return _BASES[key]


def bias_field(coefficients: Sequence[float], strength: float, size: int, order: int,
               foreground: torch.Tensor | None = None) -> torch.Tensor:
    """exp(p) for a polynomial p with the given coefficients, zero-mean over the foreground, peak |p| = strength."""
    basis = _polynomial_basis(size, order)
    weights = torch.tensor(list(coefficients)[:basis.shape[0]], dtype=torch.float32)
    log_field = torch.matmul(weights, basis.view(basis.shape[0], -1)).view(size, size)
    if foreground is not None:
        area = float(foreground.sum())
        if area > 0:
            log_field = log_field - float((log_field * foreground).sum()) / area
    peak = float(log_field.abs().max())
    if peak < 1e-8 or strength <= 0.0:
        return torch.ones(size, size)
    return torch.exp(log_field * (strength / peak))


_CIRCLES: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


def _field_cut(fractions: list[float], most: float = MAX_OPPOSITE_CUT) -> tuple[float, float, float, float]:
    """(left, right, top, bottom) fractions, each opposite pair scaled down to leave at least 1 - `most` between."""
    for first, second in ((0, 1), (2, 3)):
        total = fractions[first] + fractions[second]
        if total > most:
            fractions[first], fractions[second] = fractions[first] * most / total, fractions[second] * most / total
    return tuple(fractions)


def _pixel_centres(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    if size not in _CIRCLES:
        axis = torch.arange(size, dtype=torch.float32) + 0.5
        _CIRCLES[size] = torch.meshgrid(axis, axis, indexing="ij")
    return _CIRCLES[size]


# ---- the augmenters -----------------------------------------------------------------------------------------------


class _Augment:
    params: Any

    def __init__(self, params, seed: int = 0):
        self.params = params
        self.seed = int(seed)

    def radius(self, slice_distance_mm: float | None = None) -> int:
        """Neighbouring slices needed on each side of an item (for the thickest simulated slice)."""
        distance = slice_distance_mm or self.params.slice_distance_mm
        return slab_radius(max(self.params.thickness_mm), distance)

    def generator(self, item: int, round_: int = 0) -> torch.Generator:
        return item_generator(self.seed, item, round_)

    def __call__(self, slab: torch.Tensor, generator: torch.Generator, slice_distance_mm: float | None = None) -> torch.Tensor:
        """slab: (2r + 1, C, S, S) cached slices centred on the item (or (C, S, S): r = 0) -> augmented (C, S, S)."""
        if slab.dim() == 3:
            slab = slab.unsqueeze(0)
        draw = self.draw(generator, slab.shape[1], slab.shape[-1])
        return self.apply(slab, draw, slice_distance_mm)

    def describe(self) -> dict[str, Any]:
        return {"kind": "acquisition", "seed": self.seed, **asdict(self.params)}

    def draw(self, generator: torch.Generator, channels: int, size: int):
        raise NotImplementedError

    def apply(self, slab: torch.Tensor, draw, slice_distance_mm: float | None = None) -> torch.Tensor:
        raise NotImplementedError


class CTAugment(_Augment):
    """Acquisition randomization of (image, label map) CT slices; see CTAcquisition for the ranges."""

    def __init__(self, params: CTAcquisition | None = None, seed: int = 0):
        super().__init__(params or CTAcquisition(), seed)
        self._phase_hu = {name: torch.tensor(values, dtype=torch.float32) for name, values in PHASE_HU.items()}

    def draw(self, generator: torch.Generator, channels: int = 2, size: int = 256) -> CTDraw:
        p, u = self.params, _Uniforms(generator)
        phase_roll, phase_pick = u(), u()
        phase = p.phases[min(int(phase_pick * len(p.phases)), len(p.phases) - 1)] \
            if p.phases and phase_roll < p.phase_probability else None
        enhancement = u(*p.enhancement)
        offsets = tuple(u.symmetric(p.organ_jitter_hu) for _ in ORGANS)
        tissue_scale, tissue_offset = u(*p.tissue_scale), u.symmetric(p.tissue_offset_hu)
        thickness = u(*p.thickness_mm)
        scale, rotation = u(*p.scale), u.symmetric(p.rotation_deg)
        shift = (u.symmetric(p.shift), u.symmetric(p.shift))
        in_plane, sharpen = u(*p.in_plane_mm), u(*p.sharpen)
        noise_hu, correlation = u(*p.noise_hu), u(*p.noise_correlation_px)
        fov_roll, diameter = u(), u(*p.fov_diameter_mm)
        centre = (u.symmetric(p.fov_offset), u.symmetric(p.fov_offset))
        # Drawn after every earlier draw: the cut changes none of them, on or off.
        cut_roll, forced_side = u(), u()
        sides, fractions = [u() < 0.5 for _ in range(4)], [u(*p.cut_fraction) for _ in range(4)]
        cut = None
        if cut_roll < p.cut_probability:
            sides[min(int(forced_side * 4), 3)] = True  # at least one side
            cut = _field_cut([f if side else 0.0 for side, f in zip(sides, fractions)])
        noise = torch.randn(noise_grid(size, correlation), noise_grid(size, correlation), generator=generator)
        return CTDraw(phase, enhancement, offsets, tissue_scale, tissue_offset, thickness, scale, rotation, shift, in_plane,
                      sharpen, noise_hu, correlation, diameter if fov_roll < p.fov_probability else None, centre, noise,
                      cut)

    def apply(self, slab: torch.Tensor, draw: CTDraw, slice_distance_mm: float | None = None) -> torch.Tensor:
        p = self.params
        low, high = p.window
        per_unit = 2.0 / (high - low)  # window units per HU
        radius = slab.shape[0] // 2
        weights = thickness_weights(draw.thickness_mm, slice_distance_mm or p.slice_distance_mm, radius)
        used = torch.nonzero(weights).flatten()
        images = self.intensities(slab[used, 0], slab[used, 1], draw)
        if len(used) == 1:
            image = images[0]
        else:  # in the (x + 1) domain: air stays exactly -1
            image = torch.matmul(weights[used], (images + 1.0).reshape(len(used), -1)).view(images.shape[1:]) - 1.0
        label = slab[radius, 1].clone()

        forward = similarity(draw.scale, draw.rotation_deg, (2 * draw.shift[0], 2 * draw.shift[1]))
        if not _is_identity(forward):
            grid = sampling_grid(forward, image.shape[-1])[None]
            image = warp(image[None], grid, -1.0)[0]
            label = warp(label[None], grid, 0.0, mode="nearest")[0]
        image = simulate_in_plane(image, draw.in_plane_mm, p.spacing_mm)
        inside = image.abs() < 1.0 - _SATURATED
        if abs(draw.sharpen) > 1e-3:
            image = image + draw.sharpen * (image - binomial_blur(image))
        if draw.noise_hu > 0.0:
            noise = correlated_noise(draw.noise, image.shape[-1]) * (draw.noise_hu * per_unit)
            image = torch.where(inside, image + noise, image)
        if draw.fov_diameter_mm is not None:
            size = image.shape[-1]
            rows, columns = _pixel_centres(size)
            cy, cx = size * (0.5 + draw.fov_centre[1]), size * (0.5 + draw.fov_centre[0])
            radius_px = draw.fov_diameter_mm / 2.0 / p.spacing_mm
            outside = (rows - cy) ** 2 + (columns - cx) ** 2 > radius_px ** 2
            image = image.masked_fill(outside, -1.0)
            label = label.masked_fill(outside, 0.0)
        if draw.cut is not None:
            size = image.shape[-1]
            rows, columns = _pixel_centres(size)
            left, right, top, bottom = (fraction * size for fraction in draw.cut)
            outside = (columns < left) | (columns > size - right) | (rows < top) | (rows > size - bottom)
            image = image.masked_fill(outside, -1.0)
            label = label.masked_fill(outside, 0.0)
        return torch.stack([image.clamp(-1.0, 1.0), label])

    def intensities(self, images: torch.Tensor, labels: torch.Tensor, draw: CTDraw) -> torch.Tensor:
        """(K, S, S) images and label maps -> images with the contrast phase and per-organ HU offsets inside the labels
        and the contrast jitter of the unlabelled tissue; pixels outside the window (air, fat below it, bone above it)
        keep their value, and so do labels this table does not know."""
        p = self.params
        low, high = p.window
        half_width = (high - low) / 2.0
        n = len(ORGANS)
        bins = n + 2  # 0: unlabelled, 1..13: organs, 14: labels this table does not know
        flat = images.reshape(-1)
        # pixels outside the window go to bins of their own [bins, 2 bins), which change nothing
        key = labels.reshape(-1).clamp(0, n + 1).to(torch.uint8)
        key += (flat.abs() >= 1.0 - _SATURATED).to(torch.uint8) * bins
        key = key.long()
        counts = torch.bincount(key, minlength=2 * bins)[1:n + 1].float()
        sums = torch.zeros(2 * bins).scatter_add_(0, key, flat)[1:n + 1]
        mean_hu = (sums / counts.clamp_min(1.0) + 1.0) * half_width + low
        if draw.phase is None:
            target = mean_hu
        else:
            native = self._phase_hu["non_contrast"]
            target = native + (self._phase_hu[draw.phase] - native) * draw.enhancement
        shift = (target + torch.tensor(draw.organ_offsets_hu, dtype=torch.float32) - mean_hu) / half_width
        # x -> gain[bin] * x + offset[bin]; unlabelled tissue: HU -> 40 + (HU - 40) * scale + offset, in window units
        gain, offset = torch.ones(2 * bins), torch.zeros(2 * bins)
        offset[1:n + 1] = torch.where(counts > 0, shift, torch.zeros_like(shift))
        scale = draw.tissue_scale
        gain[0] = scale
        offset[0] = scale - 1.0 + ((1.0 - scale) * (SOFT_TISSUE_HU - low) + draw.tissue_offset_hu) / half_width
        changed = flat * gain.index_select(0, key) + offset.index_select(0, key)
        return changed.clamp_(-1.0, 1.0).view(images.shape)


class MRIAugment(_Augment):
    """Acquisition randomization of (sources..., targets...) MRI slices; see MRIAcquisition for the ranges."""

    def __init__(self, params: MRIAcquisition | None = None, seed: int = 0):
        super().__init__(params or MRIAcquisition(), seed)

    def _degraded(self, channels: int) -> list[int]:
        return list(range(channels if self.params.degrade_targets else min(self.params.n_sources, channels)))

    def draw(self, generator: torch.Generator, channels: int = 4, size: int = 128) -> MRIDraw:
        p = self.params
        terms = (p.bias_order + 1) * (p.bias_order + 2) // 2 - 1
        u = _Uniforms(generator, channels * (5 + terms) + 12)
        gamma = [u.log(*p.gamma) for _ in range(channels)]
        strength = [u(0.0, p.bias_strength) for _ in range(channels)]
        coefficients = [[u(-1.0, 1.0) for _ in range(terms)] for _ in range(channels)]
        noise = [u(*p.noise) for _ in range(channels)]
        in_plane = [u(*p.in_plane_mm) for _ in range(channels)]
        thickness = [u(*p.thickness_mm) for _ in range(channels)]
        scale, rotation = u(*p.scale), u.symmetric(p.rotation_deg)
        shift = (u.symmetric(p.shift), u.symmetric(p.shift))
        crop_roll = u()
        crop = tuple(u(0.0, p.crop_fraction) for _ in range(4))
        misalign = (u.symmetric(p.misalign_mm), u.symmetric(p.misalign_mm))
        misalign_deg = u.symmetric(p.misalign_deg)
        fields_ = torch.randn(len(self._degraded(channels)), size, size, generator=generator)
        return MRIDraw(gamma, strength, coefficients, noise, in_plane, thickness, scale, rotation, shift,
                       crop if crop_roll < p.crop_probability else None, misalign, misalign_deg, fields_)

    def apply(self, slab: torch.Tensor, draw: MRIDraw, slice_distance_mm: float | None = None) -> torch.Tensor:
        p = self.params
        radius, channels, size = slab.shape[0] // 2, slab.shape[1], slab.shape[-1]
        distance = slice_distance_mm or p.slice_distance_mm
        degraded = self._degraded(channels)
        x = slab[radius].clone()
        if degraded and radius > 0:  # degraded channels are 0..D-1: one weighted sum over the slices any of them uses
            weights = torch.stack([thickness_weights(draw.thickness_mm[c], distance, radius) for c in degraded], dim=1)
            reach = max(abs(k - radius) for k in torch.nonzero(weights.sum(1)).flatten().tolist())
            if reach > 0:
                part = slab[radius - reach:radius + reach + 1, :len(degraded)]
                # in the (x + 1) domain, so that background stays exactly -1 whatever the rounding of the weights
                x[:len(degraded)] = ((part + 1.0) * weights[radius - reach:radius + reach + 1, :, None, None]).sum(0) - 1.0
        for c in degraded:
            if draw.gamma[c] == 1.0 and draw.bias_strength[c] <= 0.0:
                continue
            u = ((x[c] + 1.0) / 2.0).clamp(0.0, 1.0)
            if draw.gamma[c] != 1.0:
                u = u ** draw.gamma[c]
            if draw.bias_strength[c] > 0.0:
                foreground = (u > 0.0).float()
                u = (u * bias_field(draw.bias_coefficients[c], draw.bias_strength[c], size, p.bias_order, foreground))
            x[c] = u.clamp(0.0, 1.0) * 2.0 - 1.0

        # field of view for every channel; the later sources additionally misaligned (T2 relative to T1)
        common = similarity(draw.scale, draw.rotation_deg, (2 * draw.shift[0], 2 * draw.shift[1]))
        pixels = 2.0 / size / p.spacing_mm  # normalized units per mm
        misalign = similarity(1.0, draw.misalign_deg, (draw.misalign_mm[0] * pixels, draw.misalign_mm[1] * pixels))
        transforms = {"common": common, "misaligned": compose(common, misalign)}
        kinds = ["misaligned" if 0 < c < p.n_sources else "common" for c in range(channels)]
        for kind, transform in transforms.items():
            group = [c for c in range(channels) if kinds[c] == kind]
            if group and not _is_identity(transform):
                grid = sampling_grid(transform, size)[None].expand(len(group), -1, -1, -1)
                if group == list(range(group[0], group[-1] + 1)):
                    x[group[0]:group[-1] + 1] = warp(x[group[0]:group[-1] + 1], grid, -1.0)
                else:
                    x[group] = warp(x[group], grid, -1.0)

        for position, c in enumerate(degraded):
            x[c] = simulate_in_plane(x[c], draw.in_plane_mm[c], p.spacing_mm)
            if draw.noise[c] > 0.0:
                u = (x[c] + 1.0) / 2.0
                # the imaginary part: the same white field mirrored, independent of the real part at every pixel
                real = draw.noise_fields[position] * draw.noise[c]
                noisy = torch.hypot(u + real, real.flip(0, 1))
                x[c] = torch.where(u > 1e-4, noisy.clamp(max=1.0) * 2.0 - 1.0, x[c])
        if draw.crop is not None:
            left, right, top, bottom = (round(f * size) for f in draw.crop)
            x[:, :, :left] = -1.0
            x[:, :, size - right:] = -1.0
            x[:, :top] = -1.0
            x[:, size - bottom:] = -1.0
        return x.clamp(-1.0, 1.0)


# ---- datasets ----------------------------------------------------------------------------------------------------


def axial_slice_distance(path: Path) -> float | None:
    """Distance between axial slices of a NIfTI volume from its header alone (None when it cannot be read)."""
    try:
        import nibabel as nib

        affine = nib.load(str(path)).affine[:3, :3]
    except Exception:  # noqa: BLE001 - any unreadable header: fall back to the augmentation's default
        return None
    columns = [affine[:, axis] for axis in range(3)]
    axial = max(range(3), key=lambda axis: abs(columns[axis][2]) / max(float((columns[axis] ** 2).sum()) ** 0.5, 1e-9))
    distance = float((columns[axial] ** 2).sum()) ** 0.5
    return distance if distance > 0 else None


class AugmentedItems:
    """The augmented items of a CachedSlices: which round each item is on, the slices around it, the augmentation.

    reference_paths: the reference volume of each cached case, in the cache's order (their headers give the slice
    distance); None uses the augmentation's default distance.
    """

    def __init__(self, augment: _Augment, length: int, reference_paths: Sequence[Path] | None = None):
        self.augment = augment
        self.visits = torch.zeros(max(length, 1), dtype=torch.int64).share_memory_()
        self.epoch = torch.full((1,), -1, dtype=torch.int64).share_memory_()
        self.reference_paths = list(reference_paths) if reference_paths is not None else None
        self._distances: dict[int, float | None] = {}

    def set_epoch(self, epoch: int) -> None:
        """From now on items draw from round `epoch` (shared with DataLoader workers already started)."""
        self.epoch[0] = int(epoch)

    def round(self, item: int) -> int:
        epoch = int(self.epoch[0])
        if epoch >= 0:
            return epoch
        visits = int(self.visits[item])
        self.visits[item] = visits + 1
        return visits

    def distance(self, number: int) -> float | None:
        if self.reference_paths is None or number >= len(self.reference_paths):
            return None
        if number not in self._distances:
            self._distances[number] = axial_slice_distance(self.reference_paths[number])
        return self._distances[number]

    def __call__(self, slices, item: int) -> torch.Tensor:
        generator = self.augment.generator(item, self.round(item))
        distance = self.distance(slices.index[item][0])
        return self.augment(slices.slab(item, self.augment.radius(distance)), generator, distance)


AUGMENTATIONS = ("acquisition", "none")


def build_augmentation(setting: Any, modality: str, **fixed) -> _Augment | None:
    """A recipe's `augment` option -> augmenter (None when off).

    setting: "acquisition" (or true): the default ranges; "none" / null / false: off; a dict: {"seed": int, and any
    CTAcquisition / MRIAcquisition field: value} on top of the defaults. fixed: fields the recipe sets (spacing).
    """
    if setting in (None, False, "none", "off"):
        return None
    options: dict[str, Any] = {}
    if isinstance(setting, dict):
        options = dict(setting)
        kind = options.pop("kind", "acquisition")
        if kind != "acquisition":
            raise InputError(f"augment kind must be 'acquisition', got {kind!r}")
    elif setting not in (True, "acquisition"):
        raise InputError(f"augment must be one of {', '.join(AUGMENTATIONS)} or a dict of ranges, got {setting!r}")
    if modality not in ("ct", "mri"):
        raise ValueError(f"modality must be ct or mri, got {modality!r}")
    params_class, augment_class = (CTAcquisition, CTAugment) if modality == "ct" else (MRIAcquisition, MRIAugment)
    seed = options.pop("seed", 0)
    known = {f.name for f in fields(params_class)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(f"augment has no option {', '.join(unknown)}; known: seed, {', '.join(sorted(known))}")
    values = {key: tuple(value) if isinstance(value, list) else value for key, value in {**fixed, **options}.items()}
    return augment_class(params_class(**values), seed)
