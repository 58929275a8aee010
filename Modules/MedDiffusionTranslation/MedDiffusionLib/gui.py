"""What both module widgets do the same way: dependency state, combos carrying ids, the device menu, progress,
and reporting how a background run ended. Mixed into each module's Widget next to ScriptedLoadableModuleWidget;
a widget provides `self.ui`, `self.logic`, `initializeParameterNode()`, `_fillCombos()` and `_updateGui()`, and
inherits VTKObservationMixin. The parameter-node lifecycle below is the scripted-module template's, kept once.

`slicer.util.tryWithErrorDisplay` shows an error and re-raises it, so whatever a failed action changed in the panel
is put back in `finally`. Nothing here imports torch: packages and devices come from the runner's probe.
"""

from __future__ import annotations

import logging
from typing import Callable

import slicer
import vtk
from slicer.i18n import tr as _

from . import backend, catalog, dependencies
from .process import CANCELLED


class RunWidgetMixin:
    """First in the Widget's bases, so that its lifecycle methods win over the base widget's empty ones."""

    runFailedText = "The run failed"  # first line of the error dialog
    _dependenciesReady = False
    _backendMissing = False

    def cleanup(self) -> None:
        self.removeObservers()
        if self.logic is not None:
            self.logic.cancel()

    def enter(self) -> None:
        self.refreshDependencies()  # cheap (cached), and shows an install made from the other module
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updatePanel)

    def onSceneStartClose(self, caller, event) -> None:
        self.logic.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updatePanel)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updatePanel)
            self.refreshCombos()
            self.updatePanel()

    def connectRunControls(self) -> None:
        """The rest of both modules' setup once the .ui is loaded: scene observers, the shared controls, first state.
        A module connects its own extra controls before calling this."""
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.precisionComboBox.connect("currentIndexChanged(int)", self.onPrecisionChanged)
        self.ui.installButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.progressBar.setVisible(False)
        self.refreshDependencies()
        self.initializeParameterNode()

    def refreshDependencies(self) -> None:
        """Say what keeps a run from starting: a missing backend, or packages the runner's Python cannot import (as
        probed once per session). Never raises: a module panel that fails to open cannot say what is wrong."""
        text, installable, details = "", False, ""
        problem = backend.makeImportable()
        if problem:
            text = _("MedDiffusion cannot run: {problem}").format(problem=problem)
        else:
            result = dependencies.probeResult()
            try:
                missing = dependencies.missingRequirements(result)
            except RuntimeError as error:
                text, installable = _("Checking the Python packages failed: {error}").format(error=error), True
            else:
                if missing:
                    text, installable = _("Needs: ") + ", ".join(r.pip for r in missing), True
                    details = "\n".join(f"{module}: {why}" for module, why in result.failed.items())
        self._dependenciesReady, self._backendMissing = not text, bool(problem)
        self.ui.installButton.setVisible(installable)
        self.ui.dependenciesLabel.setVisible(bool(text))
        self.ui.dependenciesLabel.text = text
        self.ui.dependenciesLabel.toolTip = details

    def updatePanel(self, caller=None, event=None) -> None:
        """_updateGui, except without a backend: nothing else can be shown then, and Apply stays disabled."""
        if self._backendMissing:
            self.ui.applyButton.enabled = False
            return
        self._updateGui()

    def refreshCombos(self) -> None:
        """_fillCombos, where models that cannot be listed (e.g. a malformed card in the user's model folder) are
        reported in the panel instead of breaking it."""
        try:
            self._fillCombos()
        except Exception as error:  # noqa: BLE001 - shown, and logged with its traceback
            logging.exception("MedDiffusion: listing the installed models failed")
            self.ui.statusLabel.text = _("The installed models could not be listed: {error}").format(error=error)

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
        self.fillCombo(self.ui.precisionComboBox, catalog.PRECISION_CHOICES, parameterNode.precision)
        parameterNode.precision = self.ui.precisionComboBox.currentData or "auto"
        devices = catalog.deviceChoices()
        self.fillCombo(self.ui.deviceComboBox, devices, parameterNode.device)
        parameterNode.device = self.ui.deviceComboBox.currentData or "auto"
        if not any(key.startswith(("cuda", "mps")) for key, _label in devices):
            self.ui.statusLabel.text = _("No GPU found: the run will use the CPU and take minutes per volume.")

    def onModelChanged(self, index) -> None:
        self._parameterNode.modelName = self.ui.modelComboBox.currentData or ""
        self.refreshCombos()

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

    def onPrecisionChanged(self, index) -> None:
        self._parameterNode.precision = self.ui.precisionComboBox.currentData or "auto"

    def onInstallDependencies(self) -> None:
        # No wait cursor here: the consent dialog would open under it (the install itself shows one).
        try:
            with slicer.util.tryWithErrorDisplay(_("Installing the dependencies failed.")):
                dependencies.ensureInstalled(askConfirmation=True)
        finally:  # a partly failed install changed what is there too
            self.refreshDependencies()
            self.refreshCombos()
            self.updatePanel()

    def runOrCancel(self, failedText: str, start: Callable[[], object]) -> None:
        """Apply: cancel the run in progress; or install what is missing (asks first), show the progress bar and
        call start(). When anything fails, the error is shown and the panel goes back to its idle state."""
        if self.logic.isRunning:
            self.cancelRun()
            return
        started = shown = False
        try:
            if not self._dependenciesReady:
                self.onInstallDependencies()
                if not self._dependenciesReady:
                    return
            self.ui.progressBar.setVisible(True)
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = _("Starting (loading the model)...")
            shown = True
            with slicer.util.tryWithErrorDisplay(failedText, waitCursor=True):
                start()
            started = True
        finally:
            if shown and not started:
                self.ui.progressBar.setVisible(False)
                self.ui.statusLabel.text = _("Not started.")
            self.updatePanel()

    def cancelRun(self) -> None:
        self.logic.cancel()
        self.ui.statusLabel.text = _("Cancelling...")

    def onProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.progressBar.format = f"{message}  %p%"  # e.g. "slice 12/40  30%"
        self.ui.statusLabel.text = message

    def onFinished(self, result) -> None:
        self.ui.progressBar.setVisible(False)
        self.updatePanel()
        if result.succeeded:
            names = ", ".join(node.GetName() for node in result.nodes.values())
            # The runner's warnings (an input that does not look like the training data, a registration's
            # transform, a T2 resampled onto the T1 grid) stay visible under the result.
            lines = [_("Created: {names}").format(names=names)]
            lines += [_("Note: {warning}").format(warning=warning) for warning in result.warnings]
            self.ui.statusLabel.text = "\n".join(lines)
        elif result.status == CANCELLED:
            self.ui.statusLabel.text = _("Cancelled; nothing was added.")
        else:
            self.ui.statusLabel.text = _("Failed: {message}").format(message=result.message)
            slicer.util.errorDisplay(f"{_(self.runFailedText)}:\n{result.message}", detailedText=result.details)
