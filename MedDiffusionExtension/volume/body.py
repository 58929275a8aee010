"""The patient's body on a CT: the only place abdominal organs can be.

A slice model sees one axial slice at a time and can label bright soft tissue anywhere on it: an arm lying beside
the trunk, a positioning pad, the table. The body here is the largest 3D connected region above BODY_HU (air, lung
and table foam lie below it) after each axial slice's enclosed holes are filled (lungs, bowel gas), so an arm or
the table, separated from the trunk by air, is outside it. An arm that touches the trunk is part of it: the mask
then removes nothing there. It is computed on a strided copy at about WORKING_SPACING_MM in-plane (every slice
kept), grown by one working pixel in-plane so that it never cuts into the body, and expanded back by repetition: it
reaches at most two working pixels past the skin, where no abdominal organ lies.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage

from .orientation import AxialReorientation
from .volume import Volume

BODY_HU = -500.0
WORKING_SPACING_MM = 2.0
# Connected within each axial slice only (array[k] is a slice): holes are filled slice by slice.
_IN_SLICE = np.zeros((3, 3, 3), dtype=bool)
_IN_SLICE[1] = ndimage.generate_binary_structure(2, 1)


def body_mask(ct: Volume, threshold_hu: float = BODY_HU) -> Optional[np.ndarray]:
    """Boolean array on the CT's own grid (its (k, j, i) order): True inside the patient's body.

    None when no voxel is above the threshold (nothing looks like a body: the caller should not mask).
    """
    orientation = AxialReorientation.for_volume(ct)
    axial = orientation.apply(np.asarray(ct.array))
    spacing_i, spacing_j = np.linalg.norm(orientation.axial_ijk_to_ras()[:3, :2], axis=0)
    step_j = max(1, int(WORKING_SPACING_MM / spacing_j))
    step_i = max(1, int(WORKING_SPACING_MM / spacing_i))
    coarse = axial[:, ::step_j, ::step_i] > threshold_hu
    if not coarse.any():
        return None
    filled = ndimage.binary_fill_holes(coarse, structure=_IN_SLICE)
    components, count = ndimage.label(filled)
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    sizes[0] = 0
    body = components == int(sizes.argmax())
    if step_i > 1 or step_j > 1:  # a skin pixel of the full grid may fall between the strided samples
        body = ndimage.binary_dilation(body, structure=_IN_SLICE)
    full = np.repeat(np.repeat(body, step_j, axis=1), step_i, axis=2)[:, : axial.shape[1], : axial.shape[2]]
    return np.ascontiguousarray(orientation.invert(full))
