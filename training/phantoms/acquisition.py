"""Acquisition profiles of the phantom datasets: how each case is scanned, drawn per case from its seed.

`python -m training phantoms {brats,btcv} --acquisition {fixed,train,shifted}`:

* ``fixed``: the single synthetic acquisition the generators had before profiles existed, reproduced bit for bit
  (the bundled sample data, the figures and the tests use it). It is the command line's default.
* ``train``: randomised scanners and protocols for training data (below).
* ``shifted``: a held-out distribution for testing robustness; its values lie mostly outside the ``train`` ranges
  while staying physically plausible. Write it with another dataset seed than the training set, e.g.
  ``phantoms btcv --out data/btcv_shifted --n 8 --seed 1000 --acquisition shifted``.

The same seed gives the same patient (anatomy, tumour, organ shapes) under every profile; the acquisition is drawn
from separate random streams, so switching profile changes how the patient is scanned, not who is scanned. Every
drawn value is recorded in the phantom's ``info["acquisition"]`` and in the dataset's ``acquisitions.json``.

Abdominal CT (BTCV layout). Intervals are uniform draws; "disjoint" marks values the shifted profile keeps
outside the train intervals.

| parameter                        | train                                   | shifted                                  |
|----------------------------------|-----------------------------------------|------------------------------------------|
| contrast phase                   | native 20 %, arterial 20 %, portal 60 % | late arterial, strong bolus (100 %)      |
| aorta HU                         | 35-50 / 250-350 / 150-200               | 380-480 (disjoint)                       |
| liver HU                         | 55-65 / 65-80 / 100-120                 | 25-45, steatotic (disjoint)              |
| spleen HU                        | 40-50 / 90-130 / 110-130                | 135-160 (disjoint)                       |
| renal cortex HU                  | 28-35 / 150-220 / 150-200               | 230-290 (disjoint)                       |
| pancreas HU                      | 35-50 / 100-140 / 85-110                | 145-170 (disjoint)                       |
| other tissues                    | per-phase ranges in CT_PHASE_HU         | CT_SHIFTED_HU                            |
| noise SD (HU, in the image)      | 6-25                                    | 35-60 (disjoint)                         |
| kernel PSF FWHM in-plane (mm)    | 0.9-1.6 (soft / standard)               | 0.45-0.75, sharp (disjoint)              |
| noise correlation SD (mm)        | 0.5-1.1 (blotchy)                       | 0.15-0.35, fine grain (disjoint)         |
| in-plane pixel (mm)              | FOV / 512: 0.60-0.98                    | 1.2-3.5 (disjoint), matrix = FOV / pixel |
| reconstruction FOV (mm)          | 1.02-1.25 x trunk span, within 330-500; | 0.82-0.95 x width with arms, <= 500      |
|                                  | 15 %: 0.80-0.95 x trunk width (>= 307)  |                                          |
| slice thickness = spacing (mm)   | 1.5-4.5                                 | 5.0-7.0 (disjoint)                       |
| z coverage (mm)                  | 200-260, at most 128 slices             | 200-260                                  |
| z coverage, abdomen-pelvis (mm)  | drawn top to 10-40 below the symphysis, at most 160 slices (thicker if needed) | same |
| table in view                    | 80 %                                    | 100 %                                    |
| arms beside the trunk            | 30 %                                    | 100 %                                    |
| patient off-centre x, y (mm)     | +-25, +-20                              | +-25, |y| 25-45 (disjoint in |y|)        |
| field centre z shift (mm)        | +-20                                    | +-20                                     |

Anatomy variation (both randomised profiles, same draws for the same seed): in-plane body scale 0.90-1.10;
subcutaneous fat changed by -8..+25 mm anterior, -6..+20 lateral, -5..+12 posterior (at least 5 mm left); liver
and kidneys x 0.90-1.10, spleen x 0.85-1.25, gallbladder x 0.80-1.20 (each about its own centre). Arms: upper-arm
radius 38-55 mm, fat 5-15 mm, 2-25 mm from the trunk, humerus radius 10-13 mm above the elbow (z -90..0 mm),
radius and ulna below it.

``info["truncated"]`` is measured, not drawn: the body (trunk or arms) reaches outside the reconstruction circle;
``info["arms_visible"]``: some of the arms lies inside it (arms in the scan may lie wholly outside a small FOV).
Noise SD is that of the written image whatever its grid; PSF and noise grain are in millimetres.

Brain MRI (BraTS layout; skull-stripped, all four sequences co-registered on one grid per case):

| parameter                  | train                                        | shifted                                      |
|----------------------------|----------------------------------------------|----------------------------------------------|
| field strength             | 3 T 60 %, 1.5 T 40 % (relaxation per field)  | 1.5 T                                        |
| t1n / t1c                  | MPRAGE TR 1800-2500, TI 800-1100, flip 7-12  | T1 spin echo TR 450-650, TE 8-15             |
| t2w                        | TSE TR 3500-7000, TE 80-120                  | TSE TR 2500-3400 (disjoint), TE 125-150      |
| t2f: FLAIR, TI x null-CSF  | TR 7000-11000, TE 85-140, TI x 0.985-1.015   | TR 5000-6500 (disjoint), TE 90-120, x 1.02-1.05 |
| SNR of parenchyma          | 12-40                                        | 8-14                                         |
| bias field: log SD         | 0.03-0.20                                    | 0.25-0.40 (disjoint)                         |
| bias field: wavelength (mm)| 200-320                                      | 120-180 (disjoint)                           |
| in-plane pixel (mm)        | 0.85-1.15                                    | 1.2-1.6 (disjoint)                           |
| slice thickness (mm)       | 0.9-2.5                                      | 3.0-5.0 (disjoint)                           |
| in-plane FOV (mm)          | 220-256                                      | 200-240                                      |
| z coverage (mm)            | 150-175                                      | 150-175                                      |
| scanner gain               | 300-3000                                     | 300-3000                                     |

Grids: with no --shape/--spacing a case is written on its drawn grid; a shape alone keeps the drawn field of view
on that many voxels; a CT spacing alone keeps the drawn field of view at that spacing; both force the grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .fields import SmoothField
from .geometry import Grid, lps_grid, parse_shape
from .mr_signal import FLAIR, MPRAGE, TISSUES_1_5T, TISSUES_3T, SpinEcho, Tissue, null_inversion_time

PROFILES = ("fixed", "train", "shifted")
_STREAM = {"train": 1, "shifted": 2}  # random streams [seed, 11, _STREAM[profile]] (acquisition)
_ANATOMY_STREAM = 12  # [seed, 12]: anatomy variation, shared by the randomised profiles

# --- CT ----------------------------------------------------------------------------------------------------------

CT_COMMON_HU = {
    "fat": (-115, -85), "renal_sinus": (-80, -50), "gallbladder": (0, 20), "fluid": (0, 20),
    "cancellous": (180, 300), "cortical": (750, 1100), "cartilage": (100, 200), "lung": (-900, -820),
    "gas": (-1010, -985), "canal": (10, 30), "stool": (-40, 0), "skin": (20, 50), "marrow": (-60, 20),
}
CT_PHASE_HU = {
    "native": {
        "muscle": (40, 55), "liver": (55, 65), "spleen": (40, 50), "kidney_cortex": (28, 35),
        "kidney_medulla": (25, 33), "wall": (35, 45), "aorta": (35, 50), "ivc": (35, 50), "portal": (35, 50),
        "pancreas": (35, 50), "adrenal": (25, 40), "esophagus": (35, 45), "heart": (35, 50)},
    "arterial": {
        "muscle": (45, 60), "liver": (65, 80), "spleen": (90, 130), "kidney_cortex": (150, 220),
        "kidney_medulla": (50, 90), "wall": (60, 100), "aorta": (250, 350), "ivc": (60, 110), "portal": (70, 120),
        "pancreas": (100, 140), "adrenal": (50, 80), "esophagus": (50, 80), "heart": (200, 300)},
    "portal_venous": {
        "muscle": (50, 65), "liver": (100, 120), "spleen": (110, 130), "kidney_cortex": (150, 200),
        "kidney_medulla": (110, 150), "wall": (70, 100), "aorta": (150, 200), "ivc": (110, 150),
        "portal": (160, 200), "pancreas": (85, 110), "adrenal": (50, 80), "esophagus": (60, 80),
        "heart": (130, 170)},
}
# Late arterial phase after a fast, concentrated bolus in a patient with a fatty liver.
CT_SHIFTED_HU = {
    "late_arterial": {
        "muscle": (45, 60), "liver": (25, 45), "spleen": (135, 160), "kidney_cortex": (230, 290),
        "kidney_medulla": (60, 100), "wall": (80, 110), "aorta": (380, 480), "ivc": (60, 110), "portal": (120, 150),
        "pancreas": (145, 170), "adrenal": (60, 90), "esophagus": (50, 80), "heart": (280, 380)},
}
CT_DISJOINT_TISSUES = ("aorta", "liver", "spleen", "kidney_cortex", "pancreas")
PHASE_ENHANCEMENT = {"native": 0.0, "arterial": 0.5, "portal_venous": 1.0, "late_arterial": 0.5}
# Heterogeneous (arciform) splenic enhancement in arterial phases: texture amplitude in HU.
PHASE_TEXTURE = {"arterial": {"spleen": 25.0}, "late_arterial": {"spleen": 30.0}}

CT_PROFILES = {
    "train": {
        "phases": {"native": 0.2, "arterial": 0.2, "portal_venous": 0.6}, "phase_hu": CT_PHASE_HU,
        "noise_hu": (6.0, 25.0), "psf_fwhm_mm": (0.9, 1.6), "noise_corr_mm": (0.5, 1.1),
        "matrix": 512, "fov_mm": (330.0, 500.0), "fov_margin": (1.02, 1.25), "tight_fov_p": 0.15,
        "tight_fov_fraction": (0.80, 0.95), "min_pixel_mm": 0.6, "thickness_mm": (1.5, 4.5),
        "coverage_mm": (200.0, 260.0), "max_slices": 128,
        "table_p": 0.8, "arms_p": 0.3, "shift_x_mm": (-25.0, 25.0), "shift_y_mm": (-20.0, 20.0),
        "shift_z_mm": (-20.0, 20.0),
    },
    "shifted": {
        "phases": {"late_arterial": 1.0}, "phase_hu": CT_SHIFTED_HU,
        "noise_hu": (35.0, 60.0), "psf_fwhm_mm": (0.45, 0.75), "noise_corr_mm": (0.15, 0.35),
        "pixel_mm": (1.2, 3.5), "fov_fraction_with_arms": (0.82, 0.95), "max_fov_mm": 500.0,
        "thickness_mm": (5.0, 7.0), "coverage_mm": (200.0, 260.0), "max_slices": 128,
        "table_p": 1.0, "arms_p": 1.0, "shift_x_mm": (-25.0, 25.0), "shift_abs_y_mm": (25.0, 45.0),
        "shift_z_mm": (-20.0, 20.0),
    },
}
CT_ANATOMY = {"body_scale": (0.90, 1.10), "fat_extra_mm": ((-8.0, 25.0), (-6.0, 20.0), (-5.0, 12.0)),
              "min_fat_mm": 5.0, "organ_scale": {"liver": (0.90, 1.10), "right_kidney": (0.90, 1.10),
                                                 "left_kidney": (0.90, 1.10), "spleen": (0.85, 1.25),
                                                 "gallbladder": (0.80, 1.20)}}
CT_ARMS = {"radius_mm": (38.0, 55.0), "fat_mm": (5.0, 15.0), "gap_mm": (2.0, 25.0), "y_mm": (-35.0, 5.0),
           "humerus_mm": (10.0, 13.0), "elbow_z_mm": (-90.0, 0.0)}


def _u(rng, interval) -> float:
    return float(rng.uniform(*interval))


def _pick(rng, weights: dict) -> str:
    names = list(weights)
    p = np.asarray([weights[n] for n in names], float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        from MedDiffusionExtension.errors import InputError
        raise InputError(f"unknown acquisition profile {profile!r}; use one of {', '.join(PROFILES)}")
    return profile


@dataclass(frozen=True)
class Arms:
    """Both arms down beside the trunk (patient millimetres; mirrored left and right)."""

    centre_x: float  # |R| of each arm's axis
    centre_y: float
    radius: float  # upper arm; the forearm is 0.82 of it
    fat: float
    humerus: float
    elbow_z: float

    @property
    def outer_x(self) -> float:
        return self.centre_x + self.radius


@dataclass(frozen=True)
class CTAnatomyVariation:
    body_scale: float
    fat_extra_mm: tuple[float, float, float]  # anterior, lateral, posterior
    organ_scale: dict


@dataclass(frozen=True)
class CTAcquisition:
    profile: str
    phase: str
    hu: dict  # tissue -> HU, as in AbdomenSubject.hu
    texture_hu: dict  # tissue -> texture amplitude overriding the default
    noise_hu: float  # noise SD in the written image
    psf_fwhm_mm: float
    noise_corr_mm: float
    fov_mm: float  # in-plane field of view = reconstruction circle diameter
    pixel_mm: float
    thickness_mm: float
    n_slices: int
    centre_ras: tuple[float, float, float]  # field centre in scanner coordinates
    shift_mm: tuple[float, float]  # patient origin's in-plane offset in the field
    table: bool
    arms: Arms | None
    anatomy: CTAnatomyVariation

    @property
    def matrix(self) -> int:
        return int(round(self.fov_mm / self.pixel_mm))

    def grid(self, shape=None, spacing=None) -> Grid:
        """The drawn grid; a shape alone keeps the drawn field of view, a spacing alone too, both force it."""
        fov = np.array([self.fov_mm, self.fov_mm, self.n_slices * self.thickness_mm])
        if shape is None and spacing is None:
            shape = (self.matrix, self.matrix, self.n_slices)
            spacing = (self.pixel_mm, self.pixel_mm, self.thickness_mm)
        elif spacing is None:
            shape = parse_shape(shape)
            spacing = fov / np.asarray(shape)
        elif shape is None:
            spacing = np.asarray(spacing, float)
            shape = tuple(max(int(round(f / s)), 4) for f, s in zip(fov, spacing))
        return lps_grid(shape, spacing, self.centre_ras)

    def patient_grid(self, grid: Grid) -> Grid:
        """The grid in the drawn patient's own millimetres (body scale and off-centring undone)."""
        s = self.anatomy.body_scale
        to_patient = np.array([[1 / s, 0, 0, -self.shift_mm[0] / s], [0, 1 / s, 0, -self.shift_mm[1] / s],
                               [0, 0, 1, 0], [0, 0, 0, 1]])
        return Grid(grid.shape, to_patient @ grid.ijk_to_ras)

    def info(self) -> dict:
        r = _rounded
        return {"profile": self.profile, "phase": self.phase, "enhancement": PHASE_ENHANCEMENT[self.phase],
                "hu": {k: r(v, 1) for k, v in self.hu.items()}, "noise_hu": r(self.noise_hu, 2),
                "psf_fwhm_mm": r(self.psf_fwhm_mm, 3), "noise_corr_mm": r(self.noise_corr_mm, 3),
                "fov_mm": r(self.fov_mm, 1), "pixel_mm": r(self.pixel_mm, 4), "matrix": self.matrix,
                "thickness_mm": r(self.thickness_mm, 2), "n_slices": self.n_slices,
                "centre_ras": [r(v, 2) for v in self.centre_ras], "shift_mm": [r(v, 2) for v in self.shift_mm],
                "table": self.table, "arms": self.arms is not None,
                "arms_detail": None if self.arms is None else {k: r(v, 2) for k, v in vars(self.arms).items()},
                "body_scale": r(self.anatomy.body_scale, 4),
                "fat_extra_mm": [r(v, 2) for v in self.anatomy.fat_extra_mm],
                "organ_scale": {k: r(v, 4) for k, v in self.anatomy.organ_scale.items()}}


