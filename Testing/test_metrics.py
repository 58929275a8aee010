"""Metrics in MedDiffusionExtension.metrics against scikit-image (PSNR, SSIM) and MONAI (Dice, IoU, HD95)."""

import warnings

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from MedDiffusionExtension import metrics
from MedDiffusionExtension.errors import InputError

SHAPES = [(40, 33), (19, 24, 21)]


def _image_pair(shape, seed, noise=0.1):
    rng = np.random.default_rng(seed)
    reference = ndimage.gaussian_filter(rng.random(shape), 2.0)
    reference = (reference - reference.min()) / (reference.max() - reference.min())
    prediction = np.clip(reference + noise * rng.standard_normal(shape), 0.0, 1.0)
    return prediction, reference


def _skimage_ssim(prediction, reference, data_range=1.0, full=False):
    return structural_similarity(
        reference, prediction, data_range=data_range, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, full=full,
    )


def _blob(shape, seed, threshold):
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.standard_normal(shape), 2.5) > threshold


def _monai(fn, pred, ref, **kwargs):
    # MONAI wants (batch, channel, *spatial); it warns on empty masks, which some tests use on purpose.
    pred_batch, ref_batch = torch.as_tensor(pred[None, None]), torch.as_tensor(ref[None, None])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(fn(pred_batch, ref_batch, include_background=True, **kwargs).item())


# ------------------------------------------------------------------------------------------------ image


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_psnr_ssim_mae_match_references(shape, seed):
    prediction, reference = _image_pair(shape, seed)
    assert metrics.psnr(prediction, reference) == pytest.approx(
        peak_signal_noise_ratio(reference, prediction, data_range=1.0), abs=1e-9)
    assert metrics.ssim(prediction, reference) == pytest.approx(_skimage_ssim(prediction, reference), abs=1e-9)
    assert metrics.mae(prediction, reference) == pytest.approx(np.abs(prediction - reference).mean(), abs=1e-12)
    assert 0.3 < metrics.ssim(prediction, reference) < 0.99


def test_float32_input_matches_skimage_float64():
    prediction, reference = _image_pair((30, 30), 3)
    p32, r32 = prediction.astype(np.float32), reference.astype(np.float32)
    expected = _skimage_ssim(p32.astype(np.float64), r32.astype(np.float64))
    assert metrics.ssim(p32, r32) == pytest.approx(expected, abs=1e-9)


def test_other_data_range_matches_skimage():
    prediction, reference = _image_pair((32, 28), 4)
    prediction, reference = 2 * prediction - 1, 2 * reference - 1
    assert metrics.psnr(prediction, reference, data_range=2.0) == pytest.approx(
        peak_signal_noise_ratio(reference, prediction, data_range=2.0), abs=1e-9)
    assert metrics.ssim(prediction, reference, data_range=2.0) == pytest.approx(
        _skimage_ssim(prediction, reference, data_range=2.0), abs=1e-9)


def test_identical_and_constant_images():
    _, reference = _image_pair((20, 20, 20), 5)
    assert metrics.psnr(reference, reference) == float("inf")
    assert metrics.ssim(reference, reference) == pytest.approx(1.0, abs=1e-12)
    assert metrics.mae(reference, reference) == 0.0
    constant = np.full((16, 16), 0.5)
    assert metrics.ssim(constant, constant) == pytest.approx(_skimage_ssim(constant, constant), abs=1e-12)
    assert np.isnan(metrics.nmae(constant + 0.1, constant))


def test_known_psnr_value():
    reference = np.zeros((16, 16))
    prediction = np.full((16, 16), 0.1)  # MSE 0.01 -> 20 dB
    assert metrics.psnr(prediction, reference) == pytest.approx(20.0, abs=1e-9)


