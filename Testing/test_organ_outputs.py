"""Multi-organ outputs: card segments with keys and terminology, the `organs` option from the command line to the
runner job, per-organ probability files, and Slicer's segmentation file (.seg.nrrd) read back with slicerio and
SimpleITK."""

from __future__ import annotations

import io
import json
from pathlib import Path

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from MedDiffusionExtension import runner, tasks
from MedDiffusionExtension.cli import main
from MedDiffusionExtension.errors import InputError
from MedDiffusionExtension.volume import Volume, read_volume, write_volume
from MedDiffusionExtension.volume.segmentation_file import LPS_TO_RAS, write_segmentation_file
from MedDiffusionExtension.weights import ModelRegistry, read_card
from MedDiffusionExtension.weights.card import CardError, Segment, parse_card
from MedDiffusionExtension.weights.organs import BTCV_ORGANS, organ_segments

from conftest import rotation
from test_volume_io import _write_dicom_series
from tiny_models import write_micro_model

ORGANS = [1, 6, 7]  # spleen, liver, stomach
# Slicer's own serialization of the right kidney's terminology (vtkSlicerTerminologiesModuleLogic's format).
RIGHT_KIDNEY_ENTRY = ("Segmentation category and type - DICOM master list~SCT^123037004^Anatomical Structure"
                      "~SCT^64033007^Kidney~SCT^24028007^Right~Anatomic codes - DICOM master list~^^~^^")


@pytest.fixture(scope="module")
def organ_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    # Seed 1: the untrained decoder finds background and all three organs on these CTs (enough to compare subsets).
    write_micro_model(root, "sdseg", name="organs-micro", organs=ORGANS, seed=1)
    write_micro_model(root, "sdseg", name="union-micro")
    return root


@pytest.fixture(autouse=True)
def models_env(organ_models, monkeypatch):
    monkeypatch.setenv("MEDDIFFUSION_MODELS_DIR", str(organ_models))


def _ct(shape=(6, 40, 36), seed=0) -> Volume:
    rng = np.random.default_rng(seed)
    return Volume(rng.normal(0, 300, shape).astype(np.float32), rotation(2, 10) @ np.diag([-4.0, -4.5, 3.0, 1.0]))


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- the card's segments --------------------------------------------------------------------------------------------

def _card_data(root, name="organs-micro") -> dict:
    return json.loads((root / name / "card.json").read_text(encoding="utf-8"))


def test_segments_carry_keys_and_terminology_and_old_cards_stay_valid(organ_models, tmp_path):
    card = read_card(organ_models / "organs-micro")
    assert [(s.key, s.label) for s in card.segments] == [("spleen", 1), ("liver", 6), ("stomach", 7)]
    liver = card.segments[1]
    assert (liver.terminology.type.value, liver.terminology.type.meaning) == ("10200004", "Liver")
    assert liver.terminology.category.value == "123037004" and liver.terminology.type_modifier is None
    old = {key: value for key, value in _card_data(organ_models).items() if key != "segments"}
    old["segments"] = [{"name": "Right kidney (upper pole)", "label": 2, "color": [1, 0, 0]}]
    [segment] = parse_card(old, tmp_path).segments
    assert segment.key == "right_kidney_upper_pole" and segment.terminology is None
    assert Segment("Left adrenal gland", 13, (1.0, 1.0, 0.0)).key == "left_adrenal_gland"


def test_the_terminology_is_written_as_slicer_serializes_it():
    [right_kidney] = organ_segments([2])
    segment = parse_card(dict(_minimal_card(), segments=[right_kidney]), Path(".")).segments[0]
    assert segment.terminology.slicer_entry() == RIGHT_KIDNEY_ENTRY
    from MedDiffusionExtension.volume.segmentation_file import _terminology

    assert slicerio.segmentation.terminology_entry_to_string(_terminology(segment.terminology)) == RIGHT_KIDNEY_ENTRY


def test_every_btcv_organ_parses_with_a_unique_key_and_snomed_codes():
    card = parse_card(dict(_minimal_card(), segments=organ_segments([o.label for o in BTCV_ORGANS])), Path("."))
    assert [s.key for s in card.segments] == [o.key for o in BTCV_ORGANS]
    assert all(s.terminology.type.scheme == "SCT" and s.terminology.type.value.isdigit() for s in card.segments)
    paired = {s.key: s.terminology.type_modifier.meaning for s in card.segments if s.terminology.type_modifier}
    assert paired == {"right_kidney": "Right", "left_kidney": "Left", "right_adrenal_gland": "Right",
                      "left_adrenal_gland": "Left"}


