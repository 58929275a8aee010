"""Writing phantom cases in the folder layouts of the real datasets, so the same readers load both.

BraTS2023: ROOT/BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz (int16 images, uint8 seg).
BTCV:      ROOT/img/img0001.nii.gz (int16 HU) and ROOT/label/label0001.nii.gz (uint8).
IXI:       ROOT/IXI-T1/IXI012-HH-1211-T1.nii.gz and ROOT/IXI-T2/IXI012-HH-1211-T2.nii.gz: healthy subjects, T1
           stored sagittally and T2 axially on different grids, as IXI does. "HH" (Hammersmith, the 3 T site)
           because the tissue values are 3 T ones. Unlike IXI, the phantoms are skull-stripped.
Every case of a dataset gets its own seed derived from the dataset seed and the case index.

The BraTS and BTCV dataset writers take an acquisition profile (fixed, train, shifted; see acquisition.py) and
record every case's phantom info (seed, grid, drawn acquisition) in ROOT/acquisitions.json, {"cases": {name:
info}}, merged with the entries already there; the dataset readers ignore the file.
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from .acquisition import check_profile
from .brain import BRATS_CENTRE_RAS, SEQUENCES, draw_subject, render_subject, simulate_brain
from .ct import check_pelvis_profile, simulate_ct
from .geometry import Grid, lps_grid
from .nifti import write_nifti
from MedDiffusionExtension.errors import InputError


def case_seed(dataset_seed: int, index: int) -> int:
    return int(np.random.SeedSequence([dataset_seed, index]).generate_state(1)[0])


def brats_case_name(number: int) -> str:
    return f"BraTS-GLI-{number:05d}-000"


ACQUISITIONS_JSON = "acquisitions.json"


def _phantom_record(info: dict, profile: str) -> dict:
    record = {k: v for k, v in info.items() if k != "acquisition"}
    record["acquisition"] = info.get("acquisition", {"profile": profile})
    return record


def write_acquisitions(root, records: dict[str, dict]) -> Path:
    """Merge {case name: phantom info} into ROOT/acquisitions.json."""
    path = Path(root) / ACQUISITIONS_JSON
    cases = json.loads(path.read_text(encoding="utf-8")).get("cases", {}) if path.is_file() else {}
    cases.update(records)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cases": dict(sorted(cases.items()))}, indent=1) + "\n", encoding="utf-8")
    return path


def _write_brats_case(root, number: int, seed: int, shape, acquisition: str) -> tuple[dict[str, Path], dict]:
    name = brats_case_name(number)
    folder = Path(root) / name
    phantom = simulate_brain(seed, shape, acquisition=acquisition)
    paths = {seq: write_nifti(folder / f"{name}-{seq}.nii.gz", phantom.images[seq], phantom.ijk_to_ras, np.int16)
             for seq in SEQUENCES}
    paths["seg"] = write_nifti(folder / f"{name}-seg.nii.gz", phantom.seg, phantom.ijk_to_ras, np.uint8)
    return paths, _phantom_record(phantom.info, acquisition)


def write_brats_case(root, number: int, seed: int, shape=None, acquisition: str = "fixed") -> dict[str, Path]:
    return _write_brats_case(root, number, seed, shape, acquisition)[0]


def _write_cases(write_case, arguments: list[tuple], workers: int) -> list[tuple[dict[str, Path], dict]]:
    """write_case(*each) in order; with workers > 1 in that many processes (each case draws from its own seed, so
    the files are the same either way)."""
    if workers <= 1 or len(arguments) <= 1:
        return [write_case(*each) for each in arguments]
    with ProcessPoolExecutor(max_workers=min(workers, len(arguments))) as pool:
        return list(pool.map(write_case, *zip(*arguments)))


def write_brats_dataset(root, n: int, seed: int = 0, shape=None, start: int = 0,
                        acquisition: str = "fixed", workers: int = 1) -> list[dict[str, Path]]:
    check_profile(acquisition)
    written = _write_cases(_write_brats_case, [(root, start + i, case_seed(seed, i), shape, acquisition)
                                               for i in range(n)], workers)
    write_acquisitions(root, {brats_case_name(start + i): record for i, (_, record) in enumerate(written)})
    return [paths for paths, _ in written]


def _write_btcv_case(root, number: int, seed: int, shape, spacing, acquisition: str,
                     oral_contrast_hu: float | None = None, pelvis: bool = False, lesions: bool = False
                     ) -> tuple[dict[str, Path], dict]:
    root = Path(root)
    phantom = simulate_ct(seed, shape, spacing, acquisition=acquisition, oral_contrast_hu=oral_contrast_hu,
                          pelvis=pelvis, lesions=lesions)
    paths = {"image": write_nifti(root / "img" / f"img{number:04d}.nii.gz", phantom.image, phantom.ijk_to_ras,
                                  np.int16),
             "label": write_nifti(root / "label" / f"label{number:04d}.nii.gz", phantom.label, phantom.ijk_to_ras,
                                  np.uint8)}
    return paths, _phantom_record(phantom.info, acquisition)


def write_btcv_case(root, number: int, seed: int, shape=None, spacing=None, acquisition: str = "fixed"
                    ) -> dict[str, Path]:
    return _write_btcv_case(root, number, seed, shape, spacing, acquisition)[0]


ORAL_CONTRAST_RANGE_HU = (150.0, 350.0)  # positive oral contrast in the bowel, as clinical CTs show it


def _drawn_for_case(share: float, seed: int, stream: int) -> bool:
    """Whether a case gets an option given to `share` of the cases (1.0 all), drawn from a stream of its own so the
    case's other draws stay as they were."""
    return share >= 1.0 or (share > 0.0 and np.random.default_rng([seed, stream]).random() < share)


