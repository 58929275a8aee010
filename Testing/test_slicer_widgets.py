"""The module widgets' own logic with test doubles for their Qt widgets (Qt cannot run here): combos filled from the
model registry, the button's label and state, the GUI's non-blocking run, finished or cancelled, driven by firing
the QTimer by hand; and the panel's state when things go wrong (no backend, a torch that does not import, a refused
start, a failed install), with message boxes recorded as a desktop user would see them.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import time
import weakref
from types import SimpleNamespace
from unittest import mock

import pytest

from slicer_compat.fixtures import MODULE_FOLDERS, message_boxes, sample_data, slicer_env, tiny_models  # noqa: F401


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
    import qt

    deadline = time.monotonic() + timeout
    while job._timer is not None:  # what Qt's event loop does every 100 ms in Slicer
        assert time.monotonic() < deadline
        qt.QTimer.fireTimeouts()
        time.sleep(0.05)
    assert not qt.QTimer.deletedInOwnSlot


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
                               ("methodComboBox", "modelComboBox", "targetComboBox", "deviceComboBox", "precisionComboBox"))
    # Every translation method with an installed model (the bundled CDM and EDTS-Trans), CDM first.
    assert widget.ui.methodComboBox.items == [("CDM", "cdm"), ("EDTS-Trans", "edts")]
    assert [data for _, data in widget.ui.precisionComboBox.items] == ["auto", "fp32", "bf16", "fp16"]
    widget.ui.precisionComboBox.setCurrentIndex(1)
    widget.onPrecisionChanged(1)
    assert widget._parameterNode.precision == "fp32"  # the menu writes the setting the Logic passes on
    assert ("T1c + FLAIR", "t1c,t2f") in widget.ui.targetComboBox.items
    assert [data for _, data in widget.ui.deviceComboBox.items[:2]] == ["auto", "cpu"]
    assert "License:" in widget.ui.modelInfoLabel.text
    node.t1Volume, node.t2Volume = t1, t2
    node.modelName, node.device, node.steps = tiny_models["cdm"], "cpu", 1
    assert node.registerT2 is False and widget.ui.registerCheckBox.enabled  # the model takes a T2
    node.registerT2 = True  # what ticking "Register T2 to T1" does (the .ui binds the checkbox to this field)
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
    # The registration's transform is shown under the result and kept with the outputs' settings.
    assert "\nNote: registered T2 to T1 (rigid): rotation R " in widget.ui.statusLabel.text
    assert slicer.mrmlScene.GetNumberOfNodes() > count
    from MedDiffusionLib import scene

    created = [slicer.mrmlScene.GetNthNode(i) for i in range(count, slicer.mrmlScene.GetNumberOfNodes())]
    settings = [json.loads(n.GetAttribute(scene.SETTINGS)) for n in created if n.GetAttribute(scene.SETTINGS)]
    assert settings and all(s["register"] is True and s["warnings"][0].startswith("registered T2 to T1") for s in settings)

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
                               segmentation.MedDiffusionSegmentationLogic,
                               ("modelComboBox", "deviceComboBox", "precisionComboBox"))
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
    combos = ["modelComboBox", "deviceComboBox", "methodComboBox", "targetComboBox", "precisionComboBox"]
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
    combos = ["modelComboBox", "deviceComboBox", "methodComboBox", "targetComboBox", "precisionComboBox"]
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


# -- the panel when something is wrong -------------------------------------------------------------------------------

COMBOS = ("methodComboBox", "modelComboBox", "targetComboBox", "deviceComboBox", "precisionComboBox")
NAMES = ("MedDiffusionTranslation", "MedDiffusionSegmentation")


def setup_widget(module, name, monkeypatch):
    """The module's real Widget.setup(), with test doubles for the .ui's widgets."""
    import slicer

    ui = FakeUi(COMBOS)
    loaded = []
    monkeypatch.setattr(slicer.util, "loadUI", lambda path: loaded.append(path) or mock.MagicMock(name="uiWidget"))
    monkeypatch.setattr(slicer.util, "childWidgetVariables", lambda widget: ui)
    widget = getattr(module, f"{name}Widget")(mock.MagicMock())
    widget.setup()
    assert loaded and loaded[0].endswith(f"{name}.ui")
    scene = slicer.mrmlScene  # it outlives this widget
    widget.removeObserver(scene, scene.StartCloseEvent, widget.onSceneStartClose)
    widget.removeObserver(scene, scene.EndCloseEvent, widget.onSceneEndClose)
    return widget


@pytest.fixture
def probed(modules, monkeypatch):
    """The runner's probe answers `probed.result` (every requirement importable, no GPU, unless a test says else)."""
    from MedDiffusionLib import probe

    state = SimpleNamespace(runs=0, result=without())

    def run(modules, *args, **kwargs):
        state.runs += 1
        return state.result

    monkeypatch.setattr(probe, "run", run)
    probe.forget()
    yield state
    probe.forget()