def test_nmae_divides_mae_by_reference_range():
    rng = np.random.default_rng(6)
    reference = 100.0 + 50.0 * rng.random((12, 12))
    prediction = reference + rng.standard_normal((12, 12))
    expected = np.abs(prediction - reference).mean() / (reference.max() - reference.min())
    assert metrics.nmae(prediction, reference) == pytest.approx(expected, rel=1e-12)
    # Scale invariance is the point of normalizing.
    assert metrics.nmae(3 * prediction, 3 * reference) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_masked_metrics(shape):
    prediction, reference = _image_pair(shape, 7)
    mask = _blob(shape, 8, 0.0)
    diff = prediction[mask] - reference[mask]
    assert metrics.mae(prediction, reference, mask=mask) == pytest.approx(np.abs(diff).mean(), abs=1e-12)
    assert metrics.psnr(prediction, reference, mask=mask) == pytest.approx(
        10 * np.log10(1.0 / np.mean(diff**2)), abs=1e-9)
    ref_range = reference[mask].max() - reference[mask].min()
    assert metrics.nmae(prediction, reference, mask=mask) == pytest.approx(np.abs(diff).mean() / ref_range)
    _, full_map = _skimage_ssim(prediction, reference, full=True)
    assert metrics.ssim(prediction, reference, mask=mask) == pytest.approx(full_map[mask].mean(), abs=1e-9)
    np.testing.assert_allclose(metrics.ssim_map(prediction, reference), full_map, atol=1e-9)


def test_interior_mask_ssim_equals_unmasked():
    prediction, reference = _image_pair((24, 30), 9)
    interior = np.zeros(prediction.shape, bool)
    interior[5:-5, 5:-5] = True
    assert metrics.ssim(prediction, reference, mask=interior) == pytest.approx(
        metrics.ssim(prediction, reference), abs=1e-12)


def test_image_input_errors():
    image = np.zeros((12, 12))
    with pytest.raises(InputError):
        metrics.psnr(image, np.zeros((12, 13)))
    with pytest.raises(InputError):
        metrics.ssim(np.zeros((12, 8)), np.zeros((12, 8)))  # smaller than the 11-voxel window
    with pytest.raises(InputError):
        metrics.mae(image, image, mask=np.zeros((12, 12), bool))
    with pytest.raises(InputError):
        metrics.mae(image, image, mask=np.full((12, 12), 0.5))
    with pytest.raises(InputError):
        metrics.psnr(image, image, data_range=0)
    with pytest.raises(InputError):
        metrics.mae(np.zeros(12), np.zeros(12))


def test_to_unit_range():
    out = metrics.to_unit_range(np.array([-1.2, -1.0, 0.0, 0.5, 1.0, 1.3]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 0.75, 1.0, 1.0])


def test_image_metrics_bundle():
    prediction, reference = _image_pair((20, 20), 10)
    bundle = metrics.image_metrics(prediction, reference)
    assert set(bundle) == {"psnr", "ssim", "mae", "nmae"}
    assert bundle["ssim"] == metrics.ssim(prediction, reference)


# ----------------------------------------------------------------------------------------- segmentation


