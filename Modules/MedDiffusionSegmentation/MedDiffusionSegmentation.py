"""MedDiffusion Segmentation: segment a CT volume with single-step latent diffusion (SDSeg).

Module / Widget / Logic / Test, as in Slicer's scripted-module template. The Logic needs no GUI: a script calls
`MedDiffusionSegmentationLogic().process(ctNode, wait=True)`. The heavy work runs in a background process
(MedDiffusionExtension.runner); the result is a segmentation node on the CT's geometry with one segment per organ,
named, coloured and tagged with its standard terminology from the model card, plus, with several samples, the mean
probability as a volume (the foreground of a one-segment model, each kept organ of a multi-organ model).
"""

import os
import sys
from typing import Annotated

import numpy as np
import vtk

import qt
import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import *  # noqa: F403 - Slicer's module base classes
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer import vtkMRMLScalarVolumeNode

# The shared MedDiffusionLib package is packaged with the Translation module: in an installed extension both
# modules share one folder; in the source tree (module paths added in Application Settings) it is the sibling folder.
for _folder in (os.path.dirname(os.path.abspath(__file__)),
                os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "MedDiffusionTranslation")):
    if os.path.isdir(os.path.join(_folder, "MedDiffusionLib")) and os.path.abspath(_folder) not in sys.path:
        sys.path.append(os.path.abspath(_folder))

from MedDiffusionLib import backend, catalog, dependencies, exchange, sampledata, scene  # noqa: E402
from MedDiffusionLib.gui import RunWidgetMixin  # noqa: E402
from MedDiffusionLib.job import BackgroundJob, BackgroundLogic  # noqa: E402

backend.makeImportable()  # a missing backend is reported in the module panel, not by failing to load
TASK = "segmentation"


#
# MedDiffusionSegmentation
#


