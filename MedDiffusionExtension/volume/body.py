"""The patient's body on a CT: the only place abdominal organs can be.

A slice model sees one axial slice at a time and can label bright soft tissue anywhere on it: an arm lying beside
the trunk, a positioning pad, the table. The body here is the largest 3D connected region above BODY_HU (air, lung
and table foam lie below it) after each axial slice's enclosed holes are filled (lungs, bowel gas), so an arm or
the table, separated from the trunk by air, is outside it.

Arms often rest against the flanks (arms down, as in trauma or when the patient cannot raise them), and then the
arm and the trunk are one connected region. So the region is opened in-plane: eroded by LIMB_NECK_MM, which cuts
a skin contact between an arm and the trunk narrower than about twice that; in each slice the pieces left that are
much smaller than the largest (an arm's core, beside the trunk's) are dropped; what is kept is dilated back by the
same radius, inside the region. The trunk, wider than twice that radius everywhere, comes back whole; an arm
touching it keeps at most a sliver along the contact. Two pieces of similar size (both thighs below the pelvis) are
both kept.

It is computed on a strided copy at about WORKING_SPACING_MM in-plane (every slice kept), grown by one working pixel
in-plane so that it never cuts into the body, and expanded back by repetition: it reaches at most two working pixels
past the skin, where no abdominal organ lies.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage

from .orientation import AxialReorientation
from .volume import Volume

BODY_HU = -500.0
WORKING_SPACING_MM = 2.0
# The opening radius: a contact narrower than twice this is cut. The opening trims only where the body is
# narrower than twice it (a limb's contact, a skin fold, a pad against the back); an adult's or a child's trunk,
# where the abdominal organs lie, is much wider. An arm pressed flat along a longer contact is not separated.
LIMB_NECK_MM = 25.0
# In a slice, an opened piece under this share of the largest piece's area is a limb (an adult's upper arm is
# about a sixth of the abdomen's cross-section); a thigh beside the other thigh is not.
LIMB_AREA_SHARE = 0.3
# The opening runs on a copy strided to about this pixel size (a 25 mm disk needs no finer grid; 4x fewer pixels).
LIMB_WORKING_MM = 5.0
# A slice spacing no in-plane distance reaches, for distances measured within each slice.
_FAR_MM = 1e6
# Connected within each axial slice only (array[k] is a slice): holes are filled slice by slice.
_IN_SLICE = np.zeros((3, 3, 3), dtype=bool)
_IN_SLICE[1] = ndimage.generate_binary_structure(2, 1)


def body_mask(ct: Volume, threshold_hu: float = BODY_HU) -> Optional[np.ndarray]:
    """Boolean array on the CT's own grid (its (k, j, i) order): True inside the patient's body.

    None when no voxel is above the threshold (nothing looks like a body: the caller should not mask).
    """
    orientation = AxialReorientation.for_volume(ct)
    axial = orientation.apply(np.asarray(ct.array))
    pixel_mm = tuple(np.linalg.norm(orientation.axial_ijk_to_ras()[:3, :2], axis=0)[::-1])  # (j, i)
    steps = _steps(pixel_mm, WORKING_SPACING_MM)
    coarse = axial[:, :: steps[0], :: steps[1]] > threshold_hu
    if not coarse.any():
        return None
    filled = ndimage.binary_fill_holes(coarse, structure=_IN_SLICE)
    components, count = ndimage.label(filled)
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    sizes[0] = 0
    body = _without_limbs(components == int(sizes.argmax()), (pixel_mm[0] * steps[0], pixel_mm[1] * steps[1]))
    if steps != (1, 1):  # a skin pixel of the full grid may fall between the strided samples
        body = ndimage.binary_dilation(body, structure=_IN_SLICE)
    return np.ascontiguousarray(orientation.invert(_repeated(body, steps, axial.shape)))


def _steps(pixel_mm: tuple[float, float], working_mm: float) -> tuple[int, int]:
    """In-plane strides (j, i) that bring pixels of pixel_mm to about working_mm (never finer than they are)."""
    return tuple(max(1, int(working_mm / size)) for size in pixel_mm)


def _repeated(coarse: np.ndarray, steps: tuple[int, int], shape) -> np.ndarray:
    """A strided (k, j, i) mask expanded back onto the (k, j, i) `shape` it was strided from."""
    full = np.repeat(np.repeat(coarse, steps[0], axis=1), steps[1], axis=2)
    return full[:, : shape[1], : shape[2]]


def _without_limbs(body: np.ndarray, pixel_mm: tuple[float, float]) -> np.ndarray:
    """The (k, j, i) body region opened in-plane by LIMB_NECK_MM, each slice keeping only its large pieces.

    The opening runs on a copy strided to about LIMB_WORKING_MM (a 25 mm disk needs no finer grid). What it removes
    there (a limb) is removed from the full region, block by block; nothing else is, so the skin and every slice the
    opening leaves alone keep the region's own pixels."""
    steps = _steps(pixel_mm, LIMB_WORKING_MM)
    coarse = body[:, :: steps[0], :: steps[1]]
    removed = coarse & ~_opened(coarse, (pixel_mm[0] * steps[0], pixel_mm[1] * steps[1]))
    if not removed.any():
        return body
    return body & ~_repeated(removed, steps, body.shape)


def _opened(body: np.ndarray, pixel_mm: tuple[float, float]) -> np.ndarray:
    """The opening of _without_limbs on one grid (`body` itself when no piece is as wide as the disk)."""
    # Euclidean distances within each slice: across slices the spacing is made too large to ever be the nearest.
    in_plane = (_FAR_MM, *pixel_mm)
    core = ndimage.distance_transform_edt(body, sampling=in_plane) > LIMB_NECK_MM  # eroded by a disk
    pieces, count = ndimage.label(core, structure=_IN_SLICE)
    if count == 0:  # nothing as wide as the opening (a thin slab of tissue): nothing to tell apart
        return body
    areas = np.bincount(pieces.ravel(), minlength=count + 1)[1:]
    slice_of_piece = np.array([box[0].start for box in ndimage.find_objects(pieces)], dtype=np.intp)
    largest_in_slice = np.zeros(core.shape[0])
    np.maximum.at(largest_in_slice, slice_of_piece, areas)
    keep = np.concatenate([[False], areas >= LIMB_AREA_SHARE * largest_in_slice[slice_of_piece]])
    # Dilated back by the disk, inside the region.
    trunk = (ndimage.distance_transform_edt(~keep[pieces], sampling=in_plane) <= LIMB_NECK_MM) & body
    # The opening of a digital outline loses a pixel here and there on the skin: give it back.
    trunk = ndimage.binary_dilation(trunk, structure=_IN_SLICE) & body
    # A slice with no core at all (the body there is thinner than the opening) keeps its region as it was.
    thin = ~core.any(axis=(1, 2))
    trunk[thin] = body[thin]
    return trunk
