"""MedDiffusion Translation: synthesize missing MRI contrasts with a diffusion model: T1c and FLAIR from T1 and T2
(CDM), or T2 from T1 (EDTS-Trans, which can also show where its refiner acted).

Module / Widget / Logic / Test, as in Slicer's scripted-module template. The Logic needs no GUI: a script calls
`MedDiffusionTranslationLogic().process(t1Node, t2Node, targets=["t1c"], wait=True)`. The heavy work runs in a
background process (MedDiffusionExtension.runner) that reads and writes temporary NRRD files; the new volumes get
exactly the T1 volume's geometry, are marked synthetic, and are placed in the T1's subject-hierarchy study.
"""

import os
import sys
from typing import Annotated


import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import *  # noqa: F403 - Slicer's module base classes
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer import vtkMRMLScalarVolumeNode

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:  # the shared MedDiffusionLib package lives here
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))

from MedDiffusionLib import backend, catalog, dependencies, exchange, sampledata, scene  # noqa: E402
from MedDiffusionLib.gui import RunWidgetMixin  # noqa: E402
from MedDiffusionLib.job import BackgroundJob, BackgroundLogic  # noqa: E402

backend.makeImportable()  # a missing backend is reported in the module panel, not by failing to load
TASK = "translation"


#
# MedDiffusionTranslation
#