class MedDiffusionSegmentation(ScriptedLoadableModule):  # noqa: F405
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)  # noqa: F405
        self.parent.title = _("MedDiffusion Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "MedDiffusion")]
        self.parent.dependencies = []
        self.parent.contributors = ["MedDiffusion developers"]
        self.parent.helpText = _(
            "Segments a CT volume with SDSeg, a latent diffusion model that needs a single denoising step. The "
            "result is a segmentation on the CT's geometry with one segment per organ, named, coloured and coded "
            "(standard terminology) as the model card says; a multi-organ model can be limited to some organs. "
            "With several samples, the mean probability is added as a volume (one per organ). Steps > 1 runs DDIM "
            "sampling instead of the single step; a model trained for the single step only (the bundled union "
            "model) scores far lower that way, down to empty segments: keep Steps at 1. The status says so.")
        self.parent.acknowledgementText = _(
            "Method: Lin et al., Stable Diffusion Segmentation for Biomedical Images with Single-step Reverse "
            "Process, MICCAI 2024. The bundled models are small models trained on synthetic phantoms.")


#
# MedDiffusionSegmentationParameterNode
#


@parameterNodeWrapper
class MedDiffusionSegmentationParameterNode:
    """
    inputVolume - CT in Hounsfield units: the reference grid of the segmentation.
    modelName - installed segmentation model; empty: the default SDSeg model.
    steps - denoising steps: 1 is SDSeg's single step; more runs DDIM.
    samples - probability maps averaged; more than one also adds the probability volume.
    threshold - foreground probability above which a voxel is in the segment.
    seed - random seed: the same seed gives the same result.
    device - "auto", "cpu", "cuda:N" or "mps".
    batchSize - slices per batch, 0: automatic (the card's, else the measured rule; halved automatically when a
      GPU runs out of memory).
    precision - "auto" (bf16 on GPUs that have it, fp16 on older GPUs; on CPUs bf16 only with native bf16 units and
      a card that allows it, else fp32), "fp32", "bf16" or "fp16".
    excludedOrgans - comma-separated keys of the organs left out (unchecked); "": every organ of the model.
    bodyOnly - organs only inside the patient's body (an arm or the table beside the trunk stays background).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    modelName: str = ""
    steps: Annotated[int, WithinRange(1, 1000)] = 1
    samples: Annotated[int, WithinRange(1, 32)] = 1
    threshold: Annotated[float, WithinRange(0.01, 0.99)] = 0.5
    seed: Annotated[int, WithinRange(0, 2147483647)] = 0
    device: str = "auto"
    batchSize: Annotated[int, WithinRange(0, 256)] = 0
    precision: str = "auto"
    excludedOrgans: str = ""
    bodyOnly: bool = True


#
# MedDiffusionSegmentationWidget
#


class MedDiffusionSegmentationWidget(RunWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):  # noqa: F405
    """Thin GUI over the Logic: combos filled from the model registry, Apply that turns into Cancel while running."""

    runFailedText = "The segmentation failed"

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)  # noqa: F405
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._organKeys = []  # the selected model's segment keys, in the organ menu's order

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)  # noqa: F405
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedDiffusionSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedDiffusionSegmentationLogic()

        self.ui.organsComboBox.connect("checkedIndexesChanged()", self.onOrgansChanged)
        self.connectRunControls()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def _fillCombos(self) -> None:
        """The model and device menus depend on what is installed, so code fills them."""
        if not self._dependenciesReady or not self._parameterNode:
            return
        node = self._parameterNode
        models = catalog.modelsForMethod(TASK, "sdseg")
        self.fillCombo(self.ui.modelComboBox, [(c.name, f"{c.name} ({c.version})") for c in models], node.modelName)
        node.modelName = self.ui.modelComboBox.currentData or ""
        card = next((c for c in models if c.name == node.modelName), None)
        self.ui.modelInfoLabel.text = catalog.cardSummaryHtml(card) if card else _("No segmentation model installed.")
        self._fillOrgans(card)
        self.fillDeviceCombo(node)

    def _excludedOrgans(self) -> set:
        return {key for key in self._parameterNode.excludedOrgans.split(",") if key}

    def _fillOrgans(self, card) -> None:
        """One checkable item per organ of a multi-organ model (checked unless left out before); hidden otherwise."""
        combo, segments = self.ui.organsComboBox, list(card.segments) if card else []
        excluded = self._excludedOrgans()
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for row, segment in enumerate(segments):
            combo.addItem(segment.name, segment.key)
            state = qt.Qt.Unchecked if segment.key in excluded else qt.Qt.Checked
            combo.setCheckState(combo.model().index(row, 0), state)
        combo.blockSignals(wasBlocked)
        self._organKeys = [segment.key for segment in segments]
        several = len(segments) > 1
        combo.setVisible(several)
        self.ui.organsLabel.setVisible(several)
        # A multi-organ model gives each voxel its most probable organ: there is no foreground to threshold.
        self.ui.thresholdSliderWidget.enabled = not several

    def onOrgansChanged(self) -> None:
        checked = {index.row() for index in self.ui.organsComboBox.checkedIndexes()}
        unchecked = [key for row, key in enumerate(self._organKeys) if row not in checked]
        # Keys of other models' organs stay left out too, until the user checks them there.
        others = [key for key in self._excludedOrgans() if key not in self._organKeys]
        self._parameterNode.excludedOrgans = ",".join(others + unchecked)
        self.updatePanel()

    def keptOrgans(self):
        """The checked organs' keys, or None when every organ is (the whole model: no subset to ask for)."""
        if len(self._organKeys) < 2:  # a one-segment model has no menu: nothing can be left out
            return None
        excluded = self._excludedOrgans()
        kept = [key for key in self._organKeys if key not in excluded]
        return None if len(kept) == len(self._organKeys) else kept

    def _updateGui(self, caller=None, event=None) -> None:
        node = self._parameterNode
        if node is None or self.showCancelWhileRunning():
            return
        self.ui.applyButton.text = _("Segment")
        ready = self._dependenciesReady and node.inputVolume and node.modelName
        noOrgan = self.keptOrgans() == []
        self.ui.applyButton.enabled = bool(ready) and not noOrgan
        if noOrgan:
            self.ui.applyButton.toolTip = _("Check at least one organ.")
        else:
            self.ui.applyButton.toolTip = _("Create the segmentation.") if ready else _(
                "Select a CT volume and a model (install the dependencies first if asked).")

    def onApplyButton(self) -> None:
        node = self._parameterNode
        self.runOrCancel(_("Failed to start the segmentation."), lambda: self.logic.process(
            node.inputVolume, modelName=node.modelName, steps=node.steps, samples=node.samples,
            threshold=node.threshold, seed=node.seed, device=node.device, batchSize=node.batchSize, precision=node.precision,
            organs=self.keptOrgans(), bodyOnly=node.bodyOnly, wait=False, onProgress=self.onProgress, onFinished=self.onFinished))


#
# MedDiffusionSegmentationLogic
#


class MedDiffusionSegmentationLogic(ScriptedLoadableModuleLogic, BackgroundLogic):  # noqa: F405
    """Segmentation of volume nodes, usable from scripts and tests (wait=True) and from the GUI (wait=False)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)  # noqa: F405

    def getParameterNode(self):
        return MedDiffusionSegmentationParameterNode(super().getParameterNode())

    @staticmethod
    def model(modelName: str = ""):
        """The model card to use: `modelName`, or the default SDSeg model."""
        return catalog.tasks().SegmentRequest(model=modelName, method="sdseg").card()

    @staticmethod
    def segments(card) -> tuple:
        """The card's segments (name, label value, colour, key, terminology), one per foreground class."""
        return card.segments

    @staticmethod
    def organModelOrDefault(modelName: str = ""):
        """The card of `modelName`; without one, the first installed SDSeg model with several organs, else the
        default SDSeg model (the self-test checks named organs whenever a multi-organ model is installed)."""
        if modelName:
            return MedDiffusionSegmentationLogic.model(modelName)
        multiOrgan = [card for card in catalog.modelsForMethod(TASK, "sdseg") if len(card.segments) > 1]
        return multiOrgan[0] if multiOrgan else MedDiffusionSegmentationLogic.model()

    @staticmethod
    def outputName(inputVolume, card, probability: bool = False, organ: str = "") -> str:
        """e.g. "abdomen-ct segmentation (SDSeg)", "abdomen-ct probability (SDSeg)" and, for one organ of a
        multi-organ model, "abdomen-ct liver probability (SDSeg)"."""
        kind = "probability" if probability else "segmentation"
        kind = f"{organ} {kind}" if organ else kind
        return f"{inputVolume.GetName()} {kind} ({catalog.tasks().METHODS[card.method].label})"

    def process(self, inputVolume, modelName: str = "", steps: int = 1, samples: int = 1, threshold: float = 0.5,
                seed: int = 0, device: str = "auto", batchSize: int = 0, precision: str = "auto", organs=None,
                bodyOnly: bool = True, wait: bool = True, onProgress=None, onFinished=None, show: bool = True):
        """Segment `inputVolume` (CT in HU); `organs`: the organs to keep (keys, names or label values; None: all);
        `bodyOnly`: background outside the patient's body (an arm or the table beside the trunk).

        wait=True returns {"segmentation": node} plus, with samples > 1, the probability volumes: "probability"
        for a one-segment model, "probability_<organ key>" per kept organ of a multi-organ model. It raises
        InputError (bad input), Cancelled (logic.cancel() was called, e.g. from onProgress) or RuntimeError (the run
        failed); the scene is only changed on success. wait=False returns at once; onFinished(RunResult) is called
        at the end.
        """
        request = catalog.tasks().SegmentRequest(
            model=modelName, method="sdseg", threshold=float(threshold),
            organs=tuple(organs) if isinstance(organs, (list, tuple)) else organs or (), body_only=bool(bodyOnly),
            settings=catalog.runSettings(steps, samples, seed, device, batchSize, precision))
        card = request.card()
        inputs = scene.checkInputs({"image": inputVolume}, request.input_names(card), catalog.targetLabel)
        warnings = []  # the runner's: e.g. a CT that does not look like Hounsfield units
        job = BackgroundJob(request.COMMAND, inputs, request.output_names(card), request.to_job(card), onProgress=onProgress,
                            onWarning=warnings.append)
        provenance = dict(request.to_job(), model=card.name)
        kept, probabilityOrgans = request.kept_segments(card), request.probability_names(card)

        def buildOutputs(files):
            if warnings:
                provenance["warnings"] = list(warnings)
            # Read and check every file before the first node enters the scene.
            labels = exchange.readVolumeOnGrid(files["labels"], inputVolume, "vtkMRMLLabelMapVolumeNode")
            probabilities = {name: exchange.readVolumeOnGrid(files[name], inputVolume) for name in probabilityOrgans}
            segmentation = self._segmentationFromLabels(labels, inputVolume, card, kept)
            scene.markOutput(segmentation, card, "labels", [inputVolume], provenance, synthetic=False)
            scene.placeWithInputs(segmentation, inputVolume)
            nodes = {"segmentation": segmentation}
            for name, probability in probabilities.items():
                organ = probabilityOrgans[name].name if len(card.segments) > 1 else ""
                scene.addVolumeToScene(probability, self.outputName(inputVolume, card, probability=True, organ=organ))
                scene.markOutput(probability, card, name, [inputVolume], provenance, synthetic=False)
                scene.placeWithInputs(probability, inputVolume)
                nodes[name] = probability
            if show:
                scene.showInSliceViews(background=inputVolume)
            return nodes

        return self.runJob(job, buildOutputs, wait, onFinished)

    def _segmentationFromLabels(self, labels, referenceVolume, card, segments=None):
        """A segmentation node on the reference's geometry with one segment per card segment (default: all of the
        card's), named and coloured from the card and tagged with its terminology as Slicer stores it."""
        oriented = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(labels)
        oriented.UnRegister(None)  # it returns a reference the caller owns; Python's own keeps the image alive
        masks = []
        for segment in self.segments(card) if segments is None else segments:
            threshold = vtk.vtkImageThreshold()
            threshold.SetInputData(oriented)
            threshold.ThresholdBetween(segment.label, segment.label)
            threshold.SetInValue(1)
            threshold.SetOutValue(0)
            threshold.SetOutputScalarTypeToUnsignedChar()
            threshold.Update()
            mask = slicer.vtkOrientedImageData()
            mask.ShallowCopy(threshold.GetOutput())
            mask.CopyDirections(oriented)
            masks.append((segment, mask))
        segmentation = slicer.vtkMRMLSegmentationNode()
        segmentation.SetName(slicer.mrmlScene.GenerateUniqueName(self.outputName(referenceVolume, card)))
        slicer.mrmlScene.AddNode(segmentation)
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolume)
        content = segmentation.GetSegmentation()
        for segment, mask in masks:
            segmentId = segmentation.AddSegmentFromBinaryLabelmapRepresentation(mask, segment.name, segment.color)
            if segment.terminology is not None:
                added = content.GetSegment(segmentId)
                added.SetTag(added.GetTerminologyEntryTagName(), segment.terminology.slicer_entry())
        return segmentation


