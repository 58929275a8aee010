"""Brain MRI phantoms: BraTS-like t1n, t1c, t2w, t2f and a label map, simulated from the MNI152 tissue maps.

A subject (everything random about a case but the scanner noise) is drawn from the seed first: head pose and size,
a smooth elastic warp, tissue relaxation, the glioma, the protocol, bias fields and gains. It is then rendered on
any grid: each voxel looks up its tissue fractions in the template through pose, warp and the tumour's mass
effect, the tumour replaces or infiltrates tissue, the signal equations turn fractions into intensities, and a
bias field and Rician noise finish the image. Background is 0 as in skull-stripped BraTS data.

Labels follow BraTS: 1 necrotic tumour core, 2 peritumoural oedema, 3 enhancing tumour.

With an acquisition profile other than `fixed` (acquisition.py) the scanner is drawn per case instead: field
strength and its relaxation times, sequence parameters, bias fields, noise, gains and the grid. The patient (pose,
warp, tumour) is the one the seed gives under every profile; only its height in the field follows the drawn
craniocaudal coverage, so the vertex stays a few millimetres below the top as in BraTS.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .fields import SmoothField, add_rician_noise, random_rotation
from .geometry import Grid, lps_grid, parse_shape
from .glioma import Glioma, draw_glioma, glioma_memberships, mass_effect_offset
from .mni_template import load_template, smoothed_maps
from .acquisition import MRAcquisition, check_profile, draw_mr_acquisition
from .mr_signal import GADOLINIUM_MM, TISSUES_3T, Tissue, random_protocol, with_gadolinium

SEQUENCES = ("t1n", "t1c", "t2w", "t2f")
LABELS = {"necrosis": 1, "edema": 2, "enhancing": 3}
BRATS_SHAPE = (240, 240, 155)
FOV_MM = np.array([240.0, 240.0, 155.0])
# BraTS volumes (SRI24 space) put voxel (0, 0, 0) at RAS (0, 239, 0) with 1 mm LPS-aligned voxels.
BRATS_CENTRE_RAS = np.array([-119.5, 119.5, 77.0])


def brats_grid(shape=None, spacing=None) -> Grid:
    """The BraTS field of view (240 x 240 x 155 mm) on shape voxels; spacing defaults to field of view / shape."""
    shape = parse_shape(shape if shape is not None else BRATS_SHAPE)
    spacing = FOV_MM / np.asarray(shape) if spacing is None else np.asarray(spacing, float)
    return lps_grid(shape, spacing, BRATS_CENTRE_RAS)


@dataclass(frozen=True)
class BrainSubject:
    """Everything random about one case except scanner noise; it does not depend on the grid it is shown on."""

    seed: int
    to_template: np.ndarray  # 3x3 taking patient millimetre offsets to template millimetre offsets
    anchor_patient: np.ndarray
    anchor_template: np.ndarray
    warp: tuple[SmoothField, SmoothField, SmoothField]
    warp_mm: float
    tissues: dict[str, Tissue]
    protocol: dict
    glioma: Glioma | None
    rim_gadolinium_mm: float
    gains: dict[str, float]
    snr: dict[str, float]
    bias: dict[str, SmoothField]
    bias_strength: dict[str, float]


@dataclass
class BrainPhantom:
    images: dict[str, np.ndarray]  # float32 (k, j, i), whole numbers in scanner units
    seg: np.ndarray  # uint8 (k, j, i), BraTS labels
    tissues: dict[str, np.ndarray]  # float32 (k, j, i) fractions: csf, gm, wm, edema, enhancing, necrosis
    brain_mask: np.ndarray  # bool (k, j, i)
    ijk_to_ras: np.ndarray
    info: dict


def draw_subject(seed: int, tumour: bool = True, fov_centre_ras=BRATS_CENTRE_RAS,
                 fov_top_mm: float = float(FOV_MM[2] / 2)) -> BrainSubject:
    """Draw everything random about a case except noise. fov_top_mm: height of the top of the field of view
    above its centre, used to leave a few millimetres above the vertex as BraTS volumes do."""
    rng = np.random.default_rng([seed, 0])
    template = load_template()
    scale = rng.uniform(0.88, 0.98) * rng.uniform(0.97, 1.03, 3)  # SRI24/BraTS brains are smaller than MNI152
    rotation = random_rotation(rng, (4.0, 4.0, 5.0))
    to_template = np.diag(1.0 / scale) @ rotation.T
    low, high = template.brain_box_ras
    anchor_template = (low + high) / 2.0
    half_height = scale[2] * (high[2] - low[2]) / 2.0
    anchor_patient = np.asarray(fov_centre_ras, float) + np.array([rng.uniform(-4, 4), rng.uniform(-4, 4), 0.0])
    anchor_patient[2] += fov_top_mm - rng.uniform(2.0, 7.0) - half_height
    warp = tuple(SmoothField(rng, 90.0, n_waves=6) for _ in range(3))
    warp_mm = rng.uniform(1.5, 3.5)

    tissues = {name: Tissue(t.t1_ms * rng.uniform(0.95, 1.05), t.t2_ms * rng.uniform(0.95, 1.05),
                            t.pd * rng.uniform(0.97, 1.03)) for name, t in TISSUES_3T.items()}
    protocol = random_protocol(rng, tissues["csf"].t1_ms)

    site = template.tumour_sites[rng.integers(len(template.tumour_sites))]
    centre = anchor_patient + np.linalg.solve(to_template, site[:3] - anchor_template)
    glioma = draw_glioma(rng, centre, site[3] * scale.mean())
    rim_gadolinium = GADOLINIUM_MM["enhancing"] * rng.uniform(0.9, 1.5)
    gains = {name: rng.uniform(600.0, 1800.0) for name in SEQUENCES}
    snr = {name: rng.uniform(18.0, 35.0) for name in SEQUENCES}  # of brain parenchyma (mean of GM and WM)
    bias = {name: SmoothField(rng, 260.0, n_waves=4) for name in SEQUENCES}
    bias_strength = {name: rng.uniform(0.04, 0.12) for name in SEQUENCES}
    return BrainSubject(seed, to_template, anchor_patient, anchor_template, warp, warp_mm, tissues, protocol,
                        glioma if tumour else None, rim_gadolinium, gains, snr, bias, bias_strength)


def _template_fractions(subject: BrainSubject, grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Brain, grey-matter and white-matter fractions of each voxel, looked up in the template."""
    template = load_template()
    x, y, z = grid.world_axes()
    coordinates = np.empty((3,) + grid.array_shape, dtype=np.float32)
    anchor = subject.anchor_patient
    for w in range(3):
        row = subject.to_template[w]
        component = (np.float32(row[0]) * (x - np.float32(anchor[0])) + np.float32(row[1]) * (
            y - np.float32(anchor[1]))) + np.float32(row[2]) * (z - np.float32(anchor[2]))
        component += np.float32(subject.anchor_template[w])
        component += np.float32(subject.warp_mm) * subject.warp[w](x, y, z)
        coordinates[w] = component
    if subject.glioma is not None:
        region = grid.region(*subject.glioma.mass_effect_bounds())
        if region is not None:
            offsets = mass_effect_offset(subject.glioma, *grid.world_axes(region))
            for w in range(3):
                coordinates[(w,) + region] += sum(np.float32(subject.to_template[w, c]) * offsets[c]
                                                  for c in range(3))
    voxel = template.voxel_size()
    for w in range(3):
        coordinates[w] -= np.float32(template.vox_to_ras[w, 3])
        coordinates[w] /= np.float32(voxel[w])

    # Low-pass the template by the output voxel size (in template voxels) before sampling, against aliasing.
    spacing_ras = np.abs(grid.ijk_to_ras[:3, :3]).max(axis=1)
    sigma = 0.4 * np.sqrt(np.maximum((spacing_ras / voxel) ** 2 - 1.0, 0.0))
    maps = smoothed_maps(tuple(float(s) for s in np.round(sigma, 2)))
    return tuple(ndimage.map_coordinates(m, coordinates, order=1, mode="constant", cval=0.0, output=np.float32,
                                         prefilter=False) for m in maps)