def _rounded(value, digits):
    return round(float(value), digits)


def draw_ct_anatomy(seed: int) -> CTAnatomyVariation:
    rng = np.random.default_rng([seed, _ANATOMY_STREAM])
    scale = _u(rng, CT_ANATOMY["body_scale"])
    fat = tuple(_u(rng, interval) for interval in CT_ANATOMY["fat_extra_mm"])
    organs = {name: _u(rng, interval) for name, interval in CT_ANATOMY["organ_scale"].items()}
    return CTAnatomyVariation(scale, fat, organs)


def draw_ct_acquisition(seed: int, profile: str, trunk_half_width: float, field_centre_ras) -> CTAcquisition:
    """The case's acquisition under profile ('train' or 'shifted'); trunk_half_width: the patient's trunk half
    width in mm after the anatomy variation's fat but before its body scale (fields of view depend on it);
    field_centre_ras: the field centre before the drawn craniocaudal shift."""
    check_profile(profile)
    if profile == "fixed":
        raise ValueError("the fixed profile has no drawn acquisition")
    p = CT_PROFILES[profile]
    anatomy = draw_ct_anatomy(seed)
    rng = np.random.default_rng([seed, 11, _STREAM[profile]])
    phase = _pick(rng, p["phases"])
    ranges = {**CT_COMMON_HU, **p["phase_hu"][phase]}
    hu = {name: _u(rng, interval) for name, interval in ranges.items()}
    noise, psf, corr = _u(rng, p["noise_hu"]), _u(rng, p["psf_fwhm_mm"]), _u(rng, p["noise_corr_mm"])
    table = bool(rng.uniform() < p["table_p"])
    arms = None
    if rng.uniform() < p["arms_p"]:
        a = {k: _u(rng, v) for k, v in CT_ARMS.items()}
        arms = Arms(centre_x=trunk_half_width + a["gap_mm"] + a["radius_mm"], centre_y=a["y_mm"],
                    radius=a["radius_mm"], fat=a["fat_mm"], humerus=a["humerus_mm"], elbow_z=a["elbow_z_mm"])
    shift_x = _u(rng, p["shift_x_mm"])
    if "shift_abs_y_mm" in p:
        shift_y = _u(rng, p["shift_abs_y_mm"]) * (1.0 if rng.uniform() < 0.5 else -1.0)
    else:
        shift_y = _u(rng, p["shift_y_mm"])
    shift_z = _u(rng, p["shift_z_mm"])
    scale = anatomy.body_scale
    if "matrix" in p:
        # The FOV fits the trunk with a margin (its lateral extremes, as placed in the field, are the farthest
        # points from the centre), within the scanner's usual range; some cases get a tight one cutting the trunk.
        reach = np.hypot(trunk_half_width * scale + abs(shift_x), shift_y - float(field_centre_ras[1]))
        fov = float(np.clip(2.0 * reach * _u(rng, p["fov_margin"]), *p["fov_mm"]))
        tight = rng.uniform() < p["tight_fov_p"]
        fraction = _u(rng, p["tight_fov_fraction"])
        if tight:
            fov = float(np.clip(fraction * 2.0 * trunk_half_width * scale, p["matrix"] * p["min_pixel_mm"],
                                p["fov_mm"][1]))
        pixel = fov / p["matrix"]
    else:
        pixel = _u(rng, p["pixel_mm"])
        half_width = arms.outer_x if arms is not None else trunk_half_width
        fov = min(_u(rng, p["fov_fraction_with_arms"]) * 2.0 * half_width * scale, p["max_fov_mm"])
        fov = pixel * max(round(fov / pixel), 16)
    thickness = round(_u(rng, p["thickness_mm"]), 2)
    coverage = _u(rng, p["coverage_mm"])
    n_slices = int(min(max(round(coverage / thickness), 4), p["max_slices"]))
    centre = (float(field_centre_ras[0]), float(field_centre_ras[1]), float(field_centre_ras[2]) + shift_z)
    return CTAcquisition(profile, phase, hu, dict(PHASE_TEXTURE.get(phase, {})), noise, psf, corr, fov, pixel,
                         thickness, n_slices, centre, (shift_x, shift_y), table, arms, anatomy)