def without(*modules):
    """A probe's answer where every requirement but `modules` imports."""
    from MedDiffusionLib import dependencies, probe

    return probe.ProbeResult(versions={r.module: "99.0" for r in dependencies.REQUIRED if r.module not in modules},
                             failed={m: f"ModuleNotFoundError: No module named '{m}'" for m in modules},
                             devices=(("auto", "Auto"), ("cpu", "CPU")) if "torch" not in modules else ())


def test_a_module_whose_backend_cannot_be_found_loads_and_says_so_in_its_panel(slicer_env, tmp_path, monkeypatch):  # noqa: F811
    from MedDiffusionLib import backend

    real = importlib.util.find_spec
    monkeypatch.setattr(backend, "importlib", SimpleNamespace(
        util=SimpleNamespace(find_spec=lambda name: None if name == backend.PACKAGE else real(name)),
        invalidate_caches=importlib.invalidate_caches))
    monkeypatch.setattr(backend, "_candidateRoots", lambda: [tmp_path])
    for folder in MODULE_FOLDERS:
        name = folder.name
        spec = importlib.util.spec_from_file_location(f"{name}WithoutBackend", folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)
        spec.loader.exec_module(module)  # Slicer loads the module: this must not raise

        widget = setup_widget(module, name, monkeypatch)
        ui = widget.ui
        assert "backend (MedDiffusionExtension) was not found" in ui.dependenciesLabel.text
        ui.dependenciesLabel.setVisible.assert_called_with(True)
        ui.installButton.setVisible.assert_called_with(False)  # installing packages would not help
        assert ui.applyButton.enabled is False and not widget._dependenciesReady


def test_a_torch_that_does_not_import_shows_as_needed_and_slicer_never_imports_torch(modules, probed, monkeypatch):
    probed.result = without("torch")
    monkeypatch.setitem(sys.modules, "MedDiffusionExtension.device", None)  # importing it in Slicer's process fails
    for module, name in zip(modules, NAMES):
        ui = setup_widget(module, name, monkeypatch).ui
        assert ui.dependenciesLabel.text == "Needs: torch>=2.1"
        assert "No module named 'torch'" in ui.dependenciesLabel.toolTip
        ui.installButton.setVisible.assert_called_with(True)
        assert ui.applyButton.enabled is False
    assert probed.runs == 1  # cached for the session, shared by both modules


def test_the_device_menu_comes_from_the_probe(modules, probed, tiny_models, monkeypatch):  # noqa: F811
    from MedDiffusionLib import probe

    probed.result = probe.ProbeResult(versions=probed.result.versions,
                                      devices=(("auto", "Auto"), ("cpu", "CPU"), ("cuda:0", "cuda:0 — Test GPU")))
    monkeypatch.setitem(sys.modules, "MedDiffusionExtension.device", None)
    for module, name in zip(modules, NAMES):
        ui = setup_widget(module, name, monkeypatch).ui
        assert ("cuda:0 — Test GPU", "cuda:0") in ui.deviceComboBox.items
        assert not str(ui.statusLabel.text).startswith("No GPU found")


def test_models_that_cannot_be_listed_are_reported_in_the_panel(modules, probed, monkeypatch):
    from MedDiffusionExtension.weights import ModelRegistry

    def unreadable(self):
        raise ValueError("card.json of ~/.meddiffusion/models/mine: outputs must be a list")

    monkeypatch.setattr(ModelRegistry, "cards", unreadable)
    for module, name in zip(modules, NAMES):
        ui = setup_widget(module, name, monkeypatch).ui
        assert ui.statusLabel.text.startswith("The installed models could not be listed: card.json of")