class MedDiffusionTranslation(ScriptedLoadableModule):  # noqa: F405
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)  # noqa: F405
        self.parent.title = _("MedDiffusion Translation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "MedDiffusion")]
        self.parent.dependencies = []
        self.parent.contributors = ["MedDiffusion developers"]
        self.parent.helpText = _(
            "Synthesizes missing MRI contrasts (post-contrast T1, T2-FLAIR) from a native T1 and a T2 volume with "
            "a diffusion model (CDM, Cross-conditioned Diffusion Model). Outputs are new volumes with exactly the "
            "T1's geometry, named and marked as synthetic. With more than one sample, the per-voxel standard "
            "deviation across samples is added as an uncertainty map. Inputs should be prepared like the model's "
            "training data (skull-stripped); an input that shows a skull is warned about in the status. 'Register "
            "T2 to T1' first aligns a T2 that moved. EDTS-Trans synthesizes T2 from the T1 alone: a regression, then "
            "a diffusion refiner where a texture/structure mask marks detail; 'Show refiner mask' adds that mask (0: "
            "the regression's voxel, up to 0.72: mostly the refiner's) over the result. Synthetic images are not "
            "acquired scans and are not for diagnosis.")
        self.parent.acknowledgementText = _(
            "Method: Xing et al., Cross-conditioned Diffusion Model for Medical Image to Image Translation, "
            "MICCAI 2024. Xiao et al., Learning MRI Translation with Explicit Dynamic Texture and Structure Priors "
            "(EDTS-Trans). The bundled models are small models trained on synthetic phantoms.")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """The bundled brain MRI and CT cases in the SampleData module (with SHA-256 checksums)."""
    iconPath = os.path.join(os.path.dirname(__file__), "Resources", "Icons", "MedDiffusionTranslation.png")
    sampledata.registerSampleData(iconPath)


#
# MedDiffusionTranslationParameterNode
#


@parameterNodeWrapper
class MedDiffusionTranslationParameterNode:
    """
    t1Volume - native T1: the reference grid of every output.
    t2Volume - T2 (resampled onto the T1 grid when the grids differ), for models that take one (CDM).
    registerT2 - rigidly register the T2 to the T1 before the synthesis (the transform is reported in the status).
    method - method key of the model card ("cdm", "edts").
    modelName - installed model; empty: the method's default model.
    targets - comma-separated model outputs to synthesize, e.g. "t1c" or "t1c,t2f"; empty: all of them.
    steps - sampling steps; 0: the model card's default.
    samples - syntheses averaged; more than one also gives an uncertainty (standard deviation) volume.
    seed - random seed: the same seed gives the same result.
    device - "auto", "cpu", "cuda:N" or "mps".
    batchSize - slices per batch, 0: automatic (the card's, else the measured rule; halved automatically when a
      GPU runs out of memory).
    precision - "auto" (bf16 on GPUs that have it, fp16 on older GPUs; on CPUs bf16 only with native bf16 units and
      a card that allows it, else fp32), "fp32", "bf16" or "fp16".
    showRefinerMask - models with a mask-guided refiner (EDTS-Trans): also create its mask and show it over the result.
    """

    t1Volume: vtkMRMLScalarVolumeNode
    t2Volume: vtkMRMLScalarVolumeNode
    registerT2: bool = False
    method: str = "cdm"
    modelName: str = ""
    targets: str = "t1c"
    steps: Annotated[int, WithinRange(0, 1000)] = 0
    samples: Annotated[int, WithinRange(1, 32)] = 1
    seed: Annotated[int, WithinRange(0, 2147483647)] = 0
    device: str = "auto"
    batchSize: Annotated[int, WithinRange(0, 256)] = 0
    precision: str = "auto"
    showRefinerMask: bool = False


#
# MedDiffusionTranslationWidget
#


class MedDiffusionTranslationWidget(RunWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):  # noqa: F405
    """Thin GUI over the Logic: combos filled from the model registry, Apply that turns into Cancel while running."""

    runFailedText = "The synthesis failed"

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)  # noqa: F405
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)  # noqa: F405
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedDiffusionTranslation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedDiffusionTranslationLogic()

        self.ui.methodComboBox.connect("currentIndexChanged(int)", self.onMethodChanged)
        self.ui.targetComboBox.connect("currentIndexChanged(int)", self.onTargetChanged)
        self.connectRunControls()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.t1Volume:
            self._parameterNode.t1Volume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def _fillCombos(self) -> None:
        """Method, model, target and device menus depend on what is installed, so code fills them (Slicer binds
        combo boxes only to fixed choices)."""
        if not self._dependenciesReady or not self._parameterNode:
            return
        node = self._parameterNode
        self.fillCombo(self.ui.methodComboBox, [(m.key, m.label) for m in catalog.availableMethods(TASK)], node.method)
        node.method = self.ui.methodComboBox.currentData or node.method
        models = catalog.modelsForMethod(TASK, node.method)
        self.fillCombo(self.ui.modelComboBox, [(c.name, f"{c.name} ({c.version})") for c in models], node.modelName)
        node.modelName = self.ui.modelComboBox.currentData or ""
        card = next((c for c in models if c.name == node.modelName), None)
        outputs = card.output_names if card else []
        choices = [(t, catalog.targetLabel(t)) for t in outputs]
        if len(outputs) > 1:
            choices.append((",".join(outputs), catalog.targetsLabel(outputs)))
        self.fillCombo(self.ui.targetComboBox, choices, node.targets)
        node.targets = self.ui.targetComboBox.currentData or ""
        self.ui.modelInfoLabel.text = catalog.cardSummaryHtml(card) if card else _("No model installed.")
        self.ui.t2Selector.enabled = card is None or "t2" in card.input_names
        self.ui.registerCheckBox.enabled = self.ui.t2Selector.enabled
        self.ui.refinerMaskCheckBox.enabled = card is not None and catalog.tasks().METHODS[card.method].mask_refiner
        self.fillDeviceCombo(node)

    def onMethodChanged(self, index) -> None:
        self._parameterNode.method = self.ui.methodComboBox.currentData or ""
        self._parameterNode.modelName = ""
        self._fillCombos()

    def onTargetChanged(self, index) -> None:
        self._parameterNode.targets = self.ui.targetComboBox.currentData or ""

    def _updateGui(self, caller=None, event=None) -> None:
        node = self._parameterNode
        if node is None or self.showCancelWhileRunning():
            return
        targets = [t for t in node.targets.split(",") if t]
        self.ui.applyButton.text = _("Synthesize {targets}").format(targets=catalog.targetsLabel(targets) or _("all"))
        methods = catalog.tasks().METHODS
        needsT2 = "t2" in methods.get(node.method, methods["cdm"]).inputs
        ready = self._dependenciesReady and node.t1Volume and (node.t2Volume or not needsT2) and node.modelName
        self.ui.applyButton.enabled = bool(ready)
        self.ui.applyButton.toolTip = _("Create the synthetic volumes.") if ready else _(
            "Select the input volumes and a model (install the dependencies first if asked).")

    def onApplyButton(self) -> None:
        node = self._parameterNode
        self.runOrCancel(_("Failed to start the synthesis."), lambda: self.logic.process(
            node.t1Volume, node.t2Volume, targets=[t for t in node.targets.split(",") if t],
            modelName=node.modelName, method=node.method, steps=node.steps, samples=node.samples,
            seed=node.seed, device=node.device, batchSize=node.batchSize, precision=node.precision,
            register=node.registerT2 and self.ui.registerCheckBox.enabled,
            saveMask=node.showRefinerMask and self.ui.refinerMaskCheckBox.enabled,
            wait=False, onProgress=self.onProgress, onFinished=self.onFinished))


#
# MedDiffusionTranslationLogic
#


