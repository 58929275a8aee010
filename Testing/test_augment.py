"""Acquisition randomization of training slices (training.data.augment): seeded, within its documented ranges,
labels aligned with images, contrast phase only inside the organs, T2 misalignment bounded, and nothing at all when
a dataset has no augmenter."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from MedDiffusionExtension.errors import InputError
from MedDiffusionExtension.volume.slices import ModelGrid
from training.data import (CTAcquisition, CTAugment, MRIAcquisition, MRIAugment, SegmentationSlices, TranslationSlices,
                           build_augmentation, read_brats, read_btcv)
from training.data.augment import (ORGANS, PHASE_HU, AugmentedItems, item_generator, sampling_grid, similarity,
                                   thickness_weights)
from training.phantoms import write_brats_case, write_btcv_dataset

LIVER, SPLEEN, STOMACH = 6, 1, 7


def _hu(values_hu):
    return (torch.as_tensor(values_hu, dtype=torch.float32) + 175.0) / 212.5 - 1.0


def _disc(size, cy, cx, radius):
    axis = torch.arange(size, dtype=torch.float32) + 0.5
    rows, columns = torch.meshgrid(axis, axis, indexing="ij")
    return (rows - cy) ** 2 + (columns - cx) ** 2 <= radius ** 2


def _ct_slab(size=128, slices=3, seed=0):
    """(slices, 2, S, S): a body of soft tissue (40 HU) with liver, spleen and a stomach holding gas, slight texture."""
    generator = torch.Generator().manual_seed(seed)
    image, label = torch.full((size, size), -1.0), torch.zeros(size, size)
    s = size / 128
    image[_disc(size, 64 * s, 64 * s, 52 * s)] = float(_hu(40.0))
    for organ, (cy, cx, r), hu in ((LIVER, (55, 45, 20), 100.0), (SPLEEN, (60, 92, 12), 110.0), (STOMACH, (85, 70, 12), 30.0)):
        inside = _disc(size, cy * s, cx * s, r * s)
        label[inside], image[inside] = organ, float(_hu(hu))
    image[_disc(size, 85 * s, 70 * s, 5 * s)] = -1.0  # gas in the stomach, below the window
    image = (image + 0.03 * torch.randn(size, size, generator=generator)).clamp(-1, 1)
    image[image < -0.95] = -1.0
    return torch.stack([image, label])[None].repeat(slices, 1, 1, 1)


def _mri_slab(size=64, slices=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    brain = _disc(size, size * 0.45, size * 0.55, size * 0.3)
    x = torch.full((4, size, size), -1.0)
    for channel in range(4):
        x[channel][brain] = torch.rand(int(brain.sum()), generator=generator) * 1.6 - 0.8
    return x[None].repeat(slices, 1, 1, 1)


# ---- seeds and ranges --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("augment, slab", [(CTAugment(), _ct_slab()), (MRIAugment(), _mri_slab())], ids=["ct", "mri"])
def test_same_seed_same_result_and_items_differ(augment, slab):
    first = augment(slab, item_generator(0, 5, 0))
    torch.testing.assert_close(augment(slab, item_generator(0, 5, 0)), first, rtol=0, atol=0)
    assert not torch.equal(augment(slab, item_generator(0, 6, 0)), first)  # another item
    assert not torch.equal(augment(slab, item_generator(0, 5, 1)), first)  # another epoch
    assert not torch.equal(augment(slab, item_generator(1, 5, 0)), first)  # another seed
    assert first.shape == slab.shape[1:] and first[0].min() >= -1 and first[0].max() <= 1


def _within(value, bounds, what):
    assert bounds[0] - 1e-9 <= value <= bounds[1] + 1e-9, f"{what}={value} outside {bounds}"


def test_ct_draws_stay_within_the_documented_ranges():
    p, augment = CTAcquisition(), CTAugment()
    draws = [augment.draw(item_generator(3, i), 2, 64) for i in range(300)]
    for d in draws:
        _within(d.enhancement, p.enhancement, "enhancement")
        for offset in d.organ_offsets_hu:
            _within(offset, (-p.organ_jitter_hu, p.organ_jitter_hu), "organ offset")
        _within(d.tissue_scale, p.tissue_scale, "tissue scale")
        _within(d.tissue_offset_hu, (-p.tissue_offset_hu, p.tissue_offset_hu), "tissue offset")
        _within(d.thickness_mm, p.thickness_mm, "thickness")
        _within(d.scale, p.scale, "scale")
        _within(d.rotation_deg, (-p.rotation_deg, p.rotation_deg), "rotation")
        for shift in d.shift + d.fov_centre:
            _within(abs(shift), (0, max(p.shift, p.fov_offset)), "shift")
        _within(d.in_plane_mm, p.in_plane_mm, "in-plane spacing")
        _within(d.sharpen, p.sharpen, "sharpen")
        _within(d.noise_hu, p.noise_hu, "noise")
        _within(d.noise_correlation_px, p.noise_correlation_px, "noise correlation")
        if d.fov_diameter_mm is not None:
            _within(d.fov_diameter_mm, p.fov_diameter_mm, "field of view")
    phases = [d.phase for d in draws]
    assert set(phases) == {None, *PHASES_USED} and 0.7 < sum(p is not None for p in phases) / len(phases) < 0.9
    assert 0.2 < sum(d.fov_diameter_mm is not None for d in draws) / len(draws) < 0.4


PHASES_USED = ("non_contrast", "arterial", "portal_venous")


def test_mri_draws_stay_within_the_documented_ranges():
    p, augment = MRIAcquisition(), MRIAugment()
    for i in range(200):
        d = augment.draw(item_generator(4, i), 4, 32)
        for c in range(4):
            _within(d.gamma[c], p.gamma, "gamma")
            _within(d.bias_strength[c], (0, p.bias_strength), "bias")
            _within(d.noise[c], p.noise, "noise")
            _within(d.in_plane_mm[c], p.in_plane_mm, "in-plane spacing")
            _within(d.thickness_mm[c], p.thickness_mm, "thickness")
        _within(d.scale, p.scale, "scale")
        _within(d.rotation_deg, (-p.rotation_deg, p.rotation_deg), "rotation")
        for value in d.misalign_mm:
            _within(value, (-p.misalign_mm, p.misalign_mm), "misalignment")
        _within(d.misalign_deg, (-p.misalign_deg, p.misalign_deg), "misalignment angle")
        if d.crop is not None:
            for fraction in d.crop:
                _within(fraction, (0, p.crop_fraction), "crop")


def test_outputs_stay_in_range_and_labels_keep_their_values():
    slab = _ct_slab()
    for i in range(20):
        out = CTAugment()(slab, item_generator(0, i))
        assert out[0].min() >= -1 and out[0].max() <= 1
        assert set(out[1].unique().tolist()) <= {0.0, LIVER, SPLEEN, STOMACH}
        mri = MRIAugment()(_mri_slab(), item_generator(0, i))
        assert mri.min() >= -1 and mri.max() <= 1 and torch.isfinite(mri).all()


def test_neutral_settings_change_nothing():
    ct, mri = _ct_slab(), _mri_slab()
    torch.testing.assert_close(CTAugment(CTAcquisition.neutral())(ct, item_generator(0, 1)), ct[1], rtol=0, atol=0)
    torch.testing.assert_close(MRIAugment(MRIAcquisition.neutral())(mri, item_generator(0, 1)), mri[2], rtol=0, atol=0)


# ---- the operations ----------------------------------------------------------------------------------------------


def test_thickness_weights_follow_the_slice_profile():
    torch.testing.assert_close(thickness_weights(5.0, 2.5, 1), torch.tensor([0.25, 0.5, 0.25]))
    torch.testing.assert_close(thickness_weights(1.0, 2.5, 1), torch.tensor([0.0, 1.0, 0.0]))  # thinner: unchanged
    assert CTAugment().radius() == 1 and CTAugment().radius(1.0) == 2 and MRIAugment().radius() == 3
    # a thick slice averages the neighbours of the same case
    slab = _ct_slab(slices=3)
    slab[0, 0], slab[2, 0] = -1.0, -1.0
    thick = CTAugment(CTAcquisition.neutral(thickness_mm=(5.0, 5.0)))(slab, item_generator(0, 0))
    body = slab[1, 0] > -0.9
    expected = (0.5 * slab[1, 0] - 0.5)[body]
    torch.testing.assert_close(thick[0][body], expected, rtol=0, atol=1e-5)


def test_sampling_grid_matches_affine_grid():
    forward = similarity(1.1, 7.0, (0.1, -0.05))
    inverse = torch.linalg.inv(torch.tensor([[*forward[:3]], [*forward[3:]], [0, 0, 1]], dtype=torch.float64))
    expected = F.affine_grid(inverse[None, :2].float(), [1, 1, 24, 24], align_corners=False)[0]
    torch.testing.assert_close(sampling_grid(forward, 24), expected, rtol=0, atol=1e-5)


def test_coarse_in_plane_spacing_blurs_and_fine_spacing_does_not():
    slab = _ct_slab(slices=1)
    fine = CTAugment(CTAcquisition.neutral(in_plane_mm=(1.0, 1.0)))(slab, item_generator(0, 0))
    torch.testing.assert_close(fine, slab[0], rtol=0, atol=0)
    coarse = CTAugment(CTAcquisition.neutral(in_plane_mm=(3.2, 3.2)))(slab, item_generator(0, 0))
    edges = lambda x: (x[:, 1:] - x[:, :-1]).abs().mean()  # noqa: E731
    assert edges(coarse[0]) < 0.8 * edges(slab[0, 0])
    torch.testing.assert_close(coarse[1], slab[0, 1], rtol=0, atol=0)  # the label map is the ground truth


def test_labels_stay_aligned_with_the_image_after_every_transform():
    size = 256
    image, label = torch.full((size, size), -1.0), torch.zeros(size, size)
    disc = _disc(size, 120, 136, 60)
    image[disc], label[disc] = float(_hu(100.0)), LIVER
    slab = torch.stack([image, label])[None].repeat(3, 1, 1, 1)
    moved = 0
    for i in range(24):
        out = CTAugment()(slab, item_generator(11, i))
        organ = out[1] == LIVER
        assert set(out[1].unique().tolist()) <= {0.0, LIVER}
        if organ.sum() < 100:  # an unlucky field of view may leave little
            continue
        level = float(out[0][organ].median())
        bright = out[0] > (level - 1.0) / 2.0
        iou = float((bright & organ).sum()) / float((bright | organ).sum())
        assert iou > 0.9, f"item {i}: IoU {iou:.3f}"
        moved += int(not torch.equal(organ, disc))
    assert moved >= 20  # the geometry really moved the anatomy


def test_phase_changes_hu_only_inside_the_labelled_organs():
    slab = _ct_slab(slices=1)
    image, label = slab[0, 0], slab[0, 1]
    augment = CTAugment(CTAcquisition.neutral(phase_probability=1.0, enhancement=(0.7, 1.3), organ_jitter_hu=20.0))
    seen = set()
    for i in range(12):
        draw = augment.draw(item_generator(2, i), 2, 128)
        out = augment.apply(slab, draw)
        seen.add(draw.phase)
        change = out[0] - image
        assert torch.equal(out[0][label == 0], image[label == 0])  # unlabelled tissue untouched (no tissue jitter)
        gas = (label == STOMACH) & (image <= -1.0)
        assert torch.equal(out[0][gas], image[gas])  # outside the window: stays there
        for organ in (LIVER, SPLEEN):
            inside = label == organ
            assert float(change[inside].max() - change[inside].min()) < 1e-5  # one shift per organ: texture kept
            native, phase = PHASE_HU["non_contrast"][organ - 1], PHASE_HU[draw.phase][organ - 1]
            expected = native + (phase - native) * draw.enhancement + draw.organ_offsets_hu[organ - 1]
            mean_hu = float(out[0][inside].mean() + 1.0) * 212.5 - 175.0
            assert mean_hu == pytest.approx(expected, abs=0.5)
    assert seen == set(PHASES_USED)
    assert len(ORGANS) == 13 and all(len(v) == 13 for v in PHASE_HU.values())


def test_tissue_jitter_moves_unlabelled_tissue_inside_the_window_only():
    slab = _ct_slab(slices=1)
    augment = CTAugment(CTAcquisition.neutral(tissue_scale=(1.1, 1.1), tissue_offset_hu=20.0))
    draw = augment.draw(item_generator(0, 3), 2, 128)
    out = augment.apply(slab, draw)
    image, label = slab[0, 0], slab[0, 1]
    air = image <= -1.0
    assert torch.equal(out[0][air], image[air])
    tissue = (label == 0) & ~air
    hu_in, hu_out = (image[tissue] + 1) * 212.5 - 175, (out[0][tissue] + 1) * 212.5 - 175
    expected = (40 + (hu_in - 40) * 1.1 + draw.tissue_offset_hu).clamp(-175, 250)  # the window still clips
    torch.testing.assert_close(hu_out, expected, rtol=0, atol=0.05)
    assert torch.equal(out[0][label > 0], image[label > 0])


def test_truncated_field_of_view_blanks_image_and_label_together():
    slab = _ct_slab(slices=1)
    augment = CTAugment(CTAcquisition.neutral(fov_probability=1.0, fov_diameter_mm=(120.0, 120.0), fov_offset=0.0))
    out = augment(slab, item_generator(0, 0))
    outside = ~_disc(128, 64, 64, 60.0 / 1.6)
    assert (out[0][outside] == -1).all() and (out[1][outside] == 0).all()
    assert torch.equal(out[:, ~outside], slab[0][:, ~outside])


def test_a_cut_field_blanks_straight_bands_and_changes_no_other_draw():
    slab = _ct_slab(slices=1)
    cut = CTAugment(CTAcquisition.neutral(cut_probability=1.0))
    plain = CTAugment(CTAcquisition.neutral())
    rows, columns = torch.meshgrid(torch.arange(128) + 0.5, torch.arange(128) + 0.5, indexing="ij")
    fractions = []
    for item in range(40):
        draw = cut.draw(item_generator(0, item), size=128)
        assert draw.cut is not None and max(draw.cut) >= 0.1  # at least one side, by 10-45 % of the field
        assert draw.cut[0] + draw.cut[1] <= 0.6 + 1e-6 and draw.cut[2] + draw.cut[3] <= 0.6 + 1e-6
        other = plain.draw(item_generator(0, item), size=128)
        assert dataclasses.replace(draw, cut=None, noise=other.noise) == dataclasses.replace(other, noise=other.noise)
        assert torch.equal(draw.noise, other.noise)
        left, right, top, bottom = (f * 128 for f in draw.cut)
        outside = (columns < left) | (columns > 128 - right) | (rows < top) | (rows > 128 - bottom)
        out = cut.apply(slab.clone(), draw)
        assert (out[0][outside] == -1).all() and (out[1][outside] == 0).all()
        assert torch.equal(out[:, ~outside], slab[0][:, ~outside])
        fractions += [f for f in draw.cut if f > 0]
    assert max(fractions) <= 0.45 and len(fractions) > 40  # some items are cut on more than one side
    # Off (the default): no item is cut.
    assert all(CTAugment().draw(item_generator(0, item)).cut is None for item in range(40))


def test_ct_noise_reaches_tissue_but_not_air():
    slab = _ct_slab(slices=1)
    augment = CTAugment(CTAcquisition.neutral(noise_hu=(30.0, 30.0), noise_correlation_px=(2.0, 2.0)))
    out = augment(slab, item_generator(0, 0))
    air, tissue = slab[0, 0] <= -1.0, slab[0, 1] == LIVER
    assert torch.equal(out[0][air], slab[0, 0][air])
    std_hu = float((out[0] - slab[0, 0])[tissue].std()) * 212.5
    assert 20.0 < std_hu < 40.0


def test_misalignment_moves_only_t2_and_within_its_bound():
    size, spacing = 64, 1.875
    x = torch.full((4, size, size), -1.0)
    blob = _disc(size, 20, 44, 6)  # off centre: rotation about the centre moves it too
    x[:, blob] = 0.8
    slab = x[None]
    params = MRIAcquisition.neutral(misalign_mm=2.0, misalign_deg=2.0)
    augment = MRIAugment(params)

    def centroid(image):
        weight = (image + 1.0).clamp_min(0)
        axis = torch.arange(size, dtype=torch.float32) + 0.5
        return torch.stack([(weight.sum(1) * axis).sum(), (weight.sum(0) * axis).sum()]) / weight.sum()

    centre = centroid(x[1])
    radius_px = float(torch.linalg.norm(centre - size / 2))
    bound_px = math.sqrt(2) * 2.0 / spacing + radius_px * 2 * math.sin(math.radians(2.0) / 2)
    largest = 0.0
    for i in range(40):
        draw = augment.draw(item_generator(5, i), 4, size)
        out = augment.apply(slab, draw)
        for channel in (0, 2, 3):  # T1 and the targets stay where they were
            torch.testing.assert_close(out[channel], x[channel], rtol=0, atol=0)
        moved = float(torch.linalg.norm(centroid(out[1]) - centre))
        assert moved <= bound_px + 0.05, f"item {i}: T2 moved {moved:.2f} px > {bound_px:.2f}"
        largest = max(largest, moved)
    assert largest > 0.5


def test_field_of_view_moves_every_channel_alike():
    x = _mri_slab(size=48, slices=1)
    x[0, 1:] = x[0, 0]  # four identical channels
    augment = MRIAugment(MRIAcquisition.neutral(scale=(0.85, 1.15), shift=0.08, rotation_deg=8.0,
                                                crop_probability=1.0))
    for i in range(5):
        out = augment(x, item_generator(0, i))
        assert not torch.equal(out[0], x[0, 0])
        for channel in (1, 2, 3):
            torch.testing.assert_close(out[channel], out[0], rtol=0, atol=1e-6)


def test_scanner_effects_reach_the_sources_only():
    x = _mri_slab(size=48, slices=7)
    augment = MRIAugment(dataclasses.replace(MRIAcquisition(), scale=(1.0, 1.0), shift=0.0, rotation_deg=0.0,
                                             crop_probability=0.0))
    for i in range(5):
        out = augment(x, item_generator(0, i))
        torch.testing.assert_close(out[2:], x[3, 2:], rtol=0, atol=0)
        assert not torch.equal(out[0], x[3, 0])
        far = F.max_pool2d((x[3, :1] > -1.0).float()[None], 9, stride=1, padding=4)[0, 0] == 0
        assert (out[0][far] == -1.0).all()  # background away from the brain stays background


# ---- datasets and recipes ----------------------------------------------------------------------------------------


class _FakeSlices:
    def __init__(self, slab_count=6, size=32):
        self.arrays = [_mri_slab(size=size, slices=slab_count, seed=1)]
        self.index = [(0, k) for k in range(slab_count)]

    def slab(self, item, radius):
        number, k = self.index[item]
        picks = np.clip(np.arange(k - radius, k + radius + 1), 0, self.arrays[number].shape[0] - 1)
        return self.arrays[number][picks]


class _Items(Dataset):
    def __init__(self):
        self.slices = _FakeSlices()
        self.augmented = AugmentedItems(MRIAugment(), len(self.slices.index))

    def __len__(self):
        return len(self.slices.index)

    def __getitem__(self, item):
        return self.augmented(self.slices, item)


def _epochs(workers, epochs=2):
    dataset = _Items()
    loader = DataLoader(dataset, batch_size=2, num_workers=workers, persistent_workers=workers > 0)
    return [torch.cat(list(loader)) for _ in range(epochs)]


def test_draws_do_not_depend_on_the_number_of_workers_and_change_every_epoch():
    alone, shared = _epochs(0), _epochs(2)
    for a, b in zip(alone, shared):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(alone[0], alone[1])
    dataset = _Items()
    dataset.augmented.set_epoch(3)
    torch.testing.assert_close(dataset[2], dataset[2], rtol=0, atol=0)  # an explicit epoch: the same draw


@pytest.fixture(scope="module")
def brats_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("brats")
    write_brats_case(root, 0, seed=0, shape=(40, 40, 20))
    return root


@pytest.fixture(scope="module")
def btcv_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("btcv")
    write_btcv_dataset(root, 1, seed=0, shape=(64, 64, 10))
    return root


def test_datasets_without_augmenter_give_the_cached_slices_exactly(brats_root, btcv_root, tmp_path):
    cases = read_brats(brats_root)
    plain = TranslationSlices(cases, ModelGrid(32, None), tmp_path / "mri", min_foreground=0.0)
    augmented = TranslationSlices(cases, ModelGrid(32, None), tmp_path / "mri", min_foreground=0.0, augment=MRIAugment())
    (cached,) = plain.slices.arrays
    for item in (6, 10, 13):
        number, k = plain.slices.index[item]
        sample = plain[item]
        assert torch.equal(torch.cat([sample["sources"], sample["targets"]]), torch.from_numpy(np.array(cached[k])))
        other = augmented[item]
        assert other["sources"].shape == sample["sources"].shape and not torch.equal(other["sources"], sample["sources"])
    assert augmented.augmented.distance(0) == pytest.approx(155.0 / 20)  # from the NIfTI header
    torch.testing.assert_close(plain.slices.slab(0, 1)[1:], torch.from_numpy(np.array(cached[:2])), rtol=0, atol=0)
    torch.testing.assert_close(plain.slices.slab(0, 1)[0], torch.from_numpy(np.array(cached[0])), rtol=0, atol=0)

    ct_cases = read_btcv(btcv_root)
    plain_ct = SegmentationSlices(ct_cases, ModelGrid(32, None), tmp_path / "ct")
    augmented_ct = SegmentationSlices(ct_cases, ModelGrid(32, None), tmp_path / "ct", augment=CTAugment())
    augmented_ct.set_epoch(0)  # the same draw every time an item is fetched
    for item in range(len(plain_ct)):
        number, k = plain_ct.slices.index[item]
        stacked = torch.from_numpy(np.array(plain_ct.slices.arrays[number][k]))
        assert torch.equal(plain_ct[item]["image"], stacked[:1])
        expected = augmented_ct.augmented(augmented_ct.slices, item)
        sample = augmented_ct[item]
        assert torch.equal(sample["image"], expected[:1])
        assert torch.equal(sample["mask"], (expected[1:2] > 0).float())  # the mask of the augmented label map


def test_recipe_option_builds_the_augmenter():
    assert build_augmentation("none", "ct") is None and build_augmentation(None, "mri") is None
    ct = build_augmentation("acquisition", "ct", spacing_mm=1.6)
    assert isinstance(ct, CTAugment) and ct.params == CTAcquisition()
    mri = build_augmentation({"seed": 3, "gamma": [0.8, 1.2]}, "mri", spacing_mm=1.875)
    assert isinstance(mri, MRIAugment) and mri.seed == 3 and mri.params.gamma == (0.8, 1.2)
    with pytest.raises(InputError, match="no option"):
        build_augmentation({"gama": [1, 2]}, "mri")
    with pytest.raises(InputError, match="augment must be"):
        build_augmentation("elastic", "ct")
    from training.recipes import build_recipe

    assert build_recipe("cdm").config["augment"] == "acquisition"
    assert build_recipe("sdseg", {"augment": "none"}).config["augment"] == "none"
