"""Rigid registration of a secondary input (e.g. T2) onto the reference input (T1) with SimpleITK.

Mattes mutual information (the two contrasts differ), a multi-resolution pyramid, an Euler (rotation + translation)
transform and regular-step gradient descent. The start is whichever is better of the scanner's own alignment (the
headers' patient coordinates, right for two series of one session) and the centres of mass matched by
CenteredTransformInitializer (MOMENTS, right when the headers disagree). The moving volume is then resampled onto
the reference grid (linear), so the engine sees two volumes on one grid. Nothing is written to disk; torch-free.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .volume import Volume

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
AXES = ("R", "A", "S")
# The coarsest pyramid level keeps at least this many voxels along every axis.
MIN_LEVEL_VOXELS = 12
MAX_SAMPLES = 40_000


class RegistrationWarning(UserWarning):
    """Says how a secondary input was moved onto the reference; `.transform` holds the numbers."""

    def __init__(self, message: str, transform: "RigidTransform"):
        super().__init__(message)
        self.transform = transform


@dataclass(frozen=True)
class RigidTransform:
    """The rigid motion that carries the moving volume onto the reference, in patient RAS millimetres.

    `matrix` maps a moving-image point to the matching reference point. `rotation_deg` are the angles about the R,
    A and S axes (applied in that order: matrix rotation = Rs @ Ra @ Rr); `translation_mm` is how far the content at
    the reference volume's centre moves, which does not depend on the centre the optimizer rotated about.
    """

    matrix: np.ndarray
    centre_ras: np.ndarray
    metric: float  # ITK's Mattes mutual-information metric at the end (negative; lower is a better match)
    moving: str = "moving"
    fixed: str = "reference"

    @property
    def rotation_deg(self) -> tuple[float, float, float]:
        return euler_angles_deg(self.matrix[:3, :3])

    @property
    def translation_mm(self) -> tuple[float, float, float]:
        moved = self.matrix[:3, :3] @ self.centre_ras + self.matrix[:3, 3]
        return tuple(float(v) for v in moved - self.centre_ras)

    def describe(self) -> str:
        def signed(values):  # rounded first, so that -0.04 reads +0.0
            return ", ".join(f"{a} {round(v, 1) + 0.0:+.1f}" for a, v in zip(AXES, values))

        rotation, shift = signed(self.rotation_deg), signed(self.translation_mm)
        return (f"registered {self.moving} to {self.fixed} (rigid): rotation {rotation} degrees; "
                f"translation {shift} mm")

    def as_dict(self) -> dict:
        return {"moving": self.moving, "fixed": self.fixed, "rotation_deg": list(self.rotation_deg),
                "translation_mm": list(self.translation_mm), "centre_ras_mm": self.centre_ras.tolist(),
                "matrix_ras": self.matrix.tolist(), "mattes_metric": self.metric}


def euler_angles_deg(rotation: np.ndarray) -> tuple[float, float, float]:
    """Angles (rx, ry, rz) in degrees with rotation = Rz @ Ry @ Rx."""
    ry = np.arcsin(np.clip(-rotation[2, 0], -1.0, 1.0))
    rx = np.arctan2(rotation[2, 1], rotation[2, 2])
    rz = np.arctan2(rotation[1, 0], rotation[0, 0])
    return tuple(float(np.degrees(a)) for a in (rx, ry, rz))


def to_sitk(volume: Volume) -> sitk.Image:
    """The volume as a float32 SimpleITK image in ITK's LPS physical space."""
    image = sitk.GetImageFromArray(np.asarray(volume.array, dtype=np.float32))
    lps = RAS_TO_LPS @ volume.ijk_to_ras
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (lps[:3, :3] / spacing).ravel()])
    image.SetOrigin([float(v) for v in lps[:3, 3]])
    return image


def _volume_centre_ras(volume: Volume) -> np.ndarray:
    centre_ijk = (np.array(volume.shape[::-1], dtype=np.float64) - 1.0) / 2.0
    return volume.ijk_to_ras[:3, :3] @ centre_ijk + volume.ijk_to_ras[:3, 3]


