"""Does a CT hold Hounsfield units? A model trained on HU windows sees nonsense in anything else.

The usual way to go wrong is a file that stores the scanner's raw CT numbers without the rescale intercept (air near
0, water near 1024; some converters drop the DICOM rescale, or a NIfTI loses scl_inter), where every voxel lands above
the model's window; less often an image already windowed or normalized (0-1, 0-255) or another modality loaded as CT.
A CT of any body region in HU shows air (below -500 HU: outside the body, lungs, bowel gas) or fat (-200 to -30 HU,
around every abdominal organ), so the check only judges volumes that show neither, and then names the likely cause:

- stored CT numbers: nothing below STORED_LOWEST (-50) and at least STORED_TISSUE_FRACTION of the voxels at
  850-1250, where fat and soft tissue land when 1024 is added (in HU that range is dense bone, a few percent of an
  abdomen at most); an MRI in scanner units can look the same, so the warning names both;
- otherwise: not recognisably Hounsfield units (e.g. a tight crop inside one organ, or a normalized image).

Values below PADDING_BELOW are left out first: scanners fill the corners outside the reconstruction circle with
padding (-2000 or -3024 in HU, -2000 among stored numbers), which is neither air nor a sign of the units.

The warning does not stop the run (the user may know better); its silence does not prove the units right. Numpy
only, on a strided copy of at most about a million voxels.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .checks import InputRequirementWarning
from .volume import Volume

PADDING_BELOW = -1100.0  # below air (-1000 HU): the fill outside the field of view, not anatomy
AIR_HU = -500.0
FAT_HU = (-200.0, -30.0)
STORED_OFFSET = 1024.0  # the usual rescale intercept is -1024
STORED_TISSUE = (850.0, 1250.0)  # fat to enhanced soft tissue (-174 to 226 HU) as stored numbers
STORED_LOWEST = -50.0  # stored numbers are not negative (air is near 0); a little noise is allowed
MIN_AIR_FRACTION = 0.001
MIN_FAT_FRACTION = 0.005
STORED_TISSUE_FRACTION = 0.10
MAX_CHECKED_VOXELS = 1_000_000


@dataclass(frozen=True)
class HounsfieldCheck:
    """What the check saw: verdict "hu" (air or fat present), "stored" (raw CT numbers, intercept missing) or
    "unknown" (neither air nor fat, not stored numbers either); fractions of the checked voxels."""

    verdict: str
    air: float
    fat: float
    stored_tissue: float
    low: float
    high: float


def _sample(array: np.ndarray) -> np.ndarray:
    stride = max(1, int(np.ceil((array.size / MAX_CHECKED_VOXELS) ** (1 / 3))))
    values = np.asarray(array[::stride, ::stride, ::stride], dtype=np.float32).ravel()
    return values[np.isfinite(values) & (values >= PADDING_BELOW)]


def check_hounsfield(volume: Volume) -> HounsfieldCheck:
    """Whether a CT volume looks like Hounsfield units (see the module docstring); never raises on a valid volume."""
    values = _sample(volume.array)
    if values.size == 0:
        return HounsfieldCheck("unknown", 0.0, 0.0, 0.0, float("nan"), float("nan"))
    air = float(np.mean(values <= AIR_HU))
    fat = float(np.mean((values >= FAT_HU[0]) & (values <= FAT_HU[1])))
    stored_tissue = float(np.mean((values >= STORED_TISSUE[0]) & (values <= STORED_TISSUE[1])))
    low, high = float(values.min()), float(values.max())
    if air >= MIN_AIR_FRACTION or fat >= MIN_FAT_FRACTION:
        verdict = "hu"
    elif low >= STORED_LOWEST and stored_tissue >= STORED_TISSUE_FRACTION:
        verdict = "stored"
    else:
        verdict = "unknown"
    return HounsfieldCheck(verdict, air, fat, stored_tissue, low, high)


def warn_if_not_hounsfield(volume: Volume, name: str, model: str) -> HounsfieldCheck:
    """One InputRequirementWarning when `volume` (called `name`) does not look like a CT in HU; returns the check."""
    check = check_hounsfield(volume)
    if check.verdict == "stored":
        warnings.warn(InputRequirementWarning(
            f"{name} does not look like Hounsfield units: nothing below {check.low:.0f} and much of it near "
            f"{STORED_OFFSET:.0f}, as stored CT numbers without the rescale intercept would be; model {model!r} "
            f"expects HU: subtract {STORED_OFFSET:.0f} (or restore the file's rescale intercept) and run again, or "
            "check that it is a CT at all; otherwise the segmentation is meaningless"), stacklevel=2)
    elif check.verdict == "unknown":
        warnings.warn(InputRequirementWarning(
            f"{name} does not look like a CT in Hounsfield units (values {check.low:.0f} to {check.high:.0f}, no air "
            f"below {AIR_HU:.0f} HU and no fat at {FAT_HU[0]:.0f} to {FAT_HU[1]:.0f} HU): model {model!r} expects "
            "HU; if this is another modality or a normalized image, the segmentation is meaningless"), stacklevel=2)
    return check
