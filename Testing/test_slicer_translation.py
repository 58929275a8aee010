"""The MedDiffusionTranslation module file itself (Logic and self-test) against the real MRML of slicer-core.

The Qt/app surface comes from the test-only layer in Testing/slicer_compat; models are micro random-weight models
(CDM, and EDTS-Trans written next to them here) and the sample case is a small synthetic brain MRI on an oblique
grid (slicer_compat/fixtures.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from slicer_compat.fixtures import sample_data, slicer_env, tiny_models  # noqa: F401 - pytest fixtures


@pytest.fixture(scope="module")
def edts_model(tiny_models):  # noqa: F811
    """A micro EDTS-Trans model in the same model folder as the other micro models."""
    from tiny_models import write_micro_model

    return write_micro_model(Path(os.environ["MEDDIFFUSION_MODELS_DIR"]), "edts", seed=1, sampling_steps=2).name


@pytest.fixture(scope="module")
def module(slicer_env, tiny_models, edts_model, sample_data):  # noqa: F811
    import MedDiffusionTranslation

    return MedDiffusionTranslation


@pytest.fixture
def scene(module):
    import slicer

    slicer.mrmlScene.Clear()
    return slicer.mrmlScene


def test_module_self_test_passes_against_real_mrml(module, tiny_models, edts_model, sample_data):  # noqa: F811
    """Its EDTS-Trans part included: it runs because an EDTS-Trans model is installed (the micro one here)."""
    test = module.MedDiffusionTranslationTest()
    test.modelName, test.sampleDataFolder = tiny_models["cdm"], sample_data
    shown = []
    test.delayDisplay = shown.append
    test.runTest()
    assert "Synthesizing T2 from the sample T1 with EDTS-Trans, with its refiner mask" in shown
    assert shown.count("Test passed") == 4


def test_edts_synthesizes_t2_from_t1_alone_and_overlays_its_mask(module, scene, edts_model, sample_data):  # noqa: F811
    import slicer
    from MedDiffusionLib import exchange, sampledata
    from MedDiffusionLib import scene as outputs_scene

    views = [scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode") for _ in range(2)]
    t1 = sampledata.loadSampleCase("mri", ("t1n",), sample_data)["t1n"]
    logic = module.MedDiffusionTranslationLogic()
    plain = logic.process(t1, None, modelName=edts_model, method="edts", device="cpu", seed=2)
    assert sorted(plain) == ["t2w"]  # no T2 needed; no mask unless asked for
    outputs = logic.process(t1, None, modelName=edts_model, method="edts", device="cpu", seed=2, samples=2,
                            saveMask=True)
    assert sorted(outputs) == ["t2w", "t2w_mask", "t2w_std"]
    name = f"{t1.GetName()} synthetic T2 (EDTS-Trans)"
    assert plain["t2w"].GetName() == name and outputs["t2w"].GetName() == f"{name}_1"  # a second run: a new node
    assert (outputs["t2w_std"].GetName(), outputs["t2w_mask"].GetName()) == (f"{name} uncertainty",
                                                                             f"{name} refiner mask")
    mask = outputs["t2w_mask"]
    assert np.array_equal(exchange.ijkToRas(mask), exchange.ijkToRas(t1))
    assert mask.GetAttribute(outputs_scene.OUTPUT) == "t2w_mask" and mask.GetAttribute(outputs_scene.SYNTHETIC) == "true"
    display = mask.GetDisplayNode()
    assert display.GetColorNodeID() == outputs_scene.MASK_COLOR_NODE_ID and not display.GetAutoWindowLevel()
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == (0.0, 1.0)
    for view in views:  # the mask asked for wins the overlay over the uncertainty
        assert view.GetBackgroundVolumeID() == outputs["t2w"].GetID()
        assert view.GetForegroundVolumeID() == mask.GetID()
    weights = slicer.util.arrayFromVolume(mask)
    assert 0.0 <= weights.min() and weights.max() <= 1.0 and weights.max() > 0.5  # some voxels mostly the refiner's


def test_edts_refuses_what_it_cannot_do(module, scene, tiny_models, edts_model, sample_data):  # noqa: F811
    from MedDiffusionExtension.errors import InputError
    from MedDiffusionLib import sampledata

    t1, t2 = sampledata.loadSampleCase("mri", ("t1n", "t2w"), sample_data).values()
    logic = module.MedDiffusionTranslationLogic()
    count = scene.GetNumberOfNodes()
    with pytest.raises(InputError, match="takes one input: there is nothing to register"):
        logic.process(t1, t2, modelName=edts_model, method="edts", register=True)
    with pytest.raises(InputError, match="--save-mask applies to models with a mask-guided refiner"):
        logic.process(t1, t2, modelName=tiny_models["cdm"], saveMask=True)
    assert scene.GetNumberOfNodes() == count and not logic.isRunning


def test_all_targets_without_uncertainty_are_shown_in_the_slice_views(module, scene, tiny_models, sample_data):  # noqa: F811
    import slicer
    from MedDiffusionLib import exchange, sampledata

    views = [scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode") for _ in range(3)]
    t1, t2 = sampledata.loadSampleCase("mri", ("t1n", "t2w"), sample_data).values()
    progress = []
    outputs = module.MedDiffusionTranslationLogic().process(
        t1, t2, modelName=tiny_models["cdm"], steps=1, device="cpu", seed=5,
        onProgress=lambda fraction, message: progress.append(fraction))
    assert sorted(outputs) == ["t1c", "t2f"]  # all the model's outputs; one sample: no uncertainty volume
    assert outputs["t2f"].GetName() == f"{t1.GetName()} synthetic FLAIR (CDM)"
    for view in views:
        assert view.GetBackgroundVolumeID() == outputs["t1c"].GetID()
        assert view.GetForegroundVolumeID() is None
    assert progress == sorted(progress) and progress[-1] == 1.0
    for node in outputs.values():
        assert np.array_equal(exchange.ijkToRas(node), exchange.ijkToRas(t1))
        assert node.GetDescription().startswith("Synthetic image generated by the MedDiffusion model")
    # The two contrasts come from different output channels, not one image copied.
    assert not np.array_equal(slicer.util.arrayFromVolume(outputs["t1c"]), slicer.util.arrayFromVolume(outputs["t2f"]))


def test_bad_requests_are_refused_before_anything_runs(module, scene, tiny_models, sample_data):  # noqa: F811
    from MedDiffusionExtension.errors import InputError
    from MedDiffusionLib import sampledata

    t1, t2 = sampledata.loadSampleCase("mri", ("t1n", "t2w"), sample_data).values()
    logic = module.MedDiffusionTranslationLogic()
    count = scene.GetNumberOfNodes()
    with pytest.raises(InputError, match="select a T2 volume"):
        logic.process(t1, None, modelName=tiny_models["cdm"])
    with pytest.raises(InputError, match="cannot synthesize t2w"):
        logic.process(t1, t2, targets=["t2w"], modelName=tiny_models["cdm"])
    with pytest.raises(InputError, match="same volume"):
        logic.process(t1, t1, modelName=tiny_models["cdm"])
    with pytest.raises(InputError, match="not a translation model"):
        logic.process(t1, t2, modelName="sdseg-micro-test")
    assert scene.GetNumberOfNodes() == count and not logic.isRunning


def test_parameter_node_declares_validated_fields(module, scene):
    node = module.MedDiffusionTranslationLogic().getParameterNode()
    assert (node.method, node.targets, node.steps, node.samples, node.device) == ("cdm", "t1c", 0, 1, "auto")
    assert node.registerT2 is False  # "Register T2 to T1" starts unticked
    assert node.showRefinerMask is False  # "Show refiner mask" too
    assert node.batchSize == 0  # "auto": the card's batch for the device, else the measured rule
    node.registerT2 = True
    assert node.parameterNode.GetParameter("registerT2") == "true"
    node.samples = 4
    assert node.parameterNode.GetParameter("samples") == "4"
    with pytest.raises(ValueError):
        node.samples = 0
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    node.t1Volume = volume
    assert node.t1Volume is volume


def test_module_metadata_and_sample_data_hook(module, slicer_env):  # noqa: F811
    from slicer_compat.scripted import moduleParent

    parent = moduleParent()
    module.MedDiffusionTranslation(parent)
    assert parent.title == "MedDiffusion Translation" and parent.categories == ["MedDiffusion"]
    assert "synthetic" in parent.helpText.lower()
    assert ("startupCompleted()", module.registerSampleData) in slicer_env.connections


def test_available_methods_list_installed_runnable_methods(module, tiny_models):  # noqa: F811
    from MedDiffusionLib import catalog

    methods = catalog.availableMethods("translation")
    assert [(m.key, m.label) for m in methods] == [("cdm", "CDM"), ("edts", "EDTS-Trans")]  # baselines never offered
    html = catalog.cardSummaryHtml(module.MedDiffusionTranslationLogic.model(tiny_models["cdm"]))
    assert "License:" in html and "Training data:" in html and "T1c + FLAIR" in html


def test_the_panel_asks_edts_for_a_t1_alone_and_offers_its_mask(module, tiny_models, edts_model, sample_data):  # noqa: F811
    import slicer
    from MedDiffusionLib import sampledata
    from test_slicer_widgets import make_widget

    slicer.mrmlScene.Clear()
    t1 = sampledata.loadSampleCase("mri", ("t1n",), sample_data)["t1n"]
    widget, node = make_widget(module.MedDiffusionTranslationWidget, module.MedDiffusionTranslationLogic,
                               ("methodComboBox", "modelComboBox", "targetComboBox", "deviceComboBox", "precisionComboBox"))
    assert widget.ui.methodComboBox.items == [("CDM", "cdm"), ("EDTS-Trans", "edts")]
    assert widget.ui.t2Selector.enabled and not widget.ui.refinerMaskCheckBox.enabled  # CDM first
    widget.ui.methodComboBox.setCurrentIndex(1)
    widget.onMethodChanged(1)
    assert (node.method, node.modelName, node.targets) == ("edts", edts_model, "t2w")
    assert widget.ui.targetComboBox.items == [("T2", "t2w")]
    assert not widget.ui.t2Selector.enabled and not widget.ui.registerCheckBox.enabled
    assert widget.ui.refinerMaskCheckBox.enabled
    node.t1Volume = t1
    widget.updatePanel()
    assert (widget.ui.applyButton.text, widget.ui.applyButton.enabled) == ("Synthesize T2", True)


def test_the_panel_batch_size_zero_asks_the_task_layer_for_the_automatic_batch(module):
    from MedDiffusionLib import catalog

    assert catalog.runSettings(0, 1, 0, "cpu", 0).batch_size == "auto"
    assert catalog.runSettings(0, 1, 0, "cpu", 3).batch_size == 3