# Abdomen-pelvis scans (phantoms btcv --pelvis / --pelvis-share): the drawn field keeps its top and reaches down
# past the pubic symphysis; at most this many slices (thicker ones when the drawn thickness would need more, as
# abdomen-pelvis series are usually read at 3-5 mm).
CT_PELVIS = {"below_symphysis_mm": (10.0, 40.0), "max_slices": 160}


def reach_down_to_pelvis(acquisition: CTAcquisition, symphysis_bottom_z: float, seed: int) -> CTAcquisition:
    """The acquisition with its field extended down to below the symphysis (top kept, same in-plane grid)."""
    rng = np.random.default_rng([seed, 11, 31])
    top = acquisition.centre_ras[2] + 0.5 * acquisition.n_slices * acquisition.thickness_mm
    bottom = symphysis_bottom_z - _u(rng, CT_PELVIS["below_symphysis_mm"])
    coverage = top - bottom
    thickness = max(acquisition.thickness_mm, round(coverage / CT_PELVIS["max_slices"], 2))
    n_slices = int(np.ceil(coverage / thickness))
    centre = (acquisition.centre_ras[0], acquisition.centre_ras[1], top - 0.5 * n_slices * thickness)
    return replace(acquisition, thickness_mm=thickness, n_slices=n_slices, centre_ras=centre)