@pytest.mark.parametrize(
    "shape, spacing",
    [((26, 30, 22), (2.5, 0.8, 1.1)), ((18, 40, 36), (3.0, 0.7, 0.7)), ((48, 44), (0.6, 1.7))],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_overlap_and_hd95_match_monai(shape, spacing, seed):
    prediction = _blob(shape, 2 * seed, 0.05)
    reference = _blob(shape, 2 * seed + 1, 0.0)
    assert prediction.any() and reference.any()
    assert metrics.dice(prediction, reference) == pytest.approx(
        _monai(compute_dice, prediction, reference), abs=1e-6)
    assert metrics.iou(prediction, reference) == pytest.approx(_monai(compute_iou, prediction, reference), abs=1e-6)
    expected = _monai(compute_hausdorff_distance, prediction, reference, percentile=95, spacing=spacing)
    assert metrics.hd95(prediction, reference, spacing) == pytest.approx(expected, rel=1e-5)
    assert expected > 0


def test_hd95_close_masks_and_blob_touching_border():
    reference = np.zeros((20, 20, 20), bool)
    reference[3:12, 0:15, 5:20] = True  # touches two array faces
    prediction = np.roll(reference, 2, axis=0)
    spacing = (2.0, 1.0, 0.5)
    expected = _monai(compute_hausdorff_distance, prediction, reference, percentile=95, spacing=spacing)
    assert metrics.hd95(prediction, reference, spacing) == pytest.approx(expected, rel=1e-5)
    assert metrics.hd95(reference, reference, spacing) == 0.0


def test_hd95_shifted_cube_is_shift_in_mm():
    reference = np.zeros((30, 30, 30), bool)
    reference[10:20, 10:20, 10:20] = True
    prediction = np.roll(reference, 3, axis=1)
    assert metrics.hd95(prediction, reference, (1.0, 2.0, 1.0)) == pytest.approx(6.0)


def test_overlap_known_values():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[0:4, 0:4] = True  # 16 voxels
    b[2:6, 0:4] = True  # 16 voxels, 8 shared
    assert metrics.dice(a, b) == pytest.approx(0.5)
    assert metrics.iou(a, b) == pytest.approx(8 / 24)
    assert metrics.dice(a.astype(np.uint8), b.astype(np.float32)) == pytest.approx(0.5)


def test_empty_segmentations():
    empty = np.zeros((12, 12, 12), bool)
    cube = empty.copy()
    cube[3:7, 3:7, 3:7] = True
    assert metrics.segmentation_metrics(empty, empty) == {"dice": 1.0, "iou": 1.0, "hd95": 0.0}
    for pred, ref in [(cube, empty), (empty, cube)]:
        assert metrics.segmentation_metrics(pred, ref, spacing=1.5) == {"dice": 0.0, "iou": 0.0, "hd95": float("inf")}
        # Dice/IoU agree with MONAI's ignore_empty=False; MONAI's HD95 is nan here (documented difference).
        assert metrics.dice(pred, ref) == _monai(compute_dice, pred, ref, ignore_empty=False)
        assert metrics.iou(pred, ref) == _monai(compute_iou, pred, ref, ignore_empty=False)
        assert np.isnan(_monai(compute_hausdorff_distance, pred, ref, percentile=95))
    assert _monai(compute_dice, empty, empty, ignore_empty=False) == 1.0


def test_segmentation_input_errors():
    with pytest.raises(InputError):
        metrics.dice(np.full((5, 5), 0.5), np.zeros((5, 5)))
    with pytest.raises(InputError):
        metrics.dice(np.zeros((5, 5), bool), np.zeros((5, 6), bool))
    with pytest.raises(InputError):
        metrics.hd95(np.ones((5, 5), bool), np.ones((5, 5), bool), spacing=(1.0, 1.0, 1.0))


# --------------------------------------------------------------------------------------------- stability


def test_pairwise_image_agreement():
    rng = np.random.default_rng(11)
    _, reference = _image_pair((24, 24), 12)
    samples = np.stack([np.clip(reference + 0.05 * rng.standard_normal(reference.shape), 0, 1) for _ in range(3)])
    pairs = [(0, 1), (0, 2), (1, 2)]
    result = metrics.pairwise_image_agreement(samples)
    assert result["psnr"] == pytest.approx(
        np.mean([peak_signal_noise_ratio(samples[i], samples[j], data_range=1.0) for i, j in pairs]), abs=1e-9)
    assert result["ssim"] == pytest.approx(np.mean([_skimage_ssim(samples[i], samples[j]) for i, j in pairs]))
    assert metrics.pairwise_image_agreement([reference, reference])["psnr"] == float("inf")
    with pytest.raises(InputError):
        metrics.pairwise_image_agreement([reference])


def test_pairwise_dice():
    segmentations = [_blob((16, 16, 16), seed, 0.0) for seed in range(4)]
    expected = np.mean([metrics.dice(segmentations[i], segmentations[j]) for i in range(4) for j in range(i + 1, 4)])
    assert metrics.pairwise_dice(segmentations) == pytest.approx(expected)
    assert metrics.pairwise_dice([segmentations[0]] * 3) == 1.0
    with pytest.raises(InputError):
        metrics.pairwise_dice(segmentations[:1])
