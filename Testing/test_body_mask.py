"""The body mask (volume/body.py) and its use by the segmentation task: nothing is labelled on an arm or the table."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import restored
from scipy import ndimage

from MedDiffusionExtension.pipelines import segment
from MedDiffusionExtension.tasks import SegmentRequest
from MedDiffusionExtension.volume import AxialReorientation, Volume
from MedDiffusionExtension.volume import body as body_module
from MedDiffusionExtension.volume.body import body_mask
from MedDiffusionExtension.volume.engine import RunOptions
from MedDiffusionExtension.weights import load_model

AIR, TISSUE, LUNG, GAS = -1000.0, 40.0, -850.0, -1000.0
SQUARE = np.ones((3, 3), bool)  # dilations by chessboard distance: the working grid overshoots along each axis


def _ellipse(shape, centre, radii):
    y, x = np.ogrid[: shape[0], : shape[1]]
    return ((y - centre[0]) / radii[0]) ** 2 + ((x - centre[1]) / radii[1]) ** 2 <= 1


def torso_ct(size=96, slices=10, pixel_mm=1.0, seed=0):
    """Canonical axial CT (k, j, i; i -> L, j -> P): a trunk with lungs in the upper slices and bowel gas, an arm
    beside it and a table under it, both separated from the trunk by air. Returns (volume, trunk, arm, table)."""
    rng = np.random.default_rng(seed)
    shape = (size, size)
    trunk = _ellipse(shape, (size * 0.45, size * 0.52), (size * 0.3, size * 0.33))
    arm = _ellipse(shape, (size * 0.45, size * 0.06), (size * 0.08, size * 0.04))
    table = np.zeros(shape, bool)
    table[int(size * 0.85): int(size * 0.88), int(size * 0.1): int(size * 0.9)] = True
    array = np.full((slices, *shape), AIR, np.float32)
    for k in range(slices):
        array[k][trunk | arm | table] = TISSUE
        if k >= slices // 2:  # lungs: enclosed by the chest wall in the slice, open at the top of the scan
            array[k][_ellipse(shape, (size * 0.45, size * 0.35), (size * 0.15, size * 0.1))] = LUNG
            array[k][_ellipse(shape, (size * 0.45, size * 0.65), (size * 0.15, size * 0.1))] = LUNG
        else:
            array[k][_ellipse(shape, (size * 0.55, size * 0.5), (size * 0.05, size * 0.06))] = GAS
    array += rng.normal(0, 20, array.shape).astype(np.float32)
    volume = Volume(array, np.diag([-pixel_mm, -pixel_mm, 3.0, 1.0]))
    repeat = lambda mask: np.repeat(mask[None], slices, axis=0)  # noqa: E731
    return volume, repeat(trunk), repeat(arm), repeat(table)


def test_the_body_is_the_trunk_with_its_lungs_and_gas_without_the_arm_or_the_table():
    volume, trunk, arm, table = torso_ct()
    mask = body_mask(volume)
    assert mask.shape == volume.shape and mask.dtype == bool
    # Every trunk voxel, lungs and gas included, is inside; the arm and the table are not.
    assert mask[trunk].all()
    assert not mask[arm].any() and not mask[table].any()
    # Outside the trunk at most two pixels of the 2 mm working grid along each axis are added (4 pixels of 1 mm).
    grown = np.stack([ndimage.binary_dilation(t, SQUARE, iterations=4) for t in trunk])
    assert not (mask & ~grown).any()


@pytest.mark.parametrize("pixel_mm", [0.7, 1.2, 1.4, 2.5])
def test_the_whole_trunk_is_body_at_every_pixel_size(pixel_mm):
    # A 200 x 220 mm trunk, wide enough to be opened: the opening and its strided grids must not cut into it.
    size = int(round(100.0 / (0.3 * pixel_mm)))
    volume, trunk, arm, table = torso_ct(size=size, slices=3, pixel_mm=pixel_mm)
    mask = body_mask(volume)
    assert mask[trunk].all()
    assert not mask[arm].any() and not mask[table].any()


def _touching_pieces(size, pixel_mm, main, other, slices=4):
    """(volume, main, other): two tissue ellipses, (centre, radii) in mm on a grid of pixel_mm, in every slice."""
    shape = (size, size)
    to_px = lambda centre, radii: ([c / pixel_mm for c in centre], [r / pixel_mm for r in radii])  # noqa: E731
    first, second = _ellipse(shape, *to_px(*main)), _ellipse(shape, *to_px(*other))
    array = np.full((slices, *shape), AIR, np.float32)
    array[:, first | second] = TISSUE
    volume = Volume(array, np.diag([-pixel_mm, -pixel_mm, 3.0, 1.0]))
    repeat = lambda mask: np.repeat(mask[None], slices, axis=0)  # noqa: E731
    return volume, repeat(first), repeat(second & ~first)


def test_an_arm_resting_against_the_trunk_is_outside_the_body():
    # A 340 x 250 mm abdomen and a 90 x 80 mm upper arm pressed 3 mm into its flank: one connected region.
    volume, trunk, arm = _touching_pieces(160, 3.0, ((240, 260), (125, 170)), ((240, 260 - 170 - 40 + 3), (45, 40)))
    assert ndimage.label(trunk[0] | arm[0])[1] == 1
    mask = body_mask(volume)
    assert mask[trunk].all()
    # What the arm keeps is a sliver along the contact, well under a tenth of it.
    assert mask[arm].mean() < 0.1


def test_two_pieces_of_similar_size_are_both_body():
    # Below the pelvis both thighs (140 and 125 mm across) touch at the perineum; neither is a limb beside a trunk.
    volume, right, left = _touching_pieces(128, 3.0, ((192, 120), (70, 70)), ((192, 120 + 70 + 62 - 6), (62, 62)))
    mask = body_mask(volume)
    assert mask[right].all() and mask[left].all()


def test_the_mask_follows_the_voxels_whatever_the_storage_order():
    volume, *_ = torso_ct(size=64, slices=6)
    reference = body_mask(volume)
    for axes, flips in (((2, 1, 0), (False, True, False)), ((1, 0, 2), (True, False, True))):
        stored = restored(volume, axes, flips)
        mask = body_mask(stored)
        back = AxialReorientation.for_volume(stored).apply(mask)
        assert np.array_equal(back, reference)


def test_the_working_grid_changes_the_mask_only_at_the_skin(monkeypatch):
    volume, trunk, *_ = torso_ct(size=128, pixel_mm=0.5)  # a 2 mm working grid: every 4th pixel
    coarse = body_mask(volume)
    monkeypatch.setattr(body_module, "WORKING_SPACING_MM", 0.1)  # full resolution
    fine = body_mask(volume)
    differ = coarse != fine
    skin = np.stack([ndimage.binary_dilation(t, SQUARE, iterations=8) & ~ndimage.binary_erosion(t, SQUARE, iterations=8)
                     for t in trunk])
    assert differ.any() and not (differ & ~skin).any()


def test_nothing_above_the_threshold_gives_no_mask():
    volume = Volume(np.full((3, 20, 20), -1000.0, np.float32), np.eye(4))
    assert body_mask(volume) is None


@pytest.fixture(scope="module")
def micro_unet(tmp_path_factory):
    from tiny_models import write_micro_model

    return load_model(write_micro_model(tmp_path_factory.mktemp("models"), "segunet"))


def test_segmentation_is_background_outside_the_body_unless_asked(micro_unet):
    volume, trunk, arm, table = torso_ct(size=64, slices=4, pixel_mm=4.0)
    options = RunOptions(device="cpu", seed=0)
    # A random-weight UNet at a low threshold labels nearly everything, so the difference is visible.
    anywhere = segment(image=volume, loaded=micro_unet, threshold=0.01, samples=1, options=options, body_only=False)
    inside = segment(image=volume, loaded=micro_unet, threshold=0.01, samples=1, options=options)
    outside = ~body_mask(volume)
    assert anywhere.labels.array[arm].any()
    assert not inside.labels.array[outside].any()
    assert np.array_equal(inside.labels.array[~outside], anywhere.labels.array[~outside])


def test_the_request_carries_body_only_to_jobs_and_refuses_a_non_boolean():
    request = SegmentRequest(body_only=False)
    assert SegmentRequest.from_job(request.to_job()).body_only is False
    assert SegmentRequest().body_only is True
    with pytest.raises(Exception, match="body_only must be true or false"):
        SegmentRequest(body_only="no")