# --- MRI ---------------------------------------------------------------------------------------------------------

MR_PROFILES = {
    "train": {
        "field_t": {3.0: 0.6, 1.5: 0.4}, "t1": "mprage", "mprage_tr_ms": (1800.0, 2500.0),
        "mprage_ti_ms": (800.0, 1100.0), "mprage_flip_deg": (7.0, 12.0), "t2_tr_ms": (3500.0, 7000.0),
        "t2_te_ms": (80.0, 120.0), "flair_tr_ms": (7000.0, 11000.0), "flair_te_ms": (85.0, 140.0),
        "flair_ti_factor": (0.985, 1.015), "snr": (12.0, 40.0), "bias_strength": (0.03, 0.20),
        "bias_wavelength_mm": (200.0, 320.0), "pixel_mm": (0.85, 1.15), "thickness_mm": (0.9, 2.5),
        "fov_mm": (220.0, 256.0), "coverage_mm": (150.0, 175.0), "gain": (300.0, 3000.0),
    },
    "shifted": {
        "field_t": {1.5: 1.0}, "t1": "spin_echo", "t1_tr_ms": (450.0, 650.0), "t1_te_ms": (8.0, 15.0),
        "t2_tr_ms": (2500.0, 3400.0), "t2_te_ms": (125.0, 150.0), "flair_tr_ms": (5000.0, 6500.0),
        "flair_te_ms": (90.0, 120.0), "flair_ti_factor": (1.02, 1.05), "snr": (8.0, 14.0),
        "bias_strength": (0.25, 0.40), "bias_wavelength_mm": (120.0, 180.0), "pixel_mm": (1.2, 1.6),
        "thickness_mm": (3.0, 5.0), "fov_mm": (200.0, 240.0), "coverage_mm": (150.0, 175.0),
        "gain": (300.0, 3000.0),
    },
}
MR_DISJOINT = ("t2_tr_ms", "flair_tr_ms", "bias_strength", "bias_wavelength_mm", "pixel_mm", "thickness_mm")
MR_SEQUENCES = ("t1n", "t1c", "t2w", "t2f")
TISSUES_BY_FIELD = {1.5: TISSUES_1_5T, 3.0: TISSUES_3T}


