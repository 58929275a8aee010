"""Real CTs labelled in TotalSegmentator's classes, turned into the BTCV layout the CT recipes and evaluations read.

TotalSegmentator (v2, task "total") names 117 structures; the 13 BTCV organs are among them, the kidney cysts it
labels apart are counted as their kidney (BTCV counts what lies in an organ as that organ). Its references come
either as one label map or as a folder with one mask per structure (its dataset's `segmentations/` folders, or its
output without --ml). A label map is read by the structure names its header extension carries (TotalSegmentator
writes its label table there), so any version's numbering maps right; a map without that table is taken to be in
v2's numbering. Everything else it labels is background here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from MedDiffusionExtension.errors import InputError
from MedDiffusionExtension.volume import Volume
from MedDiffusionExtension.volume.io import check_outputs_writable, read_volume, write_volumes
from MedDiffusionExtension.volume.resample import overlap_fraction, resample_to_grid

# BTCV label -> the TotalSegmentator structures that make it up.
BTCV_FROM_TOTALSEGMENTATOR = {
    1: ("spleen",), 2: ("kidney_right", "kidney_cyst_right"), 3: ("kidney_left", "kidney_cyst_left"),
    4: ("gallbladder",), 5: ("esophagus",), 6: ("liver",), 7: ("stomach",), 8: ("aorta",),
    9: ("inferior_vena_cava",), 10: ("portal_vein_and_splenic_vein",), 11: ("pancreas",),
    12: ("adrenal_gland_right",), 13: ("adrenal_gland_left",),
}
# The numbers of those structures in TotalSegmentator v2's "total" label map.
TOTALSEGMENTATOR_NUMBERS = {
    "spleen": 1, "kidney_right": 2, "kidney_left": 3, "gallbladder": 4, "liver": 5, "stomach": 6, "pancreas": 7,
    "adrenal_gland_right": 8, "adrenal_gland_left": 9, "esophagus": 15, "kidney_cyst_left": 23,
    "kidney_cyst_right": 24, "aorta": 52, "inferior_vena_cava": 63, "portal_vein_and_splenic_vein": 64,
}
# The highest number of the v2 "total" map: a label map with larger values is in another numbering.
TOTALSEGMENTATOR_MAX_LABEL = 117
# A reference must cover the CT: outside it the reference would say "no organ" where it never looked.
MIN_COVERAGE = 0.99
_LABEL_ENTRY = re.compile(rb'<Label Key="(\d+)"[^>]*><!\[CDATA\[([^\]]*)\]\]></Label>')


@dataclass(frozen=True)
class LabelledCT:
    image: Path  # a CT file or a DICOM series folder
    segmentation: Path  # a label map in TotalSegmentator's numbering, or a folder of per-structure masks


def btcv_labels(segmentation: Path, image: Volume) -> np.ndarray:
    """The reference in BTCV numbering on `image`'s grid (uint8, (k, j, i)), nearest-neighbour in patient space."""
    segmentation = Path(segmentation)
    if segmentation.is_dir():
        reference = _from_masks(segmentation)
    else:
        reference = _from_label_map(read_volume(segmentation), segmentation)
    coverage = overlap_fraction(reference, image)
    if coverage < MIN_COVERAGE:
        raise InputError(f"segmentation {segmentation.name} covers {coverage:.0%} of its CT; a reference must cover "
                         "the whole CT (crop the CT to it, or check that the pair belongs together)")
    if reference.same_grid(image):
        return reference.array.astype(np.uint8)
    return np.rint(resample_to_grid(reference, image, order=0, fill=0.0).array).astype(np.uint8)


def _from_label_map(labels: Volume, path: Path) -> Volume:
    values = np.asarray(labels.array)
    numbers = label_table(path) or TOTALSEGMENTATOR_NUMBERS
    highest = max(TOTALSEGMENTATOR_MAX_LABEL, *numbers.values())
    if values.min() < 0 or values.max() > highest or not np.array_equal(values, np.rint(values)):
        raise InputError(f"{path.name} is not a TotalSegmentator label map (whole values 0-{highest}); pass its "
                         "folder of per-structure masks instead")
    lookup = np.zeros(highest + 1, dtype=np.uint8)
    for btcv, names in BTCV_FROM_TOTALSEGMENTATOR.items():
        lookup[[numbers[name] for name in names if name in numbers]] = btcv
    return labels.with_array(lookup[values.astype(np.intp)])


def label_table(path: Path) -> dict[str, int]:
    """{structure name: number} from the label table in a NIfTI header extension ({} when there is none)."""
    try:
        extensions = nib.load(str(path)).header.extensions
    except (nib.filebasedimages.ImageFileError, OSError, ValueError):  # not a NIfTI: no table
        return {}
    table = {}
    for extension in extensions:
        content = extension.get_content()
        if isinstance(content, bytes):
            table.update({name.decode(): int(key) for key, name in _LABEL_ENTRY.findall(content)})
    return table


def _from_masks(folder: Path) -> Volume:
    masks = {name: folder / f"{name}.nii.gz" for names in BTCV_FROM_TOTALSEGMENTATOR.values() for name in names}
    present = {name: path for name, path in masks.items() if path.is_file()}
    if not present:
        raise InputError(f"{folder} holds none of the BTCV organs' masks (e.g. liver.nii.gz); point to a "
                         "TotalSegmentator segmentations folder")
    grid = None
    for btcv, names in BTCV_FROM_TOTALSEGMENTATOR.items():
        for name in names:
            if name not in present:
                continue
            mask = read_volume(present[name])
            if grid is None:
                grid = mask.with_array(np.zeros(mask.shape, dtype=np.uint8))
            elif not mask.same_grid(grid):
                raise InputError(f"{present[name].name} is not on the grid of the other masks in {folder}")
            grid.array[np.asarray(mask.array) > 0] = btcv
    return grid


def import_cases(cases: list[LabelledCT], out: Path, first_number: int = 1) -> list[Path]:
    """Write each case as OUT/img/imgNNNN.nii.gz and OUT/label/labelNNNN.nii.gz (NNNN from first_number), all or
    nothing: an existing file is never replaced, and a case that fails takes the ones written before it away.
    One case is in memory at a time (a whole dataset can be imported)."""
    if first_number < 1:
        raise InputError(f"the first case number must be at least 1, got {first_number}")
    names = [(out / "img" / f"img{n:04d}.nii.gz", out / "label" / f"label{n:04d}.nii.gz")
             for n in range(first_number, first_number + len(cases))]
    check_outputs_writable([path for pair in names for path in pair], overwrite=False)
    written: list[Path] = []
    try:
        for case, (image_path, label_path) in zip(cases, names):
            image = read_volume(case.image)
            labels = btcv_labels(case.segmentation, image)
            if not labels.any():
                raise InputError(f"{case.segmentation} labels none of the BTCV organs on {case.image}; check the pair")
            # Stored as int16 HU like the BTCV files (CT values are whole HU; a rescale slope may leave fractions).
            hounsfield = np.clip(np.rint(image.array), np.iinfo(np.int16).min, np.iinfo(np.int16).max)
            written += write_volumes({image_path: (image.with_array(hounsfield), np.int16),
                                      label_path: (image.with_array(labels), np.uint8)}, overwrite=False)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written