@dataclass
class _Lesion:
    region: tuple[slice, slice, slice]
    tissues: dict[str, np.ndarray]  # fractions of oedema, enhancing tumour and necrosis on the region
    gadolinium_mm: np.ndarray
    t2_scale: np.ndarray


def _insert_tumour(subject: BrainSubject, grid: Grid, brain, grey, white, csf, mask, seg) -> _Lesion | None:
    """Put the glioma into the tissue fractions (in place) and the label map; the core replaces all tissue,
    oedema replaces part of the parenchyma, CSF spaces are left to the core alone."""
    region = grid.region(*subject.glioma.bounds()) if subject.glioma is not None else None
    if region is None:
        return None
    x, y, z = grid.world_axes(region)
    edge_mm = 0.35 * float(np.mean(grid.spacing))
    member = glioma_memberships(subject.glioma, x, y, z, white[region], edge_mm)
    core, necrosis, edema = member["core"], member["necrosis"], member["edema"]
    parenchyma = grey[region] + white[region]
    rest = 1.0 - core
    hard_core = (core >= 0.5) & mask[region]
    hard_necrosis = hard_core & (necrosis >= 0.5)
    hard_edema = ~hard_core & (edema >= 0.5) & mask[region] & (parenchyma >= csf[region])
    seg[region] = np.select([hard_necrosis, hard_core, hard_edema],
                            [LABELS["necrosis"], LABELS["enhancing"], LABELS["edema"]], 0)
    tissues = {"necrosis": necrosis * brain[region], "enhancing": (core - necrosis) * brain[region],
               "edema": parenchyma * rest * edema}
    csf[region] *= rest
    grey[region] *= rest * (1.0 - edema)
    white[region] *= rest * (1.0 - edema)
    gadolinium = np.float32(subject.rim_gadolinium_mm) * np.clip(
        1.0 + 0.3 * subject.glioma.enhancement(x, y, z), 0.5, 1.8)
    return _Lesion(region, tissues, gadolinium, 1.0 + 0.12 * subject.glioma.texture(x, y, z))