@dataclass(frozen=True)
class MRAcquisition:
    profile: str
    field_t: float
    tissues: dict
    protocol: dict
    snr: dict
    gains: dict
    bias: dict
    bias_strength: dict
    bias_wavelength_mm: float
    pixel_mm: float
    thickness_mm: float
    fov_mm: float
    coverage_mm: float
    values: dict = field(default_factory=dict)  # every scalar drawn, for info and tests

    def grid(self, centre_ras, shape=None) -> Grid:
        """The drawn grid (square in-plane field of view); a shape keeps the drawn field of view."""
        fov = np.array([self.fov_mm, self.fov_mm, self.coverage_mm])
        if shape is None:
            spacing = np.array([self.pixel_mm, self.pixel_mm, self.thickness_mm])
            shape = tuple(max(int(round(f / s)), 4) for f, s in zip(fov, spacing))
            fov = np.asarray(shape) * spacing
        shape = parse_shape(shape)
        return lps_grid(shape, fov / np.asarray(shape), centre_ras)

    def info(self) -> dict:
        return {"profile": self.profile, "field_t": self.field_t,
                **{k: (round(float(v), 4) if isinstance(v, float) else v) for k, v in self.values.items()},
                "snr": {k: round(float(v), 2) for k, v in self.snr.items()},
                "bias_strength": {k: round(float(v), 4) for k, v in self.bias_strength.items()},
                "tissues": {k: [round(t.t1_ms, 1), round(t.t2_ms, 1), round(t.pd, 3)] for k, t in self.tissues.items()}}


