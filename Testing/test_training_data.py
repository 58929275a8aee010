"""Training data: readers for the real layouts (on generated phantoms), the papers' splits, cached slice datasets
prepared exactly as inference prepares its slices."""

from __future__ import annotations


import json
from pathlib import Path

import pytest
import torch

from MedDiffusionExtension.errors import InputError
from MedDiffusionExtension.volume import read_volume
from MedDiffusionExtension.volume.engine import EngineInput, RunOptions, run_slicewise
from MedDiffusionExtension.volume.slices import ModelGrid
from MedDiffusionExtension.volume.normalize import fit_mri_scaling
from training.data import (Case, SegmentationSlices, TranslationSlices, btcv_split, read_brats, read_btcv, read_ixi,
                           read_upenn_gbm, split_by_volume)
from training.data import slices as slices_module
from training.data.splits import BTCV_TEST_IDS
from training.phantoms import write_brats_case, write_btcv_dataset, write_ixi_case

from tiny_models import MICRO_CDM

SMALL_BRAIN = (48, 48, 31)
SMALL_CT = (64, 64, 12)


@pytest.fixture(scope="module")
def brats_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("brats")
    for number in range(3):
        write_brats_case(root, number, seed=number, shape=SMALL_BRAIN)
    return root


@pytest.fixture(scope="module")
def btcv_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("btcv")
    write_btcv_dataset(root, 2, seed=0, shape=SMALL_CT)
    return root


def test_brats_reader_finds_every_modality(brats_root):
    cases = read_brats(brats_root)
    assert [c.case_id for c in cases] == [f"BraTS-GLI-0000{i}-000" for i in range(3)]
    assert set(cases[0].paths) == {"t1n", "t1c", "t2w", "t2f", "seg"}


def test_btcv_reader_pairs_images_and_labels(btcv_root):
    cases = read_btcv(btcv_root)
    assert [c.case_id for c in cases] == ["0001", "0002"]
    assert cases[0].paths["label"].name == "label0001.nii.gz"


def test_ixi_reader_pairs_t1_and_t2_on_different_grids(tmp_path):
    write_ixi_case(tmp_path, 2, seed=0, scale=0.25)
    (case,) = read_ixi(tmp_path)
    t1, t2 = read_volume(case.paths["t1n"]), read_volume(case.paths["t2w"])
    assert not t1.same_grid(t2)  # IXI T1 is sagittal, T2 axial: the engine resamples


def test_upenn_reader_maps_the_tcia_names(tmp_path):
    folder = tmp_path / "images_structural" / "UPENN-GBM-00001_11"
    folder.mkdir(parents=True)
    for suffix in ("T1", "T1GD", "T2", "FLAIR"):
        (folder / f"UPENN-GBM-00001_11_{suffix}.nii.gz").write_bytes(b"")
    (tmp_path / "images_segm").mkdir()
    (tmp_path / "images_segm" / "UPENN-GBM-00001_11_segm.nii.gz").write_bytes(b"")
    (case,) = read_upenn_gbm(tmp_path)
    assert case.paths["t1c"].name.endswith("_T1GD.nii.gz") and case.paths["t2f"].name.endswith("_FLAIR.nii.gz")
    assert case.paths["seg"].name.endswith("_segm.nii.gz")


def test_readers_refuse_an_empty_root(tmp_path):
    with pytest.raises(InputError, match="no BraTS2023 cases"):
        read_brats(tmp_path)


def test_splits_follow_the_papers():
    cases = [Case(f"{i:04d}", {}) for i in range(1, 41)]
    train, test = btcv_split(cases)
    assert len(train) == 28 and {c.case_id for c in test} == set(BTCV_TEST_IDS)
    train, test = split_by_volume(cases[:10], 0.7, seed=0)
    assert len(train) == 7 and len(test) == 3 and not {c.case_id for c in train} & {c.case_id for c in test}
    assert split_by_volume(cases[:10], 0.7, seed=0) == (train, test)


def test_translation_slices_match_what_inference_feeds_the_model(brats_root, tmp_path):
    case = read_brats(brats_root)[0]
    dataset = TranslationSlices([case], grid=ModelGrid(32, None), cache_dir=tmp_path, min_foreground=0.0)
    volumes = [read_volume(case.paths[m]) for m in ("t1n", "t2w", "t1c", "t2f")]
    seen = {}

    def capture(batch):
        for index, image in zip(batch.slice_indices, batch.images):
            seen[index] = image.clone()
        return batch.images[:, :1]

    run_slicewise([EngineInput(v, "x", fit_mri_scaling(v.array)) for v in volumes], capture, 1, ModelGrid(32, None), RunOptions())
    assert len(dataset) == len(seen) == SMALL_BRAIN[2]
    for item in (0, 10, 20):
        sample = dataset[item]
        torch.testing.assert_close(torch.cat([sample["sources"], sample["targets"]]), seen[item], rtol=0, atol=1e-6)