def _minimal_card() -> dict:
    return {"name": "m", "version": "1", "task": "segmentation", "method": "sdseg", "inputs": [{"name": "image"}],
            "outputs": [{"name": "labels"}], "normalization": {"kind": "ct_window"}, "architecture": {},
            "training": {}, "metrics": {}, "license": "x", "citation": "x", "sha256": "0" * 64}


@pytest.mark.parametrize("segments, field", [
    ([{"name": "liver", "label": 6, "key": "Liver!"}], "segments\\[0\\].key"),
    ([{"name": "liver", "label": 6, "key": "12"}], "segments\\[0\\].key"),
    ([{"name": "liver", "label": 6}, {"name": "spleen", "label": 1, "key": "liver"}], "share a key"),
    ([{"name": "Liver", "label": 6}, {"name": "liver", "label": 1, "key": "liver2"}], "share a name"),
    ([{"name": "liver", "label": 6, "terminology": {"category": ["SCT", "1", "x"]}}], "segments\\[0\\].terminology.type"),
    ([{"name": "liver", "label": 6, "terminology": {"category": ["SCT", "1", "x"], "type": ["SCT", "2"]}}],
     "segments\\[0\\].terminology.type must be"),
    ([{"name": "liver", "label": 6, "terminology": {"category": ["SCT", "1", "x"], "type": ["SCT", "2", "a~b"]}}],
     "Slicer's separators"),
    ([{"name": "liver", "label": 6, "terminology": {"category": ["SCT", "1", "x"], "type": ["SCT", "2", "y"],
                                                     "typeModifier": ["SCT", "3", "z"]}}], "unknown field.*typeModifier"),
])
def test_a_malformed_segment_names_its_field(segments, field):
    with pytest.raises(CardError, match=field) as error:
        parse_card(dict(_minimal_card(), segments=segments), Path("."))
    assert "\n" not in str(error.value)


# -- the organs option -------------------------------------------------------------------------------------------------

def test_organs_are_chosen_by_key_name_or_label_and_checked_against_the_card():
    card = tasks.SegmentRequest(model="organs-micro").card()
    request = tasks.SegmentRequest(model="organs-micro", organs=tasks.parse_organs("STOMACH, Spleen ,7"))
    assert request.organs == ("STOMACH", "Spleen", 7)
    assert [s.key for s in request.kept_segments(card)] == ["spleen", "stomach"] and request.organ_labels(card) == [1, 7]
    assert tasks.SegmentRequest().organ_labels(card) is None
    assert tasks.SegmentRequest(model="organs-micro", organs=("6", "liver")).organ_labels(card) == [6]
    with pytest.raises(InputError, match="does not segment 'kidney'; its organs are spleen, liver, stomach "
                                         "\\(or their label values 1, 6, 7\\)"):
        tasks.SegmentRequest(model="organs-micro", organs=("kidney",)).card()
    with pytest.raises(InputError, match="organs must be a list"):
        tasks.SegmentRequest(organs="liver")
    with pytest.raises(InputError, match="does not segment 3"):
        tasks.SegmentRequest(model="organs-micro", organs=(3,)).card()


def test_probability_outputs_are_one_file_per_kept_organ(tmp_path):
    request = tasks.SegmentRequest(model="organs-micro", organs=("liver", 1), settings=tasks.RunSettings(samples=2))
    card = request.card()
    assert request.output_names(card) == ["labels", "probability_spleen", "probability_liver"]
    assert request.output_files(card, tmp_path / "ct.seg.nrrd") == {
        "labels": tmp_path / "ct.seg.nrrd", "probability_spleen": tmp_path / "ct_probability_spleen.nrrd",
        "probability_liver": tmp_path / "ct_probability_liver.nrrd"}
    assert request.output_files(card, tmp_path / "ct.nii.gz")["probability_liver"] == tmp_path / "ct_probability_liver.nii.gz"
    union = tasks.SegmentRequest(model="union-micro", settings=tasks.RunSettings(samples=2))
    assert union.output_files(union.card(), tmp_path / "ct.nii.gz") == {
        "labels": tmp_path / "ct.nii.gz", "probability": tmp_path / "ct_probability.nii.gz"}
    job = request.to_job()
    assert job["organs"] == ["liver", 1] and tasks.request_from_job(json.loads(json.dumps(job))) == request
    with pytest.raises(InputError, match="organs must be a list"):
        tasks.request_from_job(dict(job, organs="liver"))


