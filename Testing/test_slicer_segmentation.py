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


def test_a_ct_not_in_hounsfield_units_is_segmented_with_the_warning_kept(module, scene, tiny_models, sample_data):  # noqa: F811
    """Stored CT numbers (HU + 1024): the run goes ahead and the warning is kept in the outputs' settings (the
    panel shows the same runner warnings under the result as a Note, test_slicer_widgets)."""
    import json

    import slicer
    from MedDiffusionLib import sampledata, scene as outputs_scene

    ct = sampledata.loadSampleCase("ct", ("image",), sample_data)["image"]
    slicer.util.updateVolumeFromArray(ct, slicer.util.arrayFromVolume(ct).astype(np.float32) + 1024.0)
    outputs = module.MedDiffusionSegmentationLogic().process(ct, modelName=tiny_models["sdseg"], device="cpu")
    settings = json.loads(outputs["segmentation"].GetAttribute(outputs_scene.SETTINGS))
    assert settings["warnings"][0].startswith("the CT does not look like Hounsfield units")


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


# -- multi-organ models ------------------------------------------------------------------------------------------------

ORGAN_MODEL = "sdseg-organs-micro"


@pytest.fixture(scope="module")
def organ_model(tiny_models):  # noqa: F811
    """A micro multi-organ SDSeg (spleen, liver, stomach) beside the binary one; seed 1 finds all three organs on the
    synthetic sample CT, as the self-test asks of a multi-organ model."""
    import os
    from pathlib import Path

    from tiny_models import write_micro_model

    write_micro_model(Path(os.environ["MEDDIFFUSION_MODELS_DIR"]), "sdseg", name=ORGAN_MODEL, organs=[1, 6, 7], seed=1)
    return ORGAN_MODEL


def test_module_self_test_checks_named_organs_of_a_multi_organ_model(module, organ_model, sample_data):  # noqa: F811
    logic = module.MedDiffusionSegmentationLogic
    assert logic.organModelOrDefault("").name == organ_model  # installed: the self-test picks it without being told
    assert len(logic.model("").segments) == 1  # while the default model stays the binary one
    test = module.MedDiffusionSegmentationTest()
    test.sampleDataFolder = sample_data
    test.runTest()


def test_an_organ_subset_keeps_the_full_runs_voxels_of_those_organs(module, scene, organ_model, sample_data):  # noqa: F811
    import slicer
    from MedDiffusionLib import sampledata

    ct = sampledata.loadSampleCase("ct", ("image",), sample_data)["image"]
    logic = module.MedDiffusionSegmentationLogic()

    def masks(segmentation):
        content = segmentation.GetSegmentation()
        return {content.GetNthSegment(i).GetName():
                slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, content.GetNthSegmentID(i), ct) > 0
                for i in range(content.GetNumberOfSegments())}

    every = masks(logic.process(ct, modelName=organ_model, device="cpu")["segmentation"])
    outputs = logic.process(ct, modelName=organ_model, organs=["Liver", 7], samples=2, device="cpu")
    assert sorted(outputs) == ["probability_liver", "probability_stomach", "segmentation"]
    subset = masks(outputs["segmentation"])
    assert list(subset) == ["liver", "stomach"] and list(every) == ["spleen", "liver", "stomach"]
    assert all(every[name].any() for name in every)
    # Left-out organs become background after the arg-max: a liver-only run keeps exactly the full run's liver.
    one = masks(logic.process(ct, modelName=organ_model, organs=["liver"], device="cpu")["segmentation"])
    np.testing.assert_array_equal(one["liver"], every["liver"])
    assert outputs["probability_liver"].GetName() == f"{ct.GetName()} liver probability (SDSeg)"
    from MedDiffusionLib import scene as outputs_scene

    assert outputs["probability_liver"].GetAttribute(outputs_scene.OUTPUT) == "probability_liver"
    assert '"organs": ["Liver", 7]' in outputs["segmentation"].GetAttribute(outputs_scene.SETTINGS)


class FakeCheckableComboBox:
    """The ctkCheckableComboBox calls the widget makes: items with data, check states by model index, visibility."""

    def __init__(self):
        self.items, self.states, self.visible, self.slots = [], {}, None, {}

    def connect(self, signal, slot):
        self.slots[signal] = slot

    def blockSignals(self, block):
        return False

    def clear(self):
        self.items, self.states = [], {}

    def addItem(self, label, data):
        self.items.append((label, data))

    def model(self):
        from types import SimpleNamespace

        return SimpleNamespace(index=lambda row, column: SimpleNamespace(row=lambda: row))

    def setCheckState(self, index, state):
        self.states[index.row()] = state

    def checkedIndexes(self):
        from types import SimpleNamespace

        return [SimpleNamespace(row=lambda r=r: r) for r, state in sorted(self.states.items()) if state == "checked"]

    def setVisible(self, visible):
        self.visible = visible


def test_the_organ_menu_lists_a_multi_organ_models_organs_and_passes_the_checked_ones(
        module, organ_model, tiny_models, sample_data, monkeypatch):  # noqa: F811
    from unittest import mock

    import qt
    from MedDiffusionLib import sampledata
    from test_slicer_widgets import FakeUi

    # The stub's Qt constants are inert; the check states get values the fake combo can compare.
    monkeypatch.setattr(qt, "Qt", type("Qt", (qt.Inert,), {"Checked": "checked", "Unchecked": "unchecked"}), raising=False)
    widget = module.MedDiffusionSegmentationWidget(mock.MagicMock())
    widget.ui = FakeUi(("modelComboBox", "deviceComboBox", "precisionComboBox"))
    widget.ui.organsComboBox = FakeCheckableComboBox()
    widget.logic = module.MedDiffusionSegmentationLogic()
    widget.refreshDependencies()
    node = widget.logic.getParameterNode()
    node.modelName, node.excludedOrgans = organ_model, ""
    with mock.patch.object(type(node), "connectGui", lambda self, gui: 0, create=True):
        widget.setParameterNode(node)
    combo = widget.ui.organsComboBox
    assert combo.items == [("spleen", "spleen"), ("liver", "liver"), ("stomach", "stomach")]
    assert set(combo.states.values()) == {"checked"} and combo.visible is True
    assert "<b>Organs:</b> spleen (1), liver (6), stomach (7)<br>" in widget.ui.modelInfoLabel.text
    assert widget.ui.thresholdSliderWidget.enabled is False  # each voxel goes to its most probable organ
    node.inputVolume = sampledata.loadSampleCase("ct", ("image",), sample_data)["image"]
    assert widget.keptOrgans() is None  # every organ: no subset to ask for

    combo.states[0] = "unchecked"  # the user unticks the spleen
    widget.onOrgansChanged()
    assert node.excludedOrgans == "spleen" and widget.keptOrgans() == ["liver", "stomach"]
    assert widget.ui.applyButton.enabled is True
    widget.logic.process = mock.MagicMock()
    widget.onApplyButton()
    assert widget.logic.process.call_args.kwargs["organs"] == ["liver", "stomach"]

    combo.states = {0: "unchecked", 1: "unchecked", 2: "unchecked"}
    widget.onOrgansChanged()
    assert widget.keptOrgans() == [] and widget.ui.applyButton.enabled is False
    assert widget.ui.applyButton.toolTip == "Check at least one organ."

    node.modelName = tiny_models["sdseg"]  # a one-segment model: no menu, nothing left out
    widget.refreshCombos()
    assert combo.visible is False and widget.keptOrgans() is None and widget.ui.thresholdSliderWidget.enabled is True
    widget.updatePanel()
    assert widget.ui.applyButton.enabled is True
    widget.removeObservers()
