"""The MNI152 2009 (ICBM nlin sym 09a) T1 template and grey/white-matter maps shipped inside the nilearn wheel.

They are read from the installed package's data folder, never downloaded. Brain = T1 template above 20% of its
maximum (nilearn's own brain-mask rule); CSF = brain minus GM minus WM, which also gives the CSF rim around the
cortex that skull-stripped BraTS images show.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from MedDiffusionExtension.errors import InputError

_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
BRAIN_THRESHOLD = 0.2
TEMPLATE_ATTRIBUTION = (
    "Brain phantoms are derived from the MNI ICBM152 2009 nonlinear symmetric template (Fonov et al., "
    "NeuroImage 2011; Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal "
    "Neurological Institute, McGill University), as distributed with nilearn."
)


def template_folder() -> Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the brain phantoms need the MNI152 maps inside nilearn; install it: pip install nilearn")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    missing = [name for name in _FILES.values() if not (folder / name).is_file()]
    if missing:
        raise InputError(f"nilearn at {folder.parent.parent} lacks {missing[0]}; install nilearn >= 0.10")
    return folder


@dataclass(frozen=True)
class TissueTemplate:
    maps: np.ndarray  # (3, ni, nj, nk) float32: brain, grey matter, white matter fractions in template voxels
    vox_to_ras: np.ndarray
    brain_box_ras: tuple[np.ndarray, np.ndarray]  # low and high RAS corners of the brain mask
    tumour_sites: np.ndarray  # (n, 4): RAS centre (mm) and distance to the brain surface (mm) of candidate sites

    def voxel_size(self) -> np.ndarray:
        return np.diag(self.vox_to_ras)[:3].copy()


@functools.lru_cache(maxsize=1)
def load_template() -> TissueTemplate:
    folder = template_folder()
    images = {key: nib.load(str(folder / name)) for key, name in _FILES.items()}
    affine = images["t1"].affine
    if not np.allclose(affine[:3, :3], np.diag(np.diag(affine)[:3])) or (np.diag(affine)[:3] <= 0).any():
        raise InputError("unexpected MNI template orientation in nilearn; phantoms need its RAS-aligned grid")
    t1 = np.asarray(images["t1"].dataobj, dtype=np.float32)
    brain = (t1 > BRAIN_THRESHOLD * t1.max()).astype(np.float32)
    grey = np.asarray(images["gm"].dataobj, dtype=np.float32) / 255.0
    white = np.asarray(images["wm"].dataobj, dtype=np.float32) / 255.0
    grey *= brain
    white *= brain
    maps = np.stack([brain, grey, white])
    inside = np.argwhere(brain > 0)
    box = tuple(affine[:3, :3] @ corner + affine[:3, 3] for corner in (inside.min(0), inside.max(0)))
    return TissueTemplate(maps, affine, box, _tumour_sites(brain, white, affine))


def _tumour_sites(brain: np.ndarray, white: np.ndarray, affine: np.ndarray, block: int = 4) -> np.ndarray:
    """Supratentorial white-matter sites, where gliomas mostly arise, with their depth below the brain surface.

    Computed on 4 mm blocks: the depth only has to be good to a few millimetres.
    """
    crop = tuple(slice(0, (n // block) * block) for n in brain.shape)
    shape = tuple(n // block for n in brain.shape)

    def blocks(volume):
        return volume[crop].reshape(shape[0], block, shape[1], block, shape[2], block).mean(axis=(1, 3, 5))

    brain_blocks, white_blocks = blocks(brain), blocks(white)
    voxel = np.diag(affine)[:3] * block
    depth = ndimage.distance_transform_edt(brain_blocks > 0.5, sampling=voxel)
    centres = (np.argwhere(np.ones(shape, bool)) + 0.5) * block - 0.5
    ras = centres @ affine[:3, :3].T + affine[:3, 3]
    keep = ((white_blocks.ravel() > 0.45) & (depth.ravel() >= 20.0) & (ras[:, 2] > -5.0) & (ras[:, 2] < 60.0))
    return np.column_stack([ras[keep], depth.ravel()[keep]]).astype(np.float64)


@functools.lru_cache(maxsize=4)
def smoothed_maps(sigma_voxels: tuple[float, float, float]) -> np.ndarray:
    """The maps low-passed before sampling them on a coarser grid, so small phantoms do not alias."""
    maps = load_template().maps
    if max(sigma_voxels) < 0.2:
        return maps
    return np.stack([ndimage.gaussian_filter(m, sigma_voxels, mode="constant") for m in maps])