def test_a_subset_keeps_exactly_the_full_runs_voxels_of_its_organs():
    ct = _ct()
    full_request = tasks.SegmentRequest(model="organs-micro")
    loaded = tasks.load(full_request)
    options = tasks.RunSettings(device="cpu").run_options()
    full = full_request.run({"image": ct}, loaded, options)["labels"].array
    subset = tasks.SegmentRequest(model="organs-micro", organs=("liver", "stomach")).run({"image": ct}, loaded, options)
    assert set(np.unique(full)) == {0, 1, 6, 7}  # organs both kept and dropped: the comparison means something
    np.testing.assert_array_equal(subset["labels"].array, np.where(np.isin(full, [6, 7]), full, 0))


# -- .seg.nrrd -------------------------------------------------------------------------------------------------------------

def _check_segmentation_file(path: Path, ct: Volume, labels: np.ndarray, keys: list[str]):
    """slicerio sees the card's segments and the CT's grid; SimpleITK and pynrrd see the same voxels."""
    expected = [s for s in ModelRegistry().find("organs-micro").segments if s.key in keys]
    segmentation = slicerio.read_segmentation(str(path))
    assert [s["name"] for s in segmentation["segments"]] == [s.name for s in expected]
    assert [s["id"] for s in segmentation["segments"]] == [s.key for s in expected]
    assert [s["labelValue"] for s in segmentation["segments"]] == [s.label for s in expected]
    for read, segment in zip(segmentation["segments"], expected):
        np.testing.assert_allclose(read["color"], segment.color, atol=1e-6)
        assert read["terminology"]["type"] == segment.terminology.type.as_list()
        assert read["terminology"]["category"] == ["SCT", "123037004", "Anatomical Structure"]
        assert read["terminology"]["contextName"] == "Segmentation category and type - DICOM master list"
    np.testing.assert_allclose(segmentation["ijkToLPS"], LPS_TO_RAS @ ct.ijk_to_ras, atol=1e-6)
    np.testing.assert_array_equal(segmentation["voxels"], labels.T)  # slicerio: (i, j, k)
    image = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), labels)
    np.testing.assert_allclose(read_volume(path).ijk_to_ras, ct.ijk_to_ras, atol=1e-5)
    data, header = nrrd.read(str(path), index_order="C")
    assert data.dtype == np.uint8 and header["space"] == "left-posterior-superior"
    np.testing.assert_array_equal(data, labels)


def test_segment_to_seg_nrrd_holds_named_coloured_coded_organs_on_the_ct_grid(tmp_path, capsys):
    ct = _ct()
    image = write_volume(ct, tmp_path / "ct.nii.gz")
    common = ["--model", "organs-micro", "--samples", "2", "--quiet"]
    code, out, err = _run(capsys, "segment", "--image", image, "--out", tmp_path / "nifti" / "seg.nii.gz", *common)
    assert code == 0, err
    every = read_volume(tmp_path / "nifti" / "seg.nii.gz").array
    assert set(np.unique(every)) == {0, 1, 6, 7}
    code, out, err = _run(capsys, "segment", "--image", image, "--out", tmp_path / "seg" / "ct.seg.nrrd",
                          "--organs", "liver,spleen", *common)
    assert code == 0, err
    assert out.split() == [str(tmp_path / "seg" / n) for n in ("ct.seg.nrrd", "ct_probability_spleen.nrrd",
                                                               "ct_probability_liver.nrrd")]
    assert sorted(p.name for p in (tmp_path / "seg").iterdir()) == [
        "ct.seg.nrrd", "ct_probability_liver.nrrd", "ct_probability_spleen.nrrd"]
    written = read_volume(tmp_path / "seg" / "ct.seg.nrrd").array
    np.testing.assert_array_equal(written, np.where(np.isin(every, [1, 6]), every, 0))
    _check_segmentation_file(tmp_path / "seg" / "ct.seg.nrrd", ct, written, ["spleen", "liver"])
    for key in ("liver", "spleen"):  # the per-organ maps are the same whichever file format the labels went to
        probability = read_volume(tmp_path / "seg" / f"ct_probability_{key}.nrrd")
        np.testing.assert_array_equal(probability.array, read_volume(tmp_path / "nifti" / f"seg_probability_{key}.nii.gz").array)
        np.testing.assert_allclose(probability.ijk_to_ras, ct.ijk_to_ras, atol=1e-5)
        assert probability.array.dtype == np.float32 and 0 <= probability.array.min() and probability.array.max() <= 1
    liver, spleen = (read_volume(tmp_path / "seg" / f"ct_probability_{k}.nrrd").array for k in ("liver", "spleen"))
    assert np.all(liver[written == 6] >= spleen[written == 6])  # a liver voxel: the liver is the more probable


