"""The volume engine: exact geometry on awkward storage orders, resampling, batching, noise, cancellation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from MedDiffusionExtension.errors import Cancelled, InputError
from MedDiffusionExtension.progress import CancelToken
from MedDiffusionExtension.volume import AxialReorientation, GridMismatchWarning, Volume, ct_window, fit_mri_scaling
from MedDiffusionExtension.volume.engine import EngineInput, RunOptions, run_slicewise
from MedDiffusionExtension.volume.slices import ModelGrid
from MedDiffusionExtension.volume.io import LPS_TO_RAS
from MedDiffusionExtension.volume.resample import resample_to_grid
from MedDiffusionExtension.volume.slices import SliceFitter

from conftest import axial_volume, restored, rotation

IDENTITY = lambda batch: batch.images  # noqa: E731

AS_IS = ModelGrid(None, None)  # slices reach the model as they are


def _awkward_volumes():
    base = axial_volume()
    oblique = Volume(base.array, rotation(0, 17) @ rotation(2, -9) @ base.ijk_to_ras)
    ras_stored = restored(base, (0, 1, 2), (False, True, True))  # i->R, j->A: NIfTI-style RAS storage
    sagittal = restored(base, (2, 0, 1), (False, True, False))  # slices along left-right
    coronal = restored(base, (1, 0, 2), (True, False, True))
    square = axial_volume(shape=(6, 240, 240), spacing=(1, 1, 1))
    return {"axial": base, "oblique": oblique, "ras_stored": ras_stored, "sagittal": sagittal,
            "coronal": coronal, "brats_240": square}


@pytest.mark.parametrize("name", list(_awkward_volumes()))
@pytest.mark.parametrize("model_size", [None, 256])
def test_identity_round_trip_is_exact(name, model_size):
    volume = _awkward_volumes()[name]
    out = run_slicewise([EngineInput(volume, "input")], IDENTITY, 1, ModelGrid(model_size, None), RunOptions(batch_size=5))
    assert out.shape == (1,) + volume.shape
    np.testing.assert_array_equal(out[0], volume.array)


def _in_plane_model(batch):
    # A spatial operation that is not symmetric under flips or transposes, plus per-slice seeded noise:
    # if the engine sliced or oriented differently for two storages, the outputs would disagree.
    kernel = torch.tensor([[[[0.0, 1.0, 2.0], [0.0, 0.0, 0.0], [-1.0, 0.0, 0.5]]]])
    edges = F.conv2d(batch.images, kernel, padding=1)
    return edges + 0.1 * batch.randn(1, *batch.images.shape[2:])


@pytest.mark.parametrize("name", ["ras_stored", "sagittal", "coronal"])
def test_storage_order_does_not_change_the_result(name):
    base = axial_volume()
    other = _awkward_volumes()[name]
    expected = run_slicewise([EngineInput(base, "axial")], _in_plane_model, 1, AS_IS, RunOptions(seed=3))[0]
    got = run_slicewise([EngineInput(other, name)], _in_plane_model, 1, AS_IS, RunOptions(seed=3, batch_size=3))[0]
    # Map the result back to axial storage through the geometry, not through knowledge of how it was permuted.
    to_axial = AxialReorientation.for_volume(other)
    np.testing.assert_allclose(to_axial.apply(got), expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(to_axial.axial_ijk_to_ras(), base.ijk_to_ras, atol=1e-9)


def _to_sitk(volume: Volume) -> sitk.Image:
    image = sitk.GetImageFromArray(volume.array)
    lps = LPS_TO_RAS @ volume.ijk_to_ras
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    return image


@pytest.mark.parametrize("name", ["sagittal", "coronal", "ras_stored", "oblique"])
def test_reorientation_matches_an_independent_resampling(name):
    volume = _awkward_volumes()[name]
    reorientation = AxialReorientation.for_volume(volume)
    axial = reorientation.axial_volume(volume.array)
    reference = _to_sitk(Volume(np.zeros_like(axial.array), axial.ijk_to_ras))
    resampled = sitk.Resample(_to_sitk(volume), reference, sitk.Transform(), sitk.sitkNearestNeighbor, -999.0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(resampled), axial.array)
    # Canonical orientation: i towards patient left, j posterior, k superior (closest axes for oblique scans).
    directions = np.sign(np.round(axial.ijk_to_ras[:3, :3] / np.abs(axial.ijk_to_ras[:3, :3]).max(axis=0), 0))
    assert np.argmax(np.abs(axial.ijk_to_ras[:3, :3]), axis=0).tolist() == [0, 1, 2]
    assert [directions[0, 0], directions[1, 1], directions[2, 2]] == [-1, -1, 1]


def test_resampling_onto_reference_grid_matches_simpleitk():
    reference = axial_volume(shape=(10, 30, 28), spacing=(1.2, 1.2, 2.0))
    moving = axial_volume(shape=(14, 44, 40), spacing=(0.8, 0.9, 1.5), seed=1)
    moving = Volume(moving.array, rotation(2, 5) @ moving.ijk_to_ras)
    ours = resample_to_grid(moving, reference, fill=0.0)
    theirs = sitk.GetArrayFromImage(sitk.Resample(_to_sitk(moving), _to_sitk(reference), sitk.Transform(), sitk.sitkLinear, 0.0))
    # ITK extrapolates half a voxel beyond the outermost voxel centres; compare where both interpolate inside.
    inside = resample_to_grid(moving.with_array(np.ones_like(moving.array)), reference, fill=0.0).array > 1 - 1e-6
    assert inside.mean() > 0.5
    np.testing.assert_allclose(ours.array[inside], theirs[inside], atol=1e-4)
    np.testing.assert_array_equal(ours.ijk_to_ras, reference.ijk_to_ras)


def test_secondary_input_on_another_grid_is_resampled_with_a_warning():
    reference = axial_volume(shape=(8, 24, 24))
    secondary = restored(reference, (2, 0, 1), (False, True, False))  # same voxels, other storage: exact resample
    with pytest.warns(GridMismatchWarning):
        out = run_slicewise([EngineInput(reference, "T1"), EngineInput(secondary, "T2")],
                            lambda b: b.images[:, 1:2], 1, AS_IS, RunOptions())
    np.testing.assert_allclose(out[0], reference.array, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same grid: no warning
        run_slicewise([EngineInput(reference, "T1"), EngineInput(reference, "T2")], IDENTITY, 2, AS_IS, RunOptions())


def test_normalization_is_invertible_and_robust():
    rng = np.random.default_rng(0)
    brain = np.zeros((20, 40, 40), np.float32)
    brain[4:16, 8:32, 8:32] = 300.0 + rng.gamma(4.0, 100.0, size=(12, 24, 24))
    scaling = fit_mri_scaling(brain, clip=False)
    np.testing.assert_allclose(scaling.inverse(scaling.forward(brain)), brain, rtol=1e-5, atol=1e-3)
    inner = brain[4:16, 9:31, 9:31]  # the foreground without its one-voxel in-plane rim (partial-volume voxels)
    assert scaling.low == pytest.approx(np.percentile(inner, 0.5))  # zeros (background) are ignored
    clipped = fit_mri_scaling(brain).forward(brain)
    assert clipped.min() == -1.0 and clipped.max() == 1.0
    ct = ct_window()
    np.testing.assert_allclose(ct.forward(np.array([-1000.0, -175.0, 37.5, 250.0, 3000.0])), [-1, -1, 0, 1, 1], atol=1e-7)


def test_normalized_run_round_trips_within_float_precision(axial):
    scaling = fit_mri_scaling(axial.array - axial.array.min(), clip=False)
    shifted = axial.with_array(axial.array - axial.array.min())
    out = run_slicewise([EngineInput(shifted, "T1", scaling)], IDENTITY, 1, ModelGrid(64, None), RunOptions())
    np.testing.assert_allclose(scaling.inverse(out[0]), shifted.array, rtol=1e-5, atol=1e-4)


def test_padding_uses_each_inputs_background_and_resizing_keeps_aspect():
    fitter = SliceFitter(240, 240, 256)
    padded = fitter.to_model(torch.ones(1, 1, 240, 240), fill=-1.0)
    assert padded.shape == (1, 1, 256, 256) and padded[0, 0, 0, 0] == -1 and padded[0, 0, 8, 8] == 1
    big = SliceFitter(512, 400, 256)
    assert big.resized_shape == (256, 200)
    assert big.from_model(big.to_model(torch.zeros(2, 1, 512, 400), 0.0)).shape == (2, 1, 512, 400)


def test_seeded_noise_is_deterministic_per_slice_and_independent_of_batch_size(axial):
    noisy = lambda b: b.images + b.randn(1, *b.images.shape[2:])  # noqa: E731
    first = run_slicewise([EngineInput(axial, "x")], noisy, 1, AS_IS, RunOptions(seed=7, batch_size=4))
    again = run_slicewise([EngineInput(axial, "x")], noisy, 1, AS_IS, RunOptions(seed=7, batch_size=5))
    other = run_slicewise([EngineInput(axial, "x")], noisy, 1, AS_IS, RunOptions(seed=8, batch_size=4))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    noise = first[0] - axial.array
    assert not np.allclose(noise[0], noise[1])  # every slice draws its own noise


def test_cancellation_between_batches_raises_and_reports_progress(axial):
    token, seen = CancelToken(), []

    def progress(fraction, message):
        seen.append(message)
        if fraction > 0:
            token.cancel()

    with pytest.raises(Cancelled):
        run_slicewise([EngineInput(axial, "x")], IDENTITY, 1, AS_IS, RunOptions(batch_size=4, progress=progress, cancel=token))
    assert seen == ["slice 0/12", "slice 4/12"]


@pytest.mark.parametrize("array, message", [
    (np.full((5, 20, 20), 3.0, np.float32), "constant"),
    (np.where(np.eye(20, dtype=bool)[None].repeat(5, 0), np.nan, 1.0).astype(np.float32), "NaN/Inf"),
])
def test_engine_refuses_unusable_volumes(array, message):
    with pytest.raises(InputError, match=message):
        run_slicewise([EngineInput(Volume(array, np.eye(4)), "x")], IDENTITY, 1, AS_IS, RunOptions())


def test_wrong_channel_count_from_a_model_is_an_error(axial):
    with pytest.raises(RuntimeError, match="channels"):
        run_slicewise([EngineInput(axial, "x")], IDENTITY, 2, AS_IS, RunOptions())


def test_out_of_memory_halves_the_batch_and_retries_the_same_slices(axial):
    sizes = []

    def hungry(batch):
        sizes.append(batch.images.shape[0])
        if batch.images.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return batch.images

    out = run_slicewise([EngineInput(axial, "x")], hungry, 1, AS_IS, RunOptions(batch_size=8))
    np.testing.assert_array_equal(out[0], axial.array)
    assert sizes[:3] == [8, 4, 2] and set(sizes[2:]) == {2}


def test_out_of_memory_with_one_slice_is_a_clear_error(axial):
    def hopeless(batch):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(InputError, match="out of memory"):
        run_slicewise([EngineInput(axial, "x")], hopeless, 1, AS_IS, RunOptions(batch_size=2))