class MedDiffusionTranslationLogic(ScriptedLoadableModuleLogic, BackgroundLogic):  # noqa: F405
    """Synthesis on volume nodes, usable from scripts and tests (wait=True) and from the GUI (wait=False)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)  # noqa: F405

    def getParameterNode(self):
        return MedDiffusionTranslationParameterNode(super().getParameterNode())

    @staticmethod
    def model(modelName: str = "", method: str = "cdm"):
        """The model card to use: `modelName`, or the method's default model."""
        return catalog.tasks().TranslateRequest(model=modelName, method=method).card()

    @staticmethod
    def outputName(t1Volume, target: str, card, uncertainty: bool = False, mask: bool = False) -> str:
        """e.g. "BraTS-t1n synthetic T1c (CDM)", "... uncertainty" for the standard-deviation volume and "... refiner
        mask" for the mask of a mask-guided refiner."""
        name = f"{t1Volume.GetName()} synthetic {catalog.targetLabel(target)} ({catalog.tasks().METHODS[card.method].label})"
        return f"{name} uncertainty" if uncertainty else f"{name} refiner mask" if mask else name

    def process(self, t1Volume, t2Volume=None, targets=None, modelName: str = "", method: str = "cdm",
                steps: int = 0, samples: int = 1, seed: int = 0, device: str = "auto", batchSize: int = 0,
                precision: str = "auto", register: bool = False, saveMask: bool = False, wait: bool = True,
                onProgress=None, onFinished=None, show: bool = True):
        """Synthesize `targets` (model output names such as "t1c", "t2f", "t2w"; default: all the model's outputs).
        register=True first registers the T2 rigidly to the T1 (in the runner; the T2 node is not changed).
        saveMask=True (EDTS-Trans) also returns the refiner's mask M in [0, 1], shown over the synthesis.

        wait=True returns {target: node, target + "_std": node (samples > 1), target + "_mask": node (saveMask)}
        and raises InputError (bad input),
        Cancelled (logic.cancel() was called, e.g. from onProgress) or RuntimeError (the run failed); the scene
        is only changed on success. wait=False returns at once; onFinished(RunResult) is called when it ends.
        """
        taskLayer = catalog.tasks()
        request = taskLayer.TranslateRequest(model=modelName, method=method, targets=tuple(targets or ()),
                                             register=bool(register), save_mask=bool(saveMask),
                                             settings=catalog.runSettings(steps, samples, seed, device, batchSize, precision))
        card = request.card()
        inputs = scene.checkInputs({"t1": t1Volume, "t2": t2Volume}, request.input_names(card), catalog.targetLabel)
        outputNames = request.output_names(card)
        targets = request.chosen_targets(card)
        provenance = dict(request.to_job(), model=card.name)
        sources = list(inputs.values())
        warnings = []  # the runner's: e.g. the registration's transform, an input that is not skull-stripped
        job = BackgroundJob(request.COMMAND, inputs, outputNames, request.to_job(card), onProgress=onProgress,
                            onWarning=warnings.append)

        def buildOutputs(files):
            if warnings:
                provenance["warnings"] = list(warnings)
            # Read and check every file before the first node enters the scene.
            nodes = {name: exchange.readVolumeOnGrid(path, t1Volume) for name, path in files.items()}
            for name, node in nodes.items():
                spread, mask = taskLayer.is_spread(name), taskLayer.is_mask(name)
                scene.addVolumeToScene(node, self.outputName(t1Volume, taskLayer.target_of(name), card, uncertainty=spread,
                                                             mask=mask))
                scene.markOutput(node, card, name, sources, provenance, synthetic=True)
                scene.placeWithInputs(node, t1Volume)
                if spread:
                    scene.styleUncertainty(node)
                if mask:
                    scene.styleMask(node)
            if show:
                # The mask was asked for explicitly, so it wins the one overlay layer over the uncertainty.
                overlay = nodes.get(f"{targets[0]}_mask", nodes.get(f"{targets[0]}_std"))
                scene.showInSliceViews(background=nodes[targets[0]], foreground=overlay)
            return nodes

        return self.runJob(job, buildOutputs, wait, onFinished)


#
# MedDiffusionTranslationTest
#