def render_subject(subject: BrainSubject, grid: Grid, noise_key: int = 1, sequences=SEQUENCES) -> BrainPhantom:
    """The subject's images (the given sequences) and labels on grid; noise_key picks the noise realisation."""
    brain, grey, white = _template_fractions(subject, grid)
    csf = np.clip(brain - grey - white, 0.0, None)
    mask = brain > 0.5
    seg = np.zeros(grid.array_shape, np.uint8)
    lesion = _insert_tumour(subject, grid, brain, grey, white, csf, mask, seg)

    x, y, z = grid.world_axes()
    images = {}
    for name in sequences:
        sequence = subject.protocol[name]
        contrast = name == "t1c"

        def tissue_signal(tissue_name, concentration=None, t2_scale=1.0):
            tissue = subject.tissues[tissue_name]
            if concentration is None:
                concentration = GADOLINIUM_MM[tissue_name] if contrast else 0.0
            t1, t2 = with_gadolinium(tissue.t1_ms, tissue.t2_ms * t2_scale, concentration)
            return sequence.signal(t1, t2, tissue.pd)

        normal = {t: np.float32(tissue_signal(t)) for t in ("csf", "gm", "wm")}
        signal = csf * normal["csf"] + grey * normal["gm"] + white * normal["wm"]
        if lesion is not None:
            texture = lesion.t2_scale
            rim = tissue_signal("enhancing", lesion.gadolinium_mm if contrast else 0.0, texture)
            signal[lesion.region] += (lesion.tissues["edema"] * tissue_signal("edema", t2_scale=texture)
                                      + lesion.tissues["enhancing"] * rim
                                      + lesion.tissues["necrosis"] * tissue_signal("necrosis", t2_scale=texture))
        bias = subject.bias[name](x, y, z)
        bias *= np.float32(subject.bias_strength[name])
        signal *= np.exp(bias, out=bias)
        gain = subject.gains[name] / max(normal.values())  # brightest normal tissue ~ the drawn gain
        signal *= np.float32(gain)
        sigma = gain * 0.5 * (normal["gm"] + normal["wm"]) / subject.snr[name]
        image = np.zeros(grid.array_shape, np.float32)
        noise_rng = np.random.default_rng([subject.seed, noise_key, SEQUENCES.index(name)])
        image[mask] = np.rint(add_rician_noise(signal[mask], sigma, noise_rng))
        images[name] = image

    tissues = {"csf": csf, "gm": grey, "wm": white}
    for name in ("edema", "enhancing", "necrosis"):
        tissues[name] = np.zeros(grid.array_shape, np.float32)
        if lesion is not None:
            tissues[name][lesion.region] = lesion.tissues[name]
    info = {
        "seed": subject.seed, "shape": list(grid.shape), "spacing_mm": [round(s, 4) for s in grid.spacing],
        "tumour": subject.glioma.info() if subject.glioma is not None else None,
        "protocol": {n: {"sequence": type(s).__name__, **{k: round(float(v), 2) for k, v in
                                                          dataclasses.asdict(s).items()}}
                     for n, s in subject.protocol.items()},
    }
    return BrainPhantom(images, seg, tissues, mask, grid.ijk_to_ras.copy(), info)