#
# MedDiffusionSegmentationTest
#


class MedDiffusionSegmentationTest(ScriptedLoadableModuleTest):  # noqa: F405
    """Runs the Logic on CPU on the bundled sample CT with an installed SDSeg model: a multi-organ one when there is
    one (then at least three named organs must be found), else the default model.

    Outside desktop Slicer, Testing/test_slicer_segmentation.py runs this same class with `modelName` and
    `sampleDataFolder` pointing at tiny random-weight models and a small synthetic CT.
    """

    modelName = ""  # "": a multi-organ SDSeg model when one is installed, else the default SDSeg model
    sampleDataFolder = None  # None: Resources/SampleData
    device = "cpu"
    minimumOrgans = 3  # named, non-empty organs a multi-organ model must find on the sample CT

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        dependencies.ensureForSelfTest()
        self.setUp()
        self.test_SegmentationOnCtGeometry()
        self.setUp()
        self.test_CancelLeavesSceneUnchanged()

    def _loadCase(self):
        """The sample CT, put in a patient/study folder as a DICOM import would."""
        ct = sampledata.loadSampleCase("ct", roles=("image",), folder=self.sampleDataFolder)["image"]
        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        study = hierarchy.CreateStudyItem(
            hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "MedDiffusion sample patient"), "CT study")
        hierarchy.SetItemParent(hierarchy.GetItemByDataNode(ct), study)
        return ct

    def _sceneState(self):
        return sorted(slicer.mrmlScene.GetNthNode(i).GetID() for i in range(slicer.mrmlScene.GetNumberOfNodes()))

    def _temporaryFolders(self):
        from MedDiffusionLib.job import temporaryFolder

        return {n for n in os.listdir(temporaryFolder()) if n.startswith("MedDiffusion-")}

    def test_SegmentationOnCtGeometry(self):
        self.delayDisplay("Segmenting the sample CT")
        ct = self._loadCase()
        ctBefore, foldersBefore = slicer.util.arrayFromVolume(ct).copy(), self._temporaryFolders()
        logic = MedDiffusionSegmentationLogic()
        card = logic.organModelOrDefault(self.modelName)
        outputs = logic.process(ct, modelName=card.name, steps=1, samples=2, seed=1, device=self.device)
        segmentation = outputs["segmentation"]
        expected = logic.segments(card)
        multiOrgan = len(expected) > 1
        probabilityNames = [f"probability_{s.key}" for s in expected] if multiOrgan else ["probability"]
        self.assertEqual(sorted(outputs), sorted(["segmentation"] + probabilityNames))

        self.assertEqual(segmentation.GetName(), f"{ct.GetName()} segmentation (SDSeg)")
        self.assertIs(segmentation.GetNodeReference(
            slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()), ct)
        self.assertEqual(segmentation.GetAttribute(scene.MODEL), card.name)
        self.assertEqual(segmentation.GetAttribute(scene.MODEL_VERSION), str(card.version))
        content = segmentation.GetSegmentation()
        self.assertEqual(content.GetNumberOfSegments(), len(expected))
        masks = {}
        for index, segmentSpec in enumerate(expected):
            segment = content.GetNthSegment(index)
            self.assertEqual(segment.GetName(), segmentSpec.name)
            np.testing.assert_allclose(segment.GetColor(), segmentSpec.color, atol=1e-6)
            self._checkTerminology(segment, segmentSpec)
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, content.GetNthSegmentID(index), ct)
            self.assertEqual(mask.shape, slicer.util.arrayFromVolume(ct).shape)
            masks[segmentSpec.key] = mask > 0

        probabilities = {}
        for name in probabilityNames:
            node = outputs[name]
            values = slicer.util.arrayFromVolume(node)
            self.assertTrue(np.array_equal(exchange.ijkToRas(node), exchange.ijkToRas(ct)), "geometry differs")
            self.assertTrue(np.isfinite(values).all())
            self.assertGreaterEqual(float(values.min()), 0.0)
            self.assertLessEqual(float(values.max()), 1.0)
            probabilities[name] = values
        if multiOrgan:
            found = [s.name for s in expected if masks[s.key].any()]
            self.assertGreaterEqual(len(found), min(self.minimumOrgans, len(expected)),
                                    f"only {found} found on the sample CT")
            # Each voxel goes to its most probable class: an organ's voxels have its highest probability.
            for segmentSpec in expected:
                own = probabilities[f"probability_{segmentSpec.key}"][masks[segmentSpec.key]]
                for other in expected:
                    self.assertTrue(np.all(own >= probabilities[f"probability_{other.key}"][masks[segmentSpec.key]]))
            self.assertEqual(outputs[probabilityNames[0]].GetName(),
                             f"{ct.GetName()} {expected[0].name} probability (SDSeg)")
        else:
            self.assertGreater(int(masks[expected[0].key].sum()), 0, f"segment {expected[0].name} is empty")
            # The segment is exactly the thresholded mean probability.
            self.assertTrue(np.array_equal(masks[expected[0].key], probabilities["probability"] > 0.5))

        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        study = hierarchy.GetItemParent(hierarchy.GetItemByDataNode(ct))
        for node in outputs.values():
            self.assertEqual(hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)), study)
        self.assertTrue(np.array_equal(slicer.util.arrayFromVolume(ct), ctBefore), "the CT input was modified")
        self.assertEqual(self._temporaryFolders(), foldersBefore, "temporary files were left behind")
        self.delayDisplay("Test passed")

    def _checkTerminology(self, segment, segmentSpec):
        """The segment carries the card's terminology as Slicer's TerminologyEntry tag, which Slicer parses."""
        if segmentSpec.terminology is None:
            return
        tag = vtk.reference("")
        self.assertTrue(segment.GetTag(segment.GetTerminologyEntryTagName(), tag), f"{segment.GetName()} has no terminology")
        self.assertEqual(str(tag), segmentSpec.terminology.slicer_entry())
        entry = slicer.vtkSlicerTerminologyEntry()
        self.assertTrue(slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(str(tag), entry))
        self.assertEqual(entry.GetTypeObject().GetCodeValue(), segmentSpec.terminology.type.value)
        self.assertEqual(entry.GetCategoryObject().GetCodeValue(), segmentSpec.terminology.category.value)

    def test_CancelLeavesSceneUnchanged(self):
        from MedDiffusionExtension.errors import Cancelled

        self.delayDisplay("Cancelling a segmentation")
        ct = self._loadCase()
        logic = MedDiffusionSegmentationLogic()
        logic.getParameterNode()  # created before the snapshot: it is not an output
        before, foldersBefore = self._sceneState(), self._temporaryFolders()

        def cancelAtFirstSlice(fraction, message):
            if message.startswith("slice"):
                logic.cancel()

        with self.assertRaises(Cancelled):
            logic.process(ct, modelName=logic.model(self.modelName).name, samples=1, device=self.device,
                          batchSize=1, onProgress=cancelAtFirstSlice)
        self.assertEqual(self._sceneState(), before)
        self.assertFalse(logic.isRunning)
        self.assertEqual(self._temporaryFolders(), foldersBefore, "temporary files were left behind")
        self.delayDisplay("Test passed")
