"""Shared fixtures: small synthetic volumes in awkward storage orders, built from one axial array."""

from __future__ import annotations

import numpy as np
import pytest

from MedDiffusionExtension.volume import Volume


def axial_volume(shape=(12, 40, 36), spacing=(0.9, 1.1, 2.5), seed=0) -> Volume:
    """A smooth random volume stored in canonical axial order (i->L, j->P, k->S) with anisotropic voxels."""
    rng = np.random.default_rng(seed)
    array = rng.normal(size=shape).astype(np.float32)
    array += np.linspace(0, 5, shape[2], dtype=np.float32)[None, None, :]  # in-plane structure: left-right ramp
    matrix = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    matrix[:3, 3] = [12.5, -30.0, 7.0]
    return Volume(array, matrix)


def restored(volume: Volume, axes_kji, flips_kji) -> Volume:
    """The same voxels stored with permuted and flipped array axes (geometry adjusted so every voxel keeps its
    patient position). axes_kji: new order of the (k, j, i) axes; flips_kji: which new axes to reverse."""
    array = np.transpose(volume.array, axes_kji)
    # Column c of the new ijk matrix is the old column for the axis that is now at position (2 - c).
    old_ijk_of_new_kji = [2 - a for a in axes_kji]
    matrix = np.eye(4)
    matrix[:3, 3] = volume.ijk_to_ras[:3, 3]
    for new_kji, old_ijk in enumerate(old_ijk_of_new_kji):
        matrix[:3, 2 - new_kji] = volume.ijk_to_ras[:3, old_ijk]
    for new_kji, flip in enumerate(flips_kji):
        if flip:
            array = np.flip(array, axis=new_kji)
            column = 2 - new_kji
            matrix[:3, 3] += matrix[:3, column] * (array.shape[new_kji] - 1)
            matrix[:3, column] *= -1
    return Volume(np.ascontiguousarray(array), matrix)


def rotation(axis: int, degrees: float) -> np.ndarray:
    angle = np.deg2rad(degrees)
    c, s = np.cos(angle), np.sin(angle)
    a, b = [(1, 2), (0, 2), (0, 1)][axis]
    matrix = np.eye(4)
    matrix[a, a], matrix[a, b], matrix[b, a], matrix[b, b] = c, -s, s, c
    return matrix


@pytest.fixture
def axial():
    return axial_volume()


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """A model folder with random-weight micro CDM and SDSeg models (one per test module)."""
    from tiny_models import write_micro_model

    root = tmp_path_factory.mktemp("models")
    write_micro_model(root, "cdm")
    write_micro_model(root, "sdseg")
    return root


@pytest.fixture
def micro_models_env(models_dir, monkeypatch):
    """The micro models as the user's model folder (a module opts in with pytestmark)."""
    monkeypatch.setenv("MEDDIFFUSION_MODELS_DIR", str(models_dir))
