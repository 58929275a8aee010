"""TEST-ONLY minimal `slicer.ScriptedLoadableModule`: the four base classes of a scripted module.

Only what the MedDiffusion Logic and Test classes rely on behaves like Slicer's: the Logic's parameter node is a
singleton vtkMRMLScriptedModuleNode in the real scene, the Test is a unittest.TestCase. The Widget base builds no
GUI: its `layout` only records what is added, and a test supplies the .ui's widgets as test doubles through
`slicer.util.loadUI` / `childWidgetVariables`.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import unittest
from types import SimpleNamespace

import slicer

__all__ = ["ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
           "ScriptedLoadableModuleTest"]


def moduleParent() -> SimpleNamespace:
    """What a qSlicerScriptedLoadableModule offers a module's __init__ to fill in."""
    return SimpleNamespace(title="", categories=[], dependencies=[], contributors=[], helpText="",
                           acknowledgementText="", hidden=False, isEntered=False)


class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent
        self.moduleName = self.__class__.__name__
        slicer.selfTests[self.moduleName] = self.runTest

    def resourcePath(self, filename: str) -> str:
        folder = os.path.dirname(sys.modules[self.__class__.__module__].__file__)
        return os.path.join(folder, "Resources", filename)

    def getDefaultModuleDocumentationLink(self, docPage=None) -> str:
        return ""

    def runTest(self, msec=100, **kwargs):
        module = importlib.import_module(self.__module__)
        testCase = getattr(module, self.moduleName + "Test")()
        testCase.messageDelay = msec
        testCase.runTest(**kwargs)


class _Layout:
    def __init__(self):
        self.widgets = []

    def addWidget(self, widget):
        self.widgets.append(widget)

    def addStretch(self, *args):
        pass


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent
        self.moduleName = self.__class__.__name__[: -len("Widget")]

    def resourcePath(self, filename: str) -> str:
        folder = os.path.dirname(sys.modules[self.__class__.__module__].__file__)
        return os.path.join(folder, "Resources", filename)

    def setup(self):
        self.layout = _Layout()


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        self.parent = parent
        self.moduleName = self.__class__.__name__[: -len("Logic")]

    def getParameterNode(self):
        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is not None:
            return node
        node = self.createParameterNode()
        return slicer.mrmlScene.AddNode(node)

    def createParameterNode(self):
        node = slicer.vtkMRMLScriptedModuleNode()
        node.SetSingletonTag(self.moduleName)
        node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
        node.SetAttribute("ModuleName", self.moduleName)
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    messageDelay = 0

    def delayDisplay(self, message, requestedDelay=None, msec=None):
        logging.info(message)

    def takeScreenshot(self, name, description, type=-1):
        pass
