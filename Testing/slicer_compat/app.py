"""TEST-ONLY `slicer.app` and `slicer.modules`: a real MRML scene with the real core logics, no GUI.

The scene gets the application logic, the default color nodes and the volumes/segmentations logics, as desktop
Slicer sets them up; file loading (`slicer.util.loadVolume`) goes through the real volumes logic. Like desktop
Slicer's subject-hierarchy plugins, every data node added to the scene gets a subject-hierarchy item under the scene.
"""

from __future__ import annotations

import os
import re
from types import SimpleNamespace

import vtk
from vtkmodules.util.misc import calldata_type

import slicer

DATA_NODE_CLASSES = ("vtkMRMLVolumeNode", "vtkMRMLSegmentationNode", "vtkMRMLModelNode", "vtkMRMLMarkupsNode",
                     "vtkMRMLTransformNode", "vtkMRMLTableNode")
VOLUME_LABELMAP, VOLUME_SINGLE_FILE = 1, 4  # vtkSlicerVolumesLogic loading-option bits


class CompatIOManager:
    """The part of qSlicerCoreIOManager that slicer.util.loadVolume / loadNodeFromFile call."""

    def __init__(self, volumesLogic):
        self.volumesLogic = volumesLogic

    def fileType(self, fileName) -> str:
        return "VolumeFile"

    def loadNodes(self, fileType, properties, loadedNodes=None, userMessages=None) -> bool:
        if fileType != "VolumeFile":
            raise NotImplementedError(f"the test-only IO manager loads volumes only, not {fileType}")
        fileName = str(properties["fileName"])
        name = properties.get("name") or re.sub(r"\.(nii\.gz|nii|nrrd|nhdr|mha)$", "", os.path.basename(fileName))
        options = VOLUME_SINGLE_FILE | (VOLUME_LABELMAP if properties.get("labelmap") else 0)
        node = self.volumesLogic.AddArchetypeVolume(fileName, name, options)
        if node is None:
            return False
        if loadedNodes is not None:
            loadedNodes.AddItem(node)
        return True


class CompatApp:
    def __init__(self, temporaryPath: str):
        self.temporaryPath = temporaryPath
        self.scene = slicer.vtkMRMLScene()
        self._applicationLogic = slicer.vtkSlicerApplicationLogic()
        self._applicationLogic.SetMRMLScene(self.scene)
        self.logics = {}
        for key, logicClass in (("colors", slicer.vtkSlicerColorLogic), ("volumes", slicer.vtkSlicerVolumesLogic),
                                ("segmentations", slicer.vtkSlicerSegmentationsModuleLogic)):
            logic = logicClass()
            logic.SetMRMLApplicationLogic(self._applicationLogic)
            logic.SetMRMLScene(self.scene)
            self._applicationLogic.SetModuleLogic(key.capitalize(), logic)
            self.logics[key] = logic
        self._io = CompatIOManager(self.logics["volumes"])
        self.scene.AddObserver(slicer.vtkMRMLScene.NodeAddedEvent, self._createSubjectHierarchyItem)
        self.connections = []  # (signal, slot): e.g. startupCompleted(), which never fires here

    @calldata_type(vtk.VTK_OBJECT)
    def _createSubjectHierarchyItem(self, caller, event, node) -> None:
        if node is None or node.GetHideFromEditors() or not any(node.IsA(c) for c in DATA_NODE_CLASSES):
            return
        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)
        if hierarchy is not None and not hierarchy.GetItemByDataNode(node):
            hierarchy.CreateItem(hierarchy.GetSceneItemID(), node)

    def testingEnabled(self) -> bool:
        return True

    def applicationLogic(self):
        return self._applicationLogic

    def coreIOManager(self):
        return self._io

    def layoutManager(self):
        return None  # no views; slicer.util.setSliceViewerLayers still updates the slice composite nodes

    def processEvents(self, *args) -> None:
        pass

    def connect(self, signal, slot) -> None:
        self.connections.append((signal, slot))

    def setOverrideCursor(self, cursor) -> None:  # QApplication's, as in Slicer
        from .qt_stub import QApplication

        QApplication.setOverrideCursor(cursor)

    def restoreOverrideCursor(self) -> None:
        from .qt_stub import QApplication

        QApplication.restoreOverrideCursor()


def compatModules(app: CompatApp) -> SimpleNamespace:
    """slicer.modules.<name>.logic() for the core logics the modules use."""
    return SimpleNamespace(**{key: SimpleNamespace(logic=(lambda logic=logic: logic)) for key, logic in app.logics.items()})