class MedDiffusionTranslationTest(ScriptedLoadableModuleTest):  # noqa: F405
    """Runs the Logic on CPU on the bundled sample brain MRI with the bundled default CDM model, and with the default
    EDTS-Trans model when one is installed (T2 from the sample T1, with the refiner mask).

    Outside desktop Slicer, Testing/test_slicer_translation.py runs this same class with `modelName` and
    `sampleDataFolder` pointing at tiny random-weight models and small synthetic volumes.
    """

    modelName = ""  # "": the default CDM model
    edtsModelName = ""  # "": the default EDTS-Trans model; its test is skipped when none is installed
    sampleDataFolder = None  # None: Resources/SampleData
    steps = 2  # plumbing, not image quality, is under test: few sampling steps keep a CPU run short
    device = "cpu"

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        dependencies.ensureForSelfTest()
        self.setUp()
        self.test_SyntheticT1cKeepsT1Geometry()
        self.setUp()
        self.test_CancelLeavesSceneUnchanged()
        self.setUp()
        self.test_RefusedInputAddsNothing()
        self.setUp()
        self.test_EDTSSyntheticT2WithRefinerMask()

    def _loadCase(self):
        """The sample T1 and T2, put in a patient/study folder as a DICOM import would."""
        nodes = sampledata.loadSampleCase("mri", roles=("t1n", "t2w"), folder=self.sampleDataFolder)
        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "MedDiffusion sample patient")
        study = hierarchy.CreateStudyItem(patient, "MRI study")
        for node in nodes.values():
            hierarchy.SetItemParent(hierarchy.GetItemByDataNode(node), study)
        return nodes["t1n"], nodes["t2w"]

    def _sceneState(self):
        return sorted(slicer.mrmlScene.GetNthNode(i).GetID() for i in range(slicer.mrmlScene.GetNumberOfNodes()))

    def _temporaryFolders(self):
        from MedDiffusionLib.job import temporaryFolder

        return {n for n in os.listdir(temporaryFolder()) if n.startswith("MedDiffusion-")}

    def test_SyntheticT1cKeepsT1Geometry(self):
        import numpy as np

        self.delayDisplay("Synthesizing T1c from the sample MRI")
        t1, t2 = self._loadCase()
        t1Before, t2Before = slicer.util.arrayFromVolume(t1).copy(), slicer.util.arrayFromVolume(t2).copy()
        storageBefore, foldersBefore = t1.GetStorageNodeID(), self._temporaryFolders()
        logic = MedDiffusionTranslationLogic()
        card = logic.model(self.modelName, "cdm")
        progress = []
        outputs = logic.process(t1, t2, targets=["t1c"], modelName=card.name, steps=self.steps, samples=2, seed=3,
                                device=self.device, onProgress=lambda f, m: progress.append((f, m)))
        self.assertEqual(sorted(outputs), ["t1c", "t1c_std"])
        synthetic, uncertainty = outputs["t1c"], outputs["t1c_std"]
        for node in (synthetic, uncertainty):
            self.assertTrue(np.array_equal(exchange.ijkToRas(node), exchange.ijkToRas(t1)), "geometry differs from the T1's")
            self.assertEqual(node.GetImageData().GetDimensions(), t1.GetImageData().GetDimensions())
            self.assertIsNotNone(slicer.mrmlScene.GetNodeByID(node.GetID()))
            self.assertEqual(node.GetAttribute(scene.SYNTHETIC), "true")
            self.assertEqual(node.GetAttribute(scene.MODEL), card.name)
            self.assertEqual(node.GetAttribute(scene.MODEL_VERSION), str(card.version))
        self.assertEqual(synthetic.GetName(), f"{t1.GetName()} synthetic T1c (CDM)")
        self.assertEqual(uncertainty.GetName(), f"{t1.GetName()} synthetic T1c (CDM) uncertainty")
        values, spread = slicer.util.arrayFromVolume(synthetic), slicer.util.arrayFromVolume(uncertainty)
        self.assertTrue(np.isfinite(values).all() and np.isfinite(spread).all())
        self.assertGreaterEqual(float(values.min()), 0.0)
        self.assertLessEqual(float(values.max()), 1000.0)  # model range [-1, 1] -> [0, 1000]
        self.assertGreater(float(values.std()), 0.0)
        self.assertGreaterEqual(float(spread.min()), 0.0)
        self.assertTrue(any(m.startswith("slice ") for _, m in progress), "no slice progress was reported")
        self.assertEqual(uncertainty.GetDisplayNode().GetColorNodeID(), scene.UNCERTAINTY_COLOR_NODE_ID)
        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        study = hierarchy.GetItemParent(hierarchy.GetItemByDataNode(t1))
        self.assertEqual(hierarchy.GetItemLevel(study), "Study")
        for node in (synthetic, uncertainty):
            self.assertEqual(hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)), study)
        self.assertTrue(np.array_equal(slicer.util.arrayFromVolume(t1), t1Before), "the T1 input was modified")
        self.assertTrue(np.array_equal(slicer.util.arrayFromVolume(t2), t2Before), "the T2 input was modified")
        self.assertEqual(t1.GetStorageNodeID(), storageBefore)
        self.assertEqual(self._temporaryFolders(), foldersBefore, "temporary files were left behind")
        self.delayDisplay("Test passed")

    def test_EDTSSyntheticT2WithRefinerMask(self):
        import numpy as np

        if not self.edtsModelName and not catalog.modelsForMethod(TASK, "edts"):
            self.delayDisplay("Skipped the EDTS-Trans test: no EDTS-Trans model is installed")
            return
        self.delayDisplay("Synthesizing T2 from the sample T1 with EDTS-Trans, with its refiner mask")
        t1, t2 = self._loadCase()
        t2Before = slicer.util.arrayFromVolume(t2).copy()
        logic = MedDiffusionTranslationLogic()
        card = logic.model(self.edtsModelName, "edts")
        outputs = logic.process(t1, None, modelName=card.name, method="edts", steps=self.steps, seed=3,
                                device=self.device, saveMask=True)
        self.assertEqual(sorted(outputs), ["t2w", "t2w_mask"])
        synthetic, mask = outputs["t2w"], outputs["t2w_mask"]
        for node in (synthetic, mask):
            self.assertTrue(np.array_equal(exchange.ijkToRas(node), exchange.ijkToRas(t1)), "geometry differs from the T1's")
            self.assertEqual(node.GetImageData().GetDimensions(), t1.GetImageData().GetDimensions())
            self.assertEqual(node.GetAttribute(scene.SYNTHETIC), "true")
            self.assertEqual(node.GetAttribute(scene.METHOD), "edts")
        self.assertEqual(synthetic.GetName(), f"{t1.GetName()} synthetic T2 (EDTS-Trans)")
        self.assertEqual(mask.GetName(), f"{t1.GetName()} synthetic T2 (EDTS-Trans) refiner mask")
        values, weights = slicer.util.arrayFromVolume(synthetic), slicer.util.arrayFromVolume(mask)
        self.assertTrue(np.isfinite(values).all() and values.min() >= 0.0 and values.max() <= 1000.0)
        self.assertGreater(float(values.std()), 0.0)
        # M is a weight: below the TSM's threshold or in (0.5, 0.72] before resampling, never outside [0, 1].
        self.assertTrue(weights.min() >= 0.0 and weights.max() <= 1.0 and weights.max() > 0.0)
        self.assertEqual(mask.GetDisplayNode().GetColorNodeID(), scene.MASK_COLOR_NODE_ID)
        self.assertTrue(np.array_equal(slicer.util.arrayFromVolume(t2), t2Before))
        self.delayDisplay("Test passed")

    def test_CancelLeavesSceneUnchanged(self):
        from MedDiffusionExtension.errors import Cancelled

        self.delayDisplay("Cancelling a synthesis")
        t1, t2 = self._loadCase()
        logic = MedDiffusionTranslationLogic()
        logic.getParameterNode()  # created before the snapshot: it is not an output
        before, foldersBefore = self._sceneState(), self._temporaryFolders()

        def cancelAtFirstSlice(fraction, message):
            if message.startswith("slice"):
                logic.cancel()

        with self.assertRaises(Cancelled):
            logic.process(t1, t2, targets=["t1c"], modelName=logic.model(self.modelName).name, steps=self.steps,
                          samples=1, device=self.device, batchSize=1, onProgress=cancelAtFirstSlice)
        self.assertEqual(self._sceneState(), before)
        self.assertFalse(logic.isRunning)
        self.assertEqual(self._temporaryFolders(), foldersBefore, "temporary files were left behind")
        self.delayDisplay("Test passed")

    def test_RefusedInputAddsNothing(self):
        import numpy as np
        from MedDiffusionExtension.errors import InputError

        self.delayDisplay("A volume the runner refuses")
        t1, _t2 = self._loadCase()
        # Every voxel the same: the runner refuses it in one line, exit code 2.
        flat = slicer.util.addVolumeFromArray(np.full((4, 24, 24), 7.0, np.float32), name="flat")
        logic = MedDiffusionTranslationLogic()
        logic.getParameterNode()
        before, foldersBefore = self._sceneState(), self._temporaryFolders()
        with self.assertRaises(InputError) as raised:
            logic.process(flat, t1, modelName=logic.model(self.modelName).name, steps=self.steps,
                          device=self.device)
        self.assertTrue(str(raised.exception).strip(), "the refusal should say why")
        self.assertEqual(self._sceneState(), before)
        self.assertEqual(self._temporaryFolders(), foldersBefore, "temporary files were left behind")
        self.delayDisplay("Test passed")
