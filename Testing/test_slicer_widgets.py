"""The module widgets' own logic with test doubles for their Qt widgets (Qt cannot run here): combos filled from the
model registry, the button's label and state, and the GUI's non-blocking run, finished or cancelled, driven by
calling the QTimer's slot by hand.
"""

from __future__ import annotations

import time
from unittest import mock

import pytest

from slicer_compat.fixtures import sample_data, slicer_env, tiny_models  # noqa: F401 - pytest fixtures


class FakeComboBox:
    """The QComboBox calls the widgets make: items with data, current index/data, signal blocking."""

    def __init__(self):
        self.items, self.currentIndex = [], -1
        self.slots = {}

    def connect(self, signal, slot):
        self.slots[signal] = slot

    def blockSignals(self, block):
        return False

    def clear(self):
        self.items, self.currentIndex = [], -1

    def addItem(self, label, data):
        self.items.append((label, data))

    def findData(self, data):
        return next((i for i, (_, d) in enumerate(self.items) if d == data), -1)

    def setCurrentIndex(self, index):
        self.currentIndex = index if self.items else -1

    @property
    def currentData(self):
        return self.items[self.currentIndex][1] if 0 <= self.currentIndex < len(self.items) else None


class FakeUi:
    """Combos are FakeComboBox; every other widget a MagicMock that records the properties set on it."""

    def __init__(self, combos):
        for name in combos:
            setattr(self, name, FakeComboBox())

    def __getattr__(self, name):
        widget = mock.MagicMock(name=name)
        setattr(self, name, widget)
        return widget


def make_widget(widget_class, logic_class, combos):
    widget = widget_class(mock.MagicMock())
    widget.ui, widget.logic = FakeUi(combos), logic_class()
    widget.refreshDependencies()
    node = widget.logic.getParameterNode()
    with mock.patch.object(type(node), "connectGui", lambda self, gui: 0, create=True):
        widget.setParameterNode(node)
    return widget, node


def finish(job, timeout=120):
    deadline = time.monotonic() + timeout
    while job._timer is not None:  # what the QTimer does every 100 ms in Slicer
        assert time.monotonic() < deadline
        job._poll()
        time.sleep(0.05)


@pytest.fixture(scope="module")
def modules(slicer_env, tiny_models, sample_data):  # noqa: F811
    import MedDiffusionSegmentation
    import MedDiffusionTranslation

    return MedDiffusionTranslation, MedDiffusionSegmentation


def test_translation_widget_runs_in_the_background_and_cancels(modules, tiny_models, sample_data):  # noqa: F811
    import slicer
    from MedDiffusionLib import sampledata

    translation = modules[0]
    slicer.mrmlScene.Clear()
    t1, t2 = sampledata.loadSampleCase("mri", ("t1n", "t2w"), sample_data).values()
    widget, node = make_widget(translation.MedDiffusionTranslationWidget, translation.MedDiffusionTranslationLogic,
                               ("methodComboBox", "modelComboBox", "targetComboBox", "deviceComboBox"))
    assert widget.ui.methodComboBox.items == [("CDM", "cdm")]
    assert ("T1c + FLAIR", "t1c,t2f") in widget.ui.targetComboBox.items
    assert [data for _, data in widget.ui.deviceComboBox.items[:2]] == ["auto", "cpu"]
    assert "License:" in widget.ui.modelInfoLabel.text
    node.t1Volume, node.t2Volume = t1, t2
    node.modelName, node.device, node.steps = tiny_models["cdm"], "cpu", 1
    widget.ui.targetComboBox.setCurrentIndex(2)
    widget.onTargetChanged(2)
    assert node.targets == "t1c,t2f"
    assert (widget.ui.applyButton.text, widget.ui.applyButton.enabled) == ("Synthesize T1c + FLAIR", True)

    count = slicer.mrmlScene.GetNumberOfNodes()
    widget.onApplyButton()
    assert widget.logic.isRunning and widget.ui.applyButton.text == "Cancel"
    finish(widget.logic.activeJob or pytest.fail("no job"))
    assert widget.ui.applyButton.text == "Synthesize T1c + FLAIR"
    assert widget.ui.statusLabel.text.startswith("Created: ") and "synthetic FLAIR (CDM)" in widget.ui.statusLabel.text
    assert slicer.mrmlScene.GetNumberOfNodes() > count

    count = slicer.mrmlScene.GetNumberOfNodes()
    widget.onApplyButton()
    job = widget.logic.activeJob
    widget.onApplyButton()  # the same button, now Cancel
    finish(job)
    assert widget.ui.statusLabel.text == "Cancelled; nothing was added."
    assert slicer.mrmlScene.GetNumberOfNodes() == count and not widget.logic.isRunning