def test_a_dicom_series_segments_to_seg_nrrd(tmp_path, capsys):
    ct = _ct(shape=(5, 36, 40), seed=3)
    volume = ct.with_array(np.round(ct.array).astype(np.float32))
    _write_dicom_series(volume, tmp_path / "series")
    code, _, err = _run(capsys, "segment", "--image", tmp_path / "series", "--out", tmp_path / "seg.seg.nrrd",
                        "--model", "organs-micro", "--quiet")
    assert code == 0, err
    reference = read_volume(tmp_path / "series")
    written = read_volume(tmp_path / "seg.seg.nrrd")
    _check_segmentation_file(tmp_path / "seg.seg.nrrd", reference, written.array, ["spleen", "liver", "stomach"])


def test_a_runner_job_with_organs_writes_the_segmentation_file_and_their_probabilities(tmp_path):
    ct = _ct()
    write_volume(ct, tmp_path / "ct.nrrd")
    request = tasks.SegmentRequest(model="organs-micro", organs=("stomach", 1), settings=tasks.RunSettings(samples=2))
    outputs = {"labels": "out/labels.seg.nrrd", "probability_spleen": "out/spleen.nrrd",
               "probability_stomach": "out/stomach.nrrd"}
    (tmp_path / "job.json").write_text(json.dumps(dict(request.to_job(), inputs={"image": "ct.nrrd"}, outputs=outputs,
                                                       device="cpu")))
    stream = io.StringIO()
    assert runner.main([str(tmp_path / "job.json")], stream=stream, install_signal_handlers=False) == tasks.EXIT_OK
    assert stream.getvalue().splitlines()[-1] == "DONE"
    labels = read_volume(tmp_path / "out" / "labels.seg.nrrd").array
    assert set(np.unique(labels)) == {0, 1, 7}
    _check_segmentation_file(tmp_path / "out" / "labels.seg.nrrd", ct, labels, ["spleen", "stomach"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["labels.seg.nrrd", "spleen.nrrd", "stomach.nrrd"]


def test_a_probability_output_named_seg_nrrd_is_refused_and_nothing_is_written(tmp_path):
    write_volume(_ct(), tmp_path / "ct.nrrd")
    request = tasks.SegmentRequest(model="union-micro", settings=tasks.RunSettings(samples=2, device="cpu"))
    job = dict(request.to_job(), inputs={"image": "ct.nrrd"},
               outputs={"labels": "out/labels.seg.nrrd", "probability": "out/probability.seg.nrrd"})
    (tmp_path / "job.json").write_text(json.dumps(job))
    stream = io.StringIO()
    assert runner.main([str(tmp_path / "job.json")], stream=stream, install_signal_handlers=False) == tasks.EXIT_INPUT
    [line] = stream.getvalue().splitlines()
    assert line.startswith("ERROR output probability (probability.seg.nrrd) cannot be a .seg.nrrd")
    assert not (tmp_path / "out").exists()


def test_the_writer_writes_every_segment_and_background_for_unknown_labels(tmp_path):
    ct = _ct(shape=(3, 16, 16))
    labels = np.zeros(ct.shape, np.uint8)
    labels[1, 2:5, 2:5], labels[2, 8:10, 8:10] = 6, 9  # 9 is not a segment of the card
    segments = [Segment("liver", 6, (1.0, 0.0, 0.0)), Segment("spleen", 1, (0.0, 1.0, 0.0))]
    path = write_segmentation_file(ct.with_array(labels), tmp_path / "l.seg.nrrd", segments)
    segmentation = slicerio.read_segmentation(str(path))
    assert [s["name"] for s in segmentation["segments"]] == ["liver", "spleen"]  # the empty spleen too
    assert "terminology" not in segmentation["segments"][0]
    np.testing.assert_array_equal(segmentation["voxels"].T, np.where(labels == 6, 6, 0))


def test_cohort_mode_keeps_only_the_chosen_organs(tmp_path, capsys):
    rows = ["case_id,image"]
    for case in ("A", "B"):
        write_volume(_ct(seed=ord(case)), tmp_path / f"{case}.nii.gz")
        rows.append(f"{case},{case}.nii.gz")
    (tmp_path / "cohort.csv").write_text("\n".join(rows) + "\n")
    code, _, err = _run(capsys, "segment", "--cohort", tmp_path / "cohort.csv", "--out", tmp_path / "out",
                        "--model", "organs-micro", "--organs", "stomach", "--quiet")
    assert code == 0, err
    for case in ("A", "B"):
        assert set(np.unique(read_volume(tmp_path / "out" / f"{case}.nii.gz").array)) <= {0, 7}
    code, _, err = _run(capsys, "segment", "--cohort", tmp_path / "cohort.csv", "--out", tmp_path / "out2",
                        "--model", "organs-micro", "--organs", "heart", "--quiet")
    assert code == 2 and "does not segment 'heart'" in err and not (tmp_path / "out2").exists()
