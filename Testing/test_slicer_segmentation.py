"""The MedDiffusionSegmentation module file itself (Logic and self-test) against the real MRML of slicer-core.

The Qt/app surface comes from the test-only layer in Testing/slicer_compat; the model is a micro random-weight
SDSeg and the sample case a small synthetic CT on an oblique grid (slicer_compat/fixtures.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from slicer_compat.fixtures import sample_data, slicer_env, tiny_models  # noqa: F401 - pytest fixtures


@pytest.fixture(scope="module")
def module(slicer_env, tiny_models, sample_data):  # noqa: F811
    import MedDiffusionSegmentation

    return MedDiffusionSegmentation


@pytest.fixture
def scene(module):
    import slicer

    slicer.mrmlScene.Clear()
    return slicer.mrmlScene


def test_module_self_test_passes_against_real_mrml(module, tiny_models, sample_data):  # noqa: F811
    test = module.MedDiffusionSegmentationTest()
    test.modelName, test.sampleDataFolder = tiny_models["sdseg"], sample_data
    test.runTest()


def test_ddim_run_with_one_sample_gives_a_segmentation_only(module, scene, tiny_models, sample_data):  # noqa: F811
    import slicer
    from MedDiffusionLib import sampledata, scene as outputs_scene

    ct = sampledata.loadSampleCase("ct", ("image",), sample_data)["image"]
    view = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    logic = module.MedDiffusionSegmentationLogic()
    outputs = logic.process(ct, modelName=tiny_models["sdseg"], steps=2, samples=1, threshold=0.4, device="cpu")
    assert list(outputs) == ["segmentation"]
    segmentation = outputs["segmentation"]
    assert view.GetBackgroundVolumeID() == ct.GetID()
    assert segmentation.GetDisplayNode() is not None
    assert segmentation.GetAttribute(outputs_scene.SYNTHETIC) == "false"
    settings = segmentation.GetAttribute(outputs_scene.SETTINGS)
    assert '"steps": 2' in settings and '"threshold": 0.4' in settings
    segment_id = segmentation.GetSegmentation().GetNthSegmentID(0)
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, ct)
    # Neither empty nor everything: the mask came from the model, on the CT's own voxel grid.
    assert 0 < mask.sum() < mask.size
    assert mask.shape == slicer.util.arrayFromVolume(ct).shape


def test_bad_requests_are_refused_before_anything_runs(module, scene, tiny_models, sample_data):  # noqa: F811
    from MedDiffusionExtension.errors import InputError
    from MedDiffusionLib import sampledata

    ct = sampledata.loadSampleCase("ct", ("image",), sample_data)["image"]
    logic = module.MedDiffusionSegmentationLogic()
    count = scene.GetNumberOfNodes()
    with pytest.raises(InputError, match="threshold"):
        logic.process(ct, modelName=tiny_models["sdseg"], threshold=1.5)
    with pytest.raises(InputError, match="select a CT"):
        logic.process(None, modelName=tiny_models["sdseg"])
    with pytest.raises(InputError, match="not a segmentation model"):
        logic.process(ct, modelName=tiny_models["cdm"])
    assert scene.GetNumberOfNodes() == count


def test_segments_come_from_the_card_or_a_generic_one(module, tiny_models):  # noqa: F811
    card = module.MedDiffusionSegmentationLogic.model(tiny_models["sdseg"])
    segments = module.MedDiffusionSegmentationLogic.segments(card)
    assert [(s.name, s.label, list(s.color)) for s in segments] == [
        (s["name"], s["label"], s["color"]) for s in card.data["segments"]] and segments[0].label == 1

    from MedDiffusionExtension.weights.card import parse_card

    bare = parse_card({key: value for key, value in card.data.items() if key != "segments"}, card.directory)
    assert [(s.name, s.label) for s in module.MedDiffusionSegmentationLogic.segments(bare)] == [(card.output_names[0], 1)]


def test_parameter_node_threshold_is_range_checked(module, scene):
    node = module.MedDiffusionSegmentationLogic().getParameterNode()
    assert (node.steps, node.samples, node.threshold) == (1, 1, 0.5)
    node.threshold = 0.3
    assert node.threshold == pytest.approx(0.3)
    with pytest.raises(ValueError):
        node.threshold = 1.0
    with pytest.raises(ValueError):
        node.steps = 0
    assert np.isclose(node.threshold, 0.3)


def test_a_failing_progress_callback_stops_the_run_and_leaves_nothing(module, scene, tiny_models, sample_data):  # noqa: F811
    import os

    from MedDiffusionLib import sampledata
    from MedDiffusionLib.job import temporaryFolder

    ct = sampledata.loadSampleCase("ct", ("image",), sample_data)["image"]
    logic = module.MedDiffusionSegmentationLogic()
    before, folders = scene.GetNumberOfNodes(), set(os.listdir(temporaryFolder()))

    def broken(fraction, message):
        raise ZeroDivisionError("a bug in a progress display")

    with pytest.raises(ZeroDivisionError):
        logic.process(ct, modelName=tiny_models["sdseg"], device="cpu", onProgress=broken)
    assert scene.GetNumberOfNodes() == before
    assert logic.activeJob is None and not logic.isRunning
    assert set(os.listdir(temporaryFolder())) == folders