def test_segmentation_widget_enables_its_button_only_with_a_ct_and_a_model(modules, tiny_models, sample_data):  # noqa: F811
    import slicer
    from MedDiffusionLib import sampledata

    segmentation = modules[1]
    slicer.mrmlScene.Clear()
    widget, node = make_widget(segmentation.MedDiffusionSegmentationWidget,
                               segmentation.MedDiffusionSegmentationLogic, ("modelComboBox", "deviceComboBox"))
    card = segmentation.MedDiffusionSegmentationLogic.model(tiny_models["sdseg"])
    assert (f"{card.name} ({card.version})", card.name) in widget.ui.modelComboBox.items
    node.inputVolume = None
    widget._updateGui()
    assert (widget.ui.applyButton.text, widget.ui.applyButton.enabled) == ("Segment", False)
    node.inputVolume = sampledata.loadSampleCase("ct", ("image",), sample_data)["image"]
    widget._updateGui()
    assert widget.ui.applyButton.enabled is True
    assert not widget.ui.installButton.setVisible.call_args.args[0]  # every dependency is installed here


def test_parameter_node_lifecycle_is_shared_by_both_widgets(modules):
    translation, segmentation = modules
    combos = ["modelComboBox", "deviceComboBox", "methodComboBox", "targetComboBox"]
    for module, name in ((translation, "MedDiffusionTranslation"), (segmentation, "MedDiffusionSegmentation")):
        widget_class, logic_class = getattr(module, f"{name}Widget"), getattr(module, f"{name}Logic")
        leaving, node = make_widget(widget_class, logic_class, combos)
        closing, _ = make_widget(widget_class, logic_class, combos)
        with mock.patch.object(type(node), "disconnectGui", lambda self, tag: None, create=True):
            leaving.exit()  # leaving the module disconnects the GUI but keeps the node
            assert leaving._parameterNode is node and leaving._parameterNodeGuiTag is None
            closing.logic.cancel = mock.MagicMock()
            closing.onSceneStartClose(None, None)  # closing the scene cancels a run and drops the node
            closing.logic.cancel.assert_called_once()
            assert closing._parameterNode is None


def test_setup_connects_the_shared_controls_to_the_shared_slots_then_shows_the_parameter_node(modules):
    import slicer

    translation, segmentation = modules
    combos = ["modelComboBox", "deviceComboBox", "methodComboBox", "targetComboBox"]
    for module, name in ((translation, "MedDiffusionTranslation"), (segmentation, "MedDiffusionSegmentation")):
        widget, node = make_widget(getattr(module, f"{name}Widget"), getattr(module, f"{name}Logic"), combos)
        with mock.patch.object(type(node), "connectGui", lambda self, gui: 0, create=True), \
                mock.patch.object(type(node), "disconnectGui", lambda self, tag: None, create=True):
            widget.setParameterNode(None)
            widget.connectRunControls()
        ui = widget.ui
        assert ui.modelComboBox.slots["currentIndexChanged(int)"] == widget.onModelChanged
        assert ui.deviceComboBox.slots["currentIndexChanged(int)"] == widget.onDeviceChanged
        ui.applyButton.connect.assert_called_with("clicked(bool)", widget.onApplyButton)
        ui.installButton.connect.assert_called_with("clicked(bool)", widget.onInstallDependencies)
        ui.progressBar.setVisible.assert_called_with(False)
        assert widget._parameterNode is not None and ui.modelComboBox.items  # the menus are filled
        scene = slicer.mrmlScene
        assert widget.hasObserver(scene, scene.StartCloseEvent, widget.onSceneStartClose)
        assert widget.hasObserver(scene, scene.EndCloseEvent, widget.onSceneEndClose)
        widget.removeObservers()  # the scene outlives this widget
