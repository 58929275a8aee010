"""What both module widgets do the same way: dependency state, combos carrying ids, the device menu, progress,
and reporting how a background run ended. Mixed into each module's Widget next to ScriptedLoadableModuleWidget;
a widget provides `self.ui`, `self.logic`, `initializeParameterNode()`, `_fillCombos()` and `_updateGui()`, and
inherits VTKObservationMixin. The parameter-node lifecycle below is the scripted-module template's, kept once.
"""

from __future__ import annotations

import slicer
import vtk
from slicer.i18n import tr as _

from . import catalog, dependencies
from .process import CANCELLED


class RunWidgetMixin:
    """First in the Widget's bases, so that its lifecycle methods win over the base widget's empty ones."""

    runFailedText = "The run failed"  # first line of the error dialog
    _dependenciesReady = False

    def cleanup(self) -> None:
        self.removeObservers()
        if self.logic is not None:
            self.logic.cancel()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)

    def onSceneStartClose(self, caller, event) -> None:
        self.logic.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
            self._fillCombos()
            self._updateGui()

    def connectRunControls(self) -> None:
        """The rest of both modules' setup once the .ui is loaded: scene observers, the shared controls, first state.
        A module connects its own extra controls before calling this."""
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.installButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.progressBar.setVisible(False)
        self.refreshDependencies()
        self.initializeParameterNode()

    def refreshDependencies(self) -> None:
        missing = dependencies.missingRequirements()
        self._dependenciesReady = not missing
        self.ui.installButton.setVisible(bool(missing))
        self.ui.dependenciesLabel.setVisible(bool(missing))
        if missing:
            self.ui.dependenciesLabel.text = _("Needs: ") + ", ".join(r.pip for r in missing)

    @staticmethod
    def fillCombo(combo, items, current) -> None:
        """(value, label) items; selects `current` when present, else the first item; emits no signal."""
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for value, label in items:
            combo.addItem(label, value)
        index = combo.findData(current)
        combo.setCurrentIndex(index if index >= 0 else 0)
        combo.blockSignals(wasBlocked)

    def fillDeviceCombo(self, parameterNode) -> None:
        devices = catalog.deviceChoices()
        self.fillCombo(self.ui.deviceComboBox, devices, parameterNode.device)
        parameterNode.device = self.ui.deviceComboBox.currentData or "auto"
        if not any(key.startswith(("cuda", "mps")) for key, _label in devices):
            self.ui.statusLabel.text = _("No GPU found: the run will use the CPU and take minutes per volume.")

    def onModelChanged(self, index) -> None:
        self._parameterNode.modelName = self.ui.modelComboBox.currentData or ""
        self._fillCombos()

    def showCancelWhileRunning(self) -> bool:
        """While a run goes on, the Apply button is its Cancel; True then, and nothing else needs updating."""
        if not self.logic.isRunning:
            return False
        self.ui.applyButton.text = _("Cancel")
        self.ui.applyButton.toolTip = _("Stop the run; nothing will be added to the scene.")
        self.ui.applyButton.enabled = True
        return True

    def onDeviceChanged(self, index) -> None:
        self._parameterNode.device = self.ui.deviceComboBox.currentData or "auto"

    def onInstallDependencies(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Installing the dependencies failed."), waitCursor=True):
            dependencies.ensureInstalled(askConfirmation=True)
        self.refreshDependencies()
        self._fillCombos()
        self._updateGui()

    def prepareRun(self) -> bool:
        """Install what is missing (asks first); show the progress bar. False when the user declined."""
        if not self._dependenciesReady:
            self.onInstallDependencies()
            if not self._dependenciesReady:
                return False
        self.ui.progressBar.setVisible(True)
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = _("Starting (loading the model)...")
        return True

    def cancelRun(self) -> None:
        self.logic.cancel()
        self.ui.statusLabel.text = _("Cancelling...")

    def onProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.progressBar.format = f"{message}  %p%"  # e.g. "slice 12/40  30%"
        self.ui.statusLabel.text = message

    def onFinished(self, result) -> None:
        self.ui.progressBar.setVisible(False)
        self._updateGui()
        if result.succeeded:
            names = ", ".join(node.GetName() for node in result.nodes.values())
            self.ui.statusLabel.text = _("Created: {names}").format(names=names)
        elif result.status == CANCELLED:
            self.ui.statusLabel.text = _("Cancelled; nothing was added.")
        else:
            self.ui.statusLabel.text = _("Failed: {message}").format(message=result.message)
            slicer.util.errorDisplay(f"{_(self.runFailedText)}:\n{result.message}", detailedText=result.details)
