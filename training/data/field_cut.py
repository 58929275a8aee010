"""Stress sets with a cut field of view: every case of a BTCV-layout dataset with part of its field removed on one
side of the patient, as a reconstruction targeted off the body's centre (one kidney, the liver) or a stored crop
leaves a scan. The images and label maps are cropped, not blanked: the cut scan is smaller, with its geometry kept
exact, and the engine meets the cut body at the edge of a smaller field, as it would on such a scan."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from MedDiffusionExtension.errors import InputError
from MedDiffusionExtension.volume import AxialReorientation, Volume, read_volume, write_volumes

from .layouts import read_btcv

# Patient side -> (axis of the canonical axial array (k, j, i; i -> left, j -> posterior), whether it is the high end).
SIDES = {"left": (2, True), "right": (2, False), "posterior": (1, True), "anterior": (1, False)}


def cut_volume(volume: Volume, side: str, fraction: float) -> Volume:
    """`volume` in canonical axial order with `fraction` of its field removed on the patient's `side`."""
    if side not in SIDES:
        raise InputError(f"side must be one of {', '.join(SIDES)}, got {side!r}")
    if not 0.0 < fraction < 1.0:
        raise InputError(f"the fraction to remove must be between 0 and 1, got {fraction}")
    axial = AxialReorientation.for_volume(volume).axial_volume(volume.array)
    axis, high_end = SIDES[side]
    length = axial.shape[axis]
    kept = max(1, int(round(length * (1.0 - fraction))))
    start = 0 if high_end else length - kept
    index = [slice(None)] * 3
    index[axis] = slice(start, start + kept)
    shift = np.eye(4)
    shift[2 - axis, 3] = start  # the affine's columns are (i, j, k): array axis a is column 2 - a
    return Volume(np.ascontiguousarray(axial.array[tuple(index)]), axial.ijk_to_ras @ shift)


def cut_dataset(root: Path, out: Path, side: str, fraction: float) -> list[Path]:
    """Every case of the BTCV-layout `root` cut (cut_volume) into the same layout under `out`, all or nothing; a
    phantom dataset's acquisitions.json comes along (the cases are still its phantoms)."""
    outputs = {}
    for case in read_btcv(root):
        for kind, folder, name, dtype in (("image", "img", "img", np.int16), ("label", "label", "label", np.uint8)):
            if kind in case.paths:
                volume = read_volume(case.paths[kind])
                outputs[Path(out) / folder / f"{name}{case.case_id}.nii.gz"] = (cut_volume(volume, side, fraction), dtype)
    written = write_volumes(outputs, overwrite=False)
    record = Path(root) / "acquisitions.json"
    if record.is_file():
        shutil.copyfile(record, Path(out) / "acquisitions.json")
    return written