def test_a_refused_start_shows_the_error_and_puts_the_panel_back(modules, probed, message_boxes, monkeypatch):  # noqa: F811
    import qt
    from MedDiffusionExtension.errors import InputError

    for module, name in zip(modules, NAMES):
        widget = setup_widget(module, name, monkeypatch)
        message_boxes.shown.clear()
        widget.logic.process = mock.MagicMock(side_effect=InputError("select the T2 scan of the same patient"))
        with pytest.raises(InputError):  # tryWithErrorDisplay shows it, then re-raises it
            widget.onApplyButton()
        widget.logic.process.assert_called_once()
        [error] = message_boxes.of("error")
        assert "Failed to start the" in error.text and "select the T2 scan" in error.text
        ui = widget.ui
        ui.progressBar.setVisible.assert_called_with(False)
        assert ui.statusLabel.text == "Not started." and ui.applyButton.text != "Cancel"
        assert qt.QApplication.overrideCursor() is None


def test_the_install_dialog_never_opens_under_a_wait_cursor(modules, probed, message_boxes, monkeypatch):  # noqa: F811
    probed.result = without("torch")
    message_boxes.confirm = False  # the user declines
    widget = setup_widget(modules[0], NAMES[0], monkeypatch)
    widget.logic.process = mock.MagicMock()
    widget.onApplyButton()  # Apply before installing: asks first
    widget.onInstallDependencies()
    confirms = message_boxes.of("confirm")
    assert len(confirms) == 2 and "torch>=2.1" in confirms[0].text
    assert not any(box.underWaitCursor for box in confirms)
    widget.logic.process.assert_not_called()
    assert not widget._dependenciesReady and widget.ui.statusLabel.text != "Starting (loading the model)..."


def test_a_partly_failed_install_still_refreshes_the_panel(modules, probed, message_boxes, monkeypatch):  # noqa: F811
    import slicer
    from MedDiffusionLib import dependencies

    probed.result = without("torch", "nibabel")
    widget = setup_widget(modules[1], NAMES[1], monkeypatch)
    assert widget.ui.dependenciesLabel.text == "Needs: torch>=2.1, nibabel>=5.0"
    installs = []

    def pip_install(arguments):
        installs.append(arguments[0])
        if arguments[0].startswith("torch"):
            probed.result = without("nibabel")
        else:
            raise RuntimeError("pip: no matching distribution found for nibabel>=5.0")

    monkeypatch.setattr(dependencies, "_pyTorchUtils", lambda: None)
    monkeypatch.setattr(slicer.util, "pip_install", pip_install, raising=False)
    with pytest.raises(RuntimeError, match="no matching distribution"):
        widget.onInstallDependencies()
    assert installs == ["torch>=2.1", "nibabel>=5.0"]
    assert widget.ui.dependenciesLabel.text == "Needs: nibabel>=5.0"  # torch is there now
    assert "no matching distribution" in message_boxes.of("error")[0].text


def test_entering_a_module_shows_an_install_made_from_the_other_one(modules, probed, message_boxes, monkeypatch):  # noqa: F811
    import slicer
    from MedDiffusionLib import dependencies

    probed.result = without("torch")
    translation, segmentation = (setup_widget(module, name, monkeypatch) for module, name in zip(modules, NAMES))
    assert not translation._dependenciesReady and not segmentation._dependenciesReady
    monkeypatch.setattr(dependencies, "_pyTorchUtils", lambda: None)
    monkeypatch.setattr(slicer.util, "pip_install", lambda arguments: setattr(probed, "result", without()),
                        raising=False)
    translation.onInstallDependencies()
    assert translation._dependenciesReady
    segmentation.enter()
    assert segmentation._dependenciesReady
    segmentation.ui.dependenciesLabel.setVisible.assert_called_with(False)
    segmentation.removeObservers()


def test_the_polling_timer_is_stopped_and_deleted_later_never_dropped_in_its_own_slot(modules):
    import qt
    from MedDiffusionLib.job import BackgroundJob
    from MedDiffusionLib.process import INPUT_ERROR

    qt.QTimer.deletedInOwnSlot.clear()
    ended = []
    # No inputs: the runner refuses the job at once, which is all this needs.
    job = BackgroundJob("segment", {}, ["labels"], {}).start(lambda *outcome: ended.append(outcome), wait=False)
    timer = weakref.ref(job._timer)
    deadline = time.monotonic() + 60
    while not ended:
        assert time.monotonic() < deadline
        qt.QTimer.fireTimeouts()
        time.sleep(0.02)
    assert ended[0][0] == INPUT_ERROR
    assert qt.QTimer.deletedInOwnSlot == [], "the QTimer was deleted inside its own timeout() slot"
    assert timer() is not None and timer().deleteLaterCalled and not timer().isActive()
    assert qt.QTimer.fireTimeouts() == 0