def test_slice_cache_is_reused_and_skips_empty_slices(brats_root, tmp_path, monkeypatch):
    cases = read_brats(brats_root)[:2]
    first = TranslationSlices(cases, grid=ModelGrid(32, None), cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 2
    assert 0 < len(first) < 2 * SMALL_BRAIN[2]  # slices above and below the brain are skipped

    def no_decoding(*args, **kwargs):
        raise AssertionError("NIfTI decoded again despite the cache")

    monkeypatch.setattr(slices_module, "read_volume", no_decoding)
    second = TranslationSlices(cases, grid=ModelGrid(32, None), cache_dir=tmp_path)
    assert len(second) == len(first)
    torch.testing.assert_close(second[5]["targets"], first[5]["targets"])


def test_segmentation_slices_merge_organs_and_keep_labels_exact(btcv_root, tmp_path):
    cases = read_btcv(btcv_root)
    dataset = SegmentationSlices(cases, grid=ModelGrid(32, None), cache_dir=tmp_path)
    masks = torch.stack([dataset[i]["mask"] for i in range(len(dataset))])
    assert set(masks.unique().tolist()) == {0.0, 1.0} and masks.mean() > 0.02
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    assert images.min() >= -1 and images.max() <= 1
    liver = SegmentationSlices(cases, grid=ModelGrid(32, None), cache_dir=tmp_path, labels=[6])
    liver_masks = torch.stack([liver[i]["mask"] for i in range(len(liver))])
    assert 0 < liver_masks.sum() < masks.sum()


def test_a_share_prepares_only_its_cases_and_the_rest_fill_in(brats_root, tmp_path, monkeypatch):
    cases = read_brats(brats_root)
    decoded = []
    read = slices_module.read_volume
    monkeypatch.setattr(slices_module, "read_volume", lambda path: decoded.append(path) or read(path))
    with slices_module.preparing_share(1, 2) as share:
        empty = TranslationSlices(cases, grid=ModelGrid(32, None), cache_dir=tmp_path)
    assert len(empty) == 0 and share.prepared == [cases[1].case_id] and share.cached == []
    assert len(decoded) == 4 and len(list(tmp_path.glob("*.npy"))) == 1
    full = TranslationSlices(cases, grid=ModelGrid(32, None), cache_dir=tmp_path)  # prepares the two other cases only
    assert len(decoded) == 12 and len(list(tmp_path.glob("*.npy"))) == 3 and len(full) > 0
    with slices_module.preparing_share(0, 2) as share:
        TranslationSlices(cases, grid=ModelGrid(32, None), cache_dir=tmp_path)
    assert share.prepared == [] and share.cached == [cases[0].case_id, cases[2].case_id]


def test_a_failed_cache_write_leaves_no_file_behind(brats_root, tmp_path, monkeypatch):
    def disk_full(file, array, *args, **kwargs):
        Path(file).write_bytes(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(slices_module.np, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        TranslationSlices(read_brats(brats_root)[:1], grid=ModelGrid(32, None), cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_prepare_command_splits_by_rank_or_by_node(brats_root, tmp_path, monkeypatch, capsys):
    """`--split local` divides the cases among one node's processes (a node-local cache on each node)."""
    from training.cli import main as training_main

    flags = ["prepare", "--recipe", "cdm", "--set", f"data_root={brats_root}", "--set", f"architecture={json.dumps(MICRO_CDM)}"]
    # Node 1 of two nodes with two processes each: global ranks 2 and 3, local ranks 0 and 1.
    for local_rank in (0, 1):
        monkeypatch.setenv("RANK", str(2 + local_rank))
        monkeypatch.setenv("WORLD_SIZE", "4")
        monkeypatch.setenv("LOCAL_RANK", str(local_rank))
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        assert training_main([*flags, "--set", f"cache_dir={tmp_path / 'local'}", "--split", "local"]) == 0
        assert training_main([*flags, "--set", f"cache_dir={tmp_path / 'global'}"]) == 0
    printed = capsys.readouterr().out.splitlines()
    # CDM trains on 2 of the 3 volumes: one for each local rank; global ranks 2 and 3 of 4 get none.
    assert printed == ["rank 0/2: prepared 1 case(s), 0 already cached", "rank 2/4: prepared 0 case(s), 0 already cached",
                       "rank 1/2: prepared 1 case(s), 0 already cached", "rank 3/4: prepared 0 case(s), 0 already cached"]
    assert len(list((tmp_path / "local").glob("*.npy"))) == 2 and not list((tmp_path / "global").glob("*.npy"))
