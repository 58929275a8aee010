"""Checks that an input looks like what a model was trained on; here: is a head MRI skull-stripped?

The skull-strip check looks for the layers of an unstripped head. Going inwards from the outer surface of the
foreground, a head shows bright scalp, then a shell of skull (and, on T1, CSF) that is nearly as dark as the
background, then brain; a skull-stripped brain shows brain tissue from the surface inwards. The check computes the
median intensity of thin shells at increasing depth below the surface (in millimetres, on a copy reduced to about
2 mm voxels) and finds the deepest dip: a shell darker than both some shell outside it and some shell inside it.
A volume is called not stripped only when that dip is both deep and dark (see the thresholds below); a volume
too small to hold a brain's depth is not judged. Numpy/scipy only; a few tenths of a second on a 1 mm head.

Measured (Testing/test_input_checks.py covers a subset): 52 skull-stripped phantoms (training.phantoms, every
contrast, with tumours, 1.5 to 2.5 mm) give dips <= 0.25, and a dip's shell at >= 0.86 of the tissue level (the
deepest, 0.25, is T2-bright oedema under white matter); 156 stripped MNI152 brains (T1- and T2-like, 1 to 4 mm
voxels, 6 mm slices, six croppings, three noise levels) dips <= 0.13; the same 156 as heads with CSF, skull, scalp
and neck (Testing/synthetic_heads.py) dips >= 0.27 at <= 0.62. Coarser data (8 mm slices of 4 mm pixels) can miss
a T2 head: the warning is for inputs that clearly show a skull, and its silence proves nothing.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage

from .volume import Volume

WORKING_SPACING_MM = 2.0
SHELL_WIDTH_MM = 2.0
SHELL_STEP_MM = 1.0
DEEPEST_SHELL_MM = 30.0  # shells start at 0, 1, ... mm below the surface, up to here
DEEPEST_DIP_MM = 20.0  # scalp plus skull are thinner than this
MIN_SHELL_VOXELS = 50
# Not skull-stripped: a shell at least MIN_DIP darker (in tissue medians) than shells on both sides of it, and itself
# at most MAX_DIP_LEVEL of the tissue median (skull is nearly as dark as the background).
MIN_DIP, MAX_DIP_LEVEL = 0.2, 0.75


class InputRequirementWarning(UserWarning):
    """An input does not look like what the model was trained on (e.g. not skull-stripped); the run goes on."""


@dataclass(frozen=True)
class SkullStripCheck:
    """What the check saw. stripped: False when the volume clearly shows a skull, True when it shows none, None
    when it cannot tell (too small or too thin to hold the layers of a head)."""

    stripped: Optional[bool]
    dip: float = 0.0  # how much darker than both sides the darkest shell is, in tissue medians
    dip_level: float = float("nan")  # that shell's median, in tissue medians
    dip_depth_mm: float = float("nan")  # its depth below the surface

    @property
    def clearly_not_stripped(self) -> bool:
        return self.stripped is False


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    below = np.cumsum(hist)
    above = below[-1] - below
    mass = np.cumsum(hist * centres)
    mean_below = mass / np.maximum(below, 1)
    mean_above = (mass[-1] - mass) / np.maximum(above, 1)
    between = below * above * (mean_below - mean_above) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def _reduced(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Block means over about WORKING_SPACING_MM: the array and its (k, j, i) spacing."""
    spacing = np.asarray(volume.spacing, dtype=np.float64)[::-1]
    steps = [max(1, int(round(WORKING_SPACING_MM / s))) for s in spacing]
    array = np.asarray(volume.array, dtype=np.float32)
    shape = [(n // f) * f for n, f in zip(array.shape, steps)]
    if min(shape) == 0:
        return array, spacing
    array = array[: shape[0], : shape[1], : shape[2]]
    array = array.reshape(shape[0] // steps[0], steps[0], shape[1] // steps[1], steps[1], shape[2] // steps[2],
                          steps[2]).mean(axis=(1, 3, 5))
    return array, spacing * steps


def _filled(mask: np.ndarray) -> np.ndarray:
    """Holes filled in 3D and in every slice along each axis: the dark skull between scalp and brain is a hole in
    each slice even where, in 3D, it reaches the edge of the field of view (at the neck)."""
    filled = mask.copy()
    for axis in (None, 0, 1, 2):
        structure = ndimage.generate_binary_structure(3, 1)
        if axis is not None:  # connected within slices across `axis` only
            structure = np.moveaxis(np.stack([np.zeros((3, 3), bool), structure[1], np.zeros((3, 3), bool)]), 0, axis)
        labels, _count = ndimage.label(~mask, structure)
        edges = [labels.take([0, -1], axis=a).ravel() for a in range(3) if a != axis]
        filled |= (labels > 0) & ~np.isin(labels, np.concatenate(edges))
    return filled


def _head(array: np.ndarray) -> tuple[np.ndarray, float]:
    """The region inside the outer surface of the foreground, and the Otsu threshold."""
    otsu = _otsu(array.ravel())
    low = float(np.percentile(array, 1))
    foreground = ndimage.gaussian_filter(array, 1.0) > low + 0.5 * (otsu - low)
    labels, count = ndimage.label(foreground)
    if count > 1:  # drop specks of noise; keep the scalp even where the skull separates it from the brain
        sizes = ndimage.sum(foreground, labels, range(1, count + 1))
        foreground = np.isin(labels, np.flatnonzero(sizes >= 0.05 * sizes.max()) + 1)
    padded = np.pad(foreground, 2, mode="edge")
    closed = ndimage.binary_closing(padded, iterations=2)[2:-2, 2:-2, 2:-2]
    return _filled(closed | foreground), otsu


def check_skull_stripped(volume: Volume) -> SkullStripCheck:
    """Whether a head MRI is skull-stripped (see the module docstring); never raises on a valid volume."""
    array, spacing = _reduced(volume)
    if array.size < 1000 or not np.isfinite(array).all() or array.max() <= array.min():
        return SkullStripCheck(None)
    high = float(np.percentile(array, 99.5))
    array = np.minimum(array, high)
    head, otsu = _head(array)
    # Depth below the head's surface; the edges of the field of view are not a surface (the volume is cropped there).
    depth = ndimage.distance_transform_edt(np.pad(head, 1, mode="edge"), sampling=spacing)[1:-1, 1:-1, 1:-1]
    bright = head & (array > otsu)
    if not bright.any() or depth.max() < DEEPEST_DIP_MM:
        return SkullStripCheck(None)  # too small or thin to hold scalp, skull and brain
    tissue = float(np.median(array[bright]))
    if tissue <= 0:
        return SkullStripCheck(None)
    near = head & (depth <= DEEPEST_SHELL_MM + SHELL_WIDTH_MM)
    values, depths = array[near], depth[near]
    starts = np.arange(0.0, DEEPEST_SHELL_MM, SHELL_STEP_MM)
    profile = np.full(starts.size, np.nan)
    for n, start in enumerate(starts):
        shell = values[(depths > start) & (depths <= start + SHELL_WIDTH_MM)]
        if shell.size >= MIN_SHELL_VOXELS:
            profile[n] = np.median(shell) / tissue
    best = SkullStripCheck(True)
    for n in range(1, starts.size - 1):
        if np.isnan(profile[n]) or starts[n] > DEEPEST_DIP_MM:
            continue
        outer, inner = profile[:n], profile[n + 1:]
        if np.isnan(outer).all() or np.isnan(inner).all():
            continue
        dip = min(np.nanmax(outer), np.nanmax(inner)) - profile[n]
        if dip > best.dip:
            best = SkullStripCheck(True, float(dip), float(profile[n]), float(starts[n] + SHELL_WIDTH_MM / 2))
    if np.isfinite(profile).sum() < 10:
        return SkullStripCheck(None, best.dip, best.dip_level, best.dip_depth_mm)
    if best.dip >= MIN_DIP and best.dip_level <= MAX_DIP_LEVEL:
        return SkullStripCheck(False, best.dip, best.dip_level, best.dip_depth_mm)
    return best


def warn_if_not_skull_stripped(volumes: dict[str, Volume], model: str, requirement: str) -> list[str]:
    """One InputRequirementWarning naming every input (name -> volume) that is clearly not skull-stripped, for a
    model that needs stripped inputs; returns those names."""
    unstripped = [name for name, volume in volumes.items() if check_skull_stripped(volume).clearly_not_stripped]
    if unstripped:
        names = " and ".join(unstripped)
        verb = "does" if len(unstripped) == 1 else "do"
        warnings.warn(InputRequirementWarning(
            f"{names} {verb} not look skull-stripped (a dark skull-like shell lies under the surface); model {model!r} "
            f"expects {requirement or 'skull-stripped inputs'}: strip the skull first (e.g. with HD-BET or "
            "SynthStrip), otherwise the synthesis is unreliable"), stacklevel=2)
    return unstripped