def _shrink_factors(image: sitk.Image) -> list[int]:
    smallest = min(image.GetSize())
    return [f for f in (4, 2) if smallest // f >= MIN_LEVEL_VOXELS] + [1]


def _itk_to_ras_matrix(transform: sitk.Euler3DTransform) -> np.ndarray:
    """ITK's transform maps reference (fixed) LPS points to moving LPS points; returns moving RAS -> reference RAS."""
    fixed_to_moving = np.eye(4)
    fixed_to_moving[:3, :3] = np.array(transform.GetMatrix()).reshape(3, 3)
    centre = np.array(transform.GetCenter())
    fixed_to_moving[:3, 3] = np.array(transform.GetTranslation()) + centre - fixed_to_moving[:3, :3] @ centre
    ras = RAS_TO_LPS @ fixed_to_moving @ RAS_TO_LPS  # RAS_TO_LPS is its own inverse
    return np.linalg.inv(ras)


def register_rigid(moving: Volume, fixed: Volume, moving_name: str = "moving", fixed_name: str = "reference",
                   progress: Optional[Callable[[float, str], None]] = None, cancel=None,
                   seed: int = 0) -> tuple[Volume, RigidTransform]:
    """`moving` rigidly registered to `fixed`: (moving resampled on fixed's grid, the transform found).

    Deterministic for a given seed (the metric samples a fixed random subset of voxels).
    """
    fixed_image, moving_image = to_sitk(fixed), to_sitk(moving)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    factors = _shrink_factors(fixed_image)
    voxels = int(np.prod(fixed_image.GetSize()))
    method.SetMetricSamplingStrategy(method.RANDOM)
    # About MAX_SAMPLES voxels per level (a quarter of them on small images): the cost stays flat on large volumes.
    method.SetMetricSamplingPercentagePerLevel([min(0.25, MAX_SAMPLES * f ** 3 / voxels) for f in factors], seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-3, numberOfIterations=200,
                                                    relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(factors)
    method.SetSmoothingSigmasPerLevel([f / 2.0 if f > 1 else 0.0 for f in factors])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()

    # Two starts: the headers as they are (rotation centre at the reference's centre of mass) and the centres of
    # mass matched; the one with the better (lower) metric wins.
    moments = sitk.CenteredTransformInitializer(fixed_image, moving_image, sitk.Euler3DTransform(),
                                                sitk.CenteredTransformInitializerFilter.MOMENTS)
    as_is = sitk.Euler3DTransform()
    as_is.SetCenter(sitk.Euler3DTransform(moments).GetCenter())
    scores = []
    for start in (as_is, moments):
        method.SetInitialTransform(start, inPlace=False)
        try:
            scores.append(method.MetricEvaluate(fixed_image, moving_image))
        except RuntimeError:  # e.g. too few overlapping samples from this start
            scores.append(np.inf)
    if not np.isfinite(min(scores)):
        raise InputError(f"{moving_name} and {fixed_name} do not overlap enough to be registered; check their headers")
    found = sitk.Euler3DTransform(as_is if scores[0] <= scores[1] else moments)
    method.SetInitialTransform(found, inPlace=True)  # optimized in place: `found` ends as the result

    def on_level():
        if cancel is not None and getattr(cancel, "cancelled", False):
            method.StopRegistration()
        if progress is not None:
            level = method.GetCurrentLevel()
            progress(0.0, f"registering {moving_name} to {fixed_name} (level {level + 1}/{len(factors)})")

    def on_iteration():
        if cancel is not None and getattr(cancel, "cancelled", False):
            method.StopRegistration()

    method.AddCommand(sitk.sitkMultiResolutionIterationEvent, on_level)
    method.AddCommand(sitk.sitkIterationEvent, on_iteration)
    try:
        method.Execute(fixed_image, moving_image)
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1][:160] if str(error).strip() else "failed"
        raise InputError(f"registering {moving_name} to {fixed_name} failed ({reason})") from None
    if cancel is not None:
        cancel.raise_if_cancelled()
    transform = RigidTransform(_itk_to_ras_matrix(found), _volume_centre_ras(fixed), float(method.GetMetricValue()),
                               moving_name, fixed_name)
    resampled = sitk.Resample(moving_image, fixed_image, found, sitk.sitkLinear, float(moving.array.min()), sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(resampled).astype(np.float32, copy=False)
    return Volume(array, fixed.ijk_to_ras.copy()), transform


def register_to_reference(moving: Volume, fixed: Volume, moving_name: str, fixed_name: str, progress=None,
                          cancel=None) -> Volume:
    """register_rigid, reporting the transform found as a RegistrationWarning (one line)."""
    registered, transform = register_rigid(moving, fixed, moving_name, fixed_name, progress, cancel)
    warnings.warn(RegistrationWarning(transform.describe(), transform), stacklevel=2)
    return registered