def write_btcv_dataset(root, n: int, seed: int = 0, shape=None, spacing=None, start: int = 1,
                       acquisition: str = "fixed", oral_contrast_hu: float | None = None,
                       oral_contrast_share: float = 0.0, workers: int = 1, pelvis_share: float = 0.0,
                       lesion_share: float = 0.0) -> list[dict]:
    """oral_contrast_hu: every case with positive oral contrast at this HU (see ct.simulate_ct); else
    oral_contrast_share: that share of the cases (drawn per case from its seed) with oral contrast at an HU drawn
    from ORAL_CONTRAST_RANGE_HU. pelvis_share: that share of the cases (drawn per case; 1.0 all) scanned
    abdomen-pelvis (ct_pelvis). lesion_share: that share of the cases with focal lesions in the liver, kidneys or
    spleen (ct_lesions). The cases are otherwise those of the same seed without any of these."""
    check_profile(acquisition)
    for name, share in (("oral_contrast_share", oral_contrast_share), ("pelvis_share", pelvis_share),
                        ("lesion_share", lesion_share)):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, got {share!r}")
    if pelvis_share:
        check_pelvis_profile(acquisition)  # before any case is written
    arguments = []
    for i in range(n):
        oral = oral_contrast_hu
        if oral is None and oral_contrast_share:
            draw = np.random.default_rng([case_seed(seed, i), 29])  # its own stream: the case's other draws stay
            oral = float(draw.uniform(*ORAL_CONTRAST_RANGE_HU)) if draw.random() < oral_contrast_share else None
        pelvis, lesions = (_drawn_for_case(share, case_seed(seed, i), stream)
                           for share, stream in ((pelvis_share, 37), (lesion_share, 43)))
        arguments.append((root, start + i, case_seed(seed, i), shape, spacing, acquisition, oral, pelvis, lesions))
    written = _write_cases(_write_btcv_case, arguments, workers)
    write_acquisitions(root, {f"{start + i:04d}": record for i, (_, record) in enumerate(written)})
    return [paths for paths, _ in written]


IXI_T1 = ((256, 256, 150), (0.9375, 0.9375, 1.2))  # sagittal: i posterior, j superior, k right
IXI_T2 = ((256, 256, 130), (0.9375, 0.9375, 1.2))  # axial, the project's L, P, S storage


def ixi_grids(scale: float = 1.0) -> tuple[Grid, Grid]:
    """The T1 (sagittal) and T2 (axial) grids; scale < 1 keeps each field of view with fewer voxels."""
    if not 0.05 <= scale <= 2.0:
        raise InputError(f"IXI scale {scale} is out of range; use a value between 0.05 and 2 (1 = IXI's voxels)")
    centre = np.asarray(BRATS_CENTRE_RAS)
    (t1_shape, t1_spacing), (t2_shape, t2_spacing) = IXI_T1, IXI_T2
    t1_shape = tuple(max(int(round(n * scale)), 8) for n in t1_shape)
    t1_spacing = np.asarray(IXI_T1[1]) * np.asarray(IXI_T1[0]) / np.asarray(t1_shape)
    matrix = np.zeros((4, 4))
    matrix[1, 0], matrix[2, 1], matrix[0, 2], matrix[3, 3] = -t1_spacing[0], t1_spacing[1], t1_spacing[2], 1.0
    matrix[:3, 3] = centre - matrix[:3, :3] @ ((np.asarray(t1_shape) - 1) / 2.0)
    t2_shape = tuple(max(int(round(n * scale)), 8) for n in t2_shape)
    t2_spacing = np.asarray(t2_spacing) * np.asarray(IXI_T2[0]) / np.asarray(t2_shape)
    return Grid(t1_shape, matrix), lps_grid(t2_shape, t2_spacing, centre)


def ixi_subject_name(number: int, seed: int) -> str:
    return f"IXI{number:03d}-HH-{1000 + seed % 9000:04d}"


def write_ixi_case(root, number: int, seed: int, scale: float = 1.0) -> dict[str, Path]:
    root = Path(root)
    t1_grid, t2_grid = ixi_grids(scale)
    subject = draw_subject(seed, tumour=False, fov_top_mm=IXI_T2[0][2] * IXI_T2[1][2] / 2.0)
    name = ixi_subject_name(number, seed)
    t1 = render_subject(subject, t1_grid, noise_key=1, sequences=("t1n",))
    t2 = render_subject(subject, t2_grid, noise_key=2, sequences=("t2w",))
    return {"t1n": write_nifti(root / "IXI-T1" / f"{name}-T1.nii.gz", t1.images["t1n"], t1.ijk_to_ras, np.int16),
            "t2w": write_nifti(root / "IXI-T2" / f"{name}-T2.nii.gz", t2.images["t2w"], t2.ijk_to_ras, np.int16)}


def write_ixi_dataset(root, n: int, seed: int = 0, scale: float = 1.0, start: int = 2) -> list[dict[str, Path]]:
    return [write_ixi_case(root, start + i, case_seed(seed, i), scale) for i in range(n)]
