"""Finding cases in the datasets' real folder layouts. Each reader returns Cases with one path per modality.

Modality names follow BraTS2023: t1n (native T1), t1c (post-contrast T1), t2w (T2), t2f (T2-FLAIR), seg (labels);
CT cases use image and label.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from MedDiffusionExtension.errors import InputError


@dataclass(frozen=True)
class Case:
    case_id: str
    paths: dict[str, Path] = field(hash=False)


def _require(cases: list[Case], root: Path, layout: str) -> list[Case]:
    if not cases:
        raise InputError(f"no {layout} cases found under {root}; check the dataset root (see README: datasets)")
    return cases


def read_brats(root: Path) -> list[Case]:
    """BraTS2023 (GLI and the other challenges): ROOT/BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz."""
    root = Path(root)
    cases = []
    for folder in sorted(p for p in root.glob("BraTS-*") if p.is_dir()):
        paths = {m: folder / f"{folder.name}-{m}.nii.gz" for m in ("t1n", "t1c", "t2w", "t2f", "seg")}
        present = {m: p for m, p in paths.items() if p.is_file()}
        if all(m in present for m in ("t1n", "t2w")):
            cases.append(Case(folder.name, present))
    return _require(cases, root, "BraTS2023")


# UPenn-GBM (TCIA): images_structural/UPENN-GBM-00001_11/UPENN-GBM-00001_11_{T1,T1GD,T2,FLAIR}.nii.gz,
# segmentations in images_segm/UPENN-GBM-00001_11_segm.nii.gz (some cases only have automated_segm).
_UPENN_MODALITIES = {"t1n": "T1", "t1c": "T1GD", "t2w": "T2", "t2f": "FLAIR"}


def read_upenn_gbm(root: Path) -> list[Case]:
    root = Path(root)
    structural = root / "images_structural" if (root / "images_structural").is_dir() else root
    cases = []
    for folder in sorted(p for p in structural.glob("UPENN-GBM-*") if p.is_dir()):
        paths = {m: folder / f"{folder.name}_{suffix}.nii.gz" for m, suffix in _UPENN_MODALITIES.items()}
        present = {m: p for m, p in paths.items() if p.is_file()}
        for seg_dir, suffix in (("images_segm", "_segm"), ("automated_segm", "_automated_approx_segm")):
            seg = root / seg_dir / f"{folder.name}{suffix}.nii.gz"
            if seg.is_file() and "seg" not in present:
                present["seg"] = seg
        if all(m in present for m in ("t1n", "t2w")):
            cases.append(Case(folder.name, present))
    return _require(cases, root, "UPenn-GBM")


_IXI_NAME = re.compile(r"^(IXI\d{3}-[A-Za-z]+-\d+)-(T1|T2|PD)\.nii(\.gz)?$")


def read_ixi(root: Path) -> list[Case]:
    """IXI: IXI002-Guys-0828-T1.nii.gz and IXI002-Guys-0828-T2.nii.gz, in one folder or in IXI-T1/ and IXI-T2/.

    IXI's T1 and T2 are separate acquisitions on different grids: the engine resamples T2 onto T1 when used.
    """
    root = Path(root)
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(root.rglob("IXI*.nii*")):
        match = _IXI_NAME.match(path.name)
        if match:
            modality = {"T1": "t1n", "T2": "t2w", "PD": "pd"}[match.group(2)]
            found.setdefault(match.group(1), {})[modality] = path
    cases = [Case(subject, paths) for subject, paths in sorted(found.items()) if {"t1n", "t2w"} <= set(paths)]
    return _require(cases, root, "IXI (T1/T2 pairs)")


def read_btcv(root: Path) -> list[Case]:
    """BTCV (Synapse multi-organ): ROOT/img/img0001.nii.gz with ROOT/label/label0001.nii.gz."""
    root = Path(root)
    for candidate in (root, root / "Training", root / "RawData" / "Training"):
        if (candidate / "img").is_dir():
            root = candidate
            break
    cases = []
    for image in sorted((root / "img").glob("img*.nii.gz")):
        number = image.name[3:-7]
        label = root / "label" / f"label{number}.nii.gz"
        paths = {"image": image, **({"label": label} if label.is_file() else {})}
        cases.append(Case(number, paths))
    return _require(cases, root, "BTCV")


def read_mri_cases(root: Path, layout: str) -> list[Case]:
    readers = {"brats": read_brats, "upenn": read_upenn_gbm, "ixi": read_ixi}
    if layout not in readers:
        raise InputError(f"unknown MRI layout {layout!r}; use one of {', '.join(readers)}")
    return readers[layout](root)