def acquired_subject(seed: int, acquisition: MRAcquisition, tumour: bool = True) -> BrainSubject:
    """The patient of seed scanned with the drawn acquisition (tissue relaxation, protocol, SNR, gains, bias)."""
    subject = draw_subject(seed, tumour, fov_top_mm=acquisition.coverage_mm / 2.0)
    return dataclasses.replace(subject, tissues=dict(acquisition.tissues), protocol=dict(acquisition.protocol),
                               gains=dict(acquisition.gains), snr=dict(acquisition.snr), bias=dict(acquisition.bias),
                               bias_strength=dict(acquisition.bias_strength))


def simulate_brain(seed: int, shape=None, spacing=None, tumour: bool = True,
                   acquisition: str | MRAcquisition = "fixed", sequences=SEQUENCES, scanner_noise: bool = True,
                   bias_field: bool = True) -> BrainPhantom:
    """One case. acquisition 'fixed' (default): the BraTS field of view (default 240 x 240 x 155 voxels of 1 mm;
    shape in NIfTI order). 'train' or 'shifted' (or a drawn MRAcquisition): the drawn scanner and grid; a shape
    keeps the drawn field of view on that many voxels; a spacing forces the voxel size on that (or the drawn)
    shape. scanner_noise / bias_field False: the same case without its noise / its bias fields (what an ideal
    translator could predict of an image: neither is shared between one case's sequences)."""
    if isinstance(acquisition, str) and check_profile(acquisition) == "fixed":
        grid, subject, info = brats_grid(shape, spacing), draw_subject(seed, tumour), None
    else:
        if isinstance(acquisition, str):
            acquisition = draw_mr_acquisition(seed, acquisition)
        grid = acquisition.grid(BRATS_CENTRE_RAS, shape)
        if spacing is not None:
            grid = lps_grid(grid.shape, spacing, BRATS_CENTRE_RAS)
        subject, info = acquired_subject(seed, acquisition, tumour), acquisition.info()
    if not scanner_noise:
        subject = dataclasses.replace(subject, snr={name: np.inf for name in subject.snr})  # sigma 0
    if not bias_field:
        subject = dataclasses.replace(subject, bias_strength={name: 0.0 for name in subject.bias_strength})
    phantom = render_subject(subject, grid, sequences=sequences)
    if info is not None:
        phantom.info["acquisition"] = info
    return phantom


def generate_brain_case(seed: int, shape=None, acquisition: str = "fixed") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'t1n', 't1c', 't2w', 't2f', 'seg'} -> (array in (k, j, i) order, 4x4 ijk-to-RAS), ready for Volume(*pair)."""
    phantom = simulate_brain(seed, shape, acquisition=acquisition)
    case = {name: (image, phantom.ijk_to_ras) for name, image in phantom.images.items()}
    case["seg"] = (phantom.seg, phantom.ijk_to_ras)
    return case