def draw_mr_acquisition(seed: int, profile: str) -> MRAcquisition:
    check_profile(profile)
    if profile == "fixed":
        raise ValueError("the fixed profile has no drawn acquisition")
    p = MR_PROFILES[profile]
    rng = np.random.default_rng([seed, 11, _STREAM[profile]])
    field_t = float(_pick(rng, {str(k): v for k, v in p["field_t"].items()}))
    tissues = {name: Tissue(t.t1_ms * rng.uniform(0.95, 1.05), t.t2_ms * rng.uniform(0.95, 1.05),
                            t.pd * rng.uniform(0.97, 1.03)) for name, t in TISSUES_BY_FIELD[field_t].items()}
    values = {}

    def draw(key):
        values[key] = _u(rng, p[key])
        return values[key]

    if p["t1"] == "mprage":
        t1 = MPRAGE(tr_ms=draw("mprage_tr_ms"), ti_ms=draw("mprage_ti_ms"), flip_deg=draw("mprage_flip_deg"))
    else:
        t1 = SpinEcho(tr_ms=draw("t1_tr_ms"), te_ms=draw("t1_te_ms"))
    t2 = SpinEcho(tr_ms=draw("t2_tr_ms"), te_ms=draw("t2_te_ms"))
    flair_tr = draw("flair_tr_ms")
    flair = FLAIR(tr_ms=flair_tr, te_ms=draw("flair_te_ms"),
                  ti_ms=null_inversion_time(tissues["csf"].t1_ms, flair_tr) * draw("flair_ti_factor"))
    protocol = {"t1n": t1, "t1c": t1, "t2w": t2, "t2f": flair}
    snr = {name: _u(rng, p["snr"]) for name in MR_SEQUENCES}
    gains = {name: _u(rng, p["gain"]) for name in MR_SEQUENCES}
    wavelength = draw("bias_wavelength_mm")
    bias = {name: SmoothField(rng, wavelength, n_waves=4) for name in MR_SEQUENCES}
    strength = {name: _u(rng, p["bias_strength"]) for name in MR_SEQUENCES}
    pixel, thickness = draw("pixel_mm"), draw("thickness_mm")
    fov, coverage = draw("fov_mm"), draw("coverage_mm")
    return MRAcquisition(profile, field_t, tissues, protocol, snr, gains, bias, strength, wavelength, pixel,
                         thickness, fov, coverage, values)

