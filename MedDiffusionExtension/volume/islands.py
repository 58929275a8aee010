"""Labelled islands far from the abdominal organs: a slice model's labels in another region of a long scan.

A slice model labels each axial slice on its own. In the pelvis of an abdomen-pelvis CT, or the chest of a longer
one, it can take a full bladder or a muscle for an organ on the slices where they look like one. The abdominal
organs form one mass along the body axis: each of them overlaps the slices of the largest labelled region (the
liver with its neighbours) or lies close to them (on the references of the phantom and real test sets here every
region overlaps them; in the training phantoms the farthest lies 12 mm off). So a connected labelled region lying
wholly more than FAR_GAP_MM above or below that span of slices is background. What it can take away: an organ
labelled far from the largest region's slices, such as a kidney transplanted into the pelvis; the segment command
keeps such islands on request.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage

from .orientation import AxialReorientation
from .volume import Volume

FAR_GAP_MM = 40.0
_TOUCHING = np.ones((3, 3, 3), dtype=bool)  # regions that touch at an edge or a corner are one


def far_islands(labelled: np.ndarray, volume: Volume, gap_mm: float = FAR_GAP_MM) -> Optional[np.ndarray]:
    """Boolean array on `volume`'s grid ((k, j, i), as `labelled`): True on the labelled regions lying wholly more
    than gap_mm along the body axis from the largest one's span; None when there are none."""
    orientation = AxialReorientation.for_volume(volume)
    regions, count = ndimage.label(orientation.apply(np.asarray(labelled, dtype=bool)), structure=_TOUCHING)
    if count < 2:
        return None
    slice_mm = float(np.linalg.norm(orientation.axial_ijk_to_ras()[:3, 2]))
    sizes = np.bincount(regions.ravel())
    sizes[0] = 0
    spans = np.array([(box[0].start, box[0].stop - 1) for box in ndimage.find_objects(regions)])  # first, last slice
    first, last = spans[int(sizes.argmax()) - 1]
    # Slices between a region and the main span (negative when they overlap), in millimetres.
    gaps = np.maximum(spans[:, 0] - last, first - spans[:, 1]) * slice_mm
    far = np.concatenate([[False], gaps > gap_mm])
    if not far.any():
        return None
    return np.ascontiguousarray(orientation.invert(far[regions]))
