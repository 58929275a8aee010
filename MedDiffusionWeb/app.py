"""The MedDiffusion web app: trame-slicer's MRML scene, slice views and 3D view, with the two modules' panels.

Left: data (bundled sample cases, upload), the Translation and Segmentation panels, the results, display
(window/level, overlay). Right: Slicer's Four-Up layout (axial, 3D, sagittal, coronal) rendered server-side.

The panels call the Slicer modules' own Logic (see slicer_env): the run goes to the background runner process
exactly as in Slicer, polled on the server's event loop, so the page stays responsive; a cancelled or failed run
adds nothing to the scene. One run at a time per scene: a click while a run goes on is refused with a message.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
from vtkmodules.util import numpy_support
from vtkmodules.vtkCommonCore import vtkObject
from vtkmodules.vtkCommonDataModel import vtkImageData

import slicer
from trame.app import TrameApp
from trame.widgets import client, html
from trame_slicer.core import LayoutManager, SlicerApp, VolumeWindowLevel
from trame_slicer.rca_view import register_rca_factories
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition
from trame_vuetify.ui.vuetify3 import SinglePageWithDrawerLayout
from trame_vuetify.widgets import vuetify3 as v3

from . import slicer_env
from .safety import UploadRefused, WorkArea, node_name, one_line, safe_file_name

logger = logging.getLogger(__name__)

LAYOUT_ID = "Four-Up"
# Slicer's CT window/level presets (window, level) and the label shown.
WINDOW_LEVEL_PRESETS = {"ct-abdomen": ("CT abdomen", 350.0, 40.0), "ct-bone": ("CT bone", 1000.0, 400.0),
                        "ct-lung": ("CT lung", 1400.0, -500.0), "ct-brain": ("CT brain", 100.0, 50.0)}
TRANSLATION, SEGMENTATION = "translation", "segmentation"
TASK_LABELS = {TRANSLATION: "synthesis", SEGMENTATION: "segmentation"}


def four_up_layout() -> dict[str, Layout]:
    """Slicer's Four-Up: axial (red) and 3D on top, sagittal (yellow) and coronal (green) below."""
    axial, sagittal = ViewLayoutDefinition.axial_view(), ViewLayoutDefinition.sagittal_view()
    coronal, threed = ViewLayoutDefinition.coronal_view(), ViewLayoutDefinition.threed_view()
    return {LAYOUT_ID: Layout(LayoutDirection.Vertical, [Layout(LayoutDirection.Horizontal, [axial, threed]),
                                                         Layout(LayoutDirection.Horizontal, [sagittal, coronal])])}


class MedDiffusionWebApp(TrameApp):
    def __init__(self, server, work: WorkArea, device: str = "auto"):
        super().__init__(server)
        self.work = work
        self.device = device
        self.slicer_app = SlicerApp()
        self.scene = self.slicer_app.scene
        slicer_env.install(self.scene, str(self.work.folder("jobs")))
        from MedDiffusionLib import catalog, sampledata, scene as scene_helpers

        self.catalog, self.sampledata, self.scene_helpers = catalog, sampledata, scene_helpers
        translation_logic, segmentation_logic = slicer_env.logic_classes()
        self.logics = {TRANSLATION: translation_logic(), SEGMENTATION: segmentation_logic()}
        self.running = ""  # the task of the run in progress, "" when none

        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.layout_manager = LayoutManager(self.scene, self.slicer_app.view_manager, self.server)
        # Creating the views makes VTK 9.6 warn, once per view, about an interactor event trame-slicer observes.
        vtkObject.GlobalWarningDisplayOff()
        try:
            self.layout_manager.register_layout_dict(four_up_layout())
            self.layout_manager.set_layout(LAYOUT_ID)
        finally:
            vtkObject.GlobalWarningDisplayOn()
        self._init_state()
        self._build_ui()
        self.server.trigger("md_download")(self.download)
        self.server.trigger("md_upload")(self.upload)

    # -- state ---------------------------------------------------------------------------------------------------

    def _init_state(self) -> None:
        state = self.state
        state.trame__title = "MedDiffusion"
        state.update(dict(
            volumes=[], results=[], running="", progress=0, progress_text="", data_message="", upload_error="",
            max_upload_bytes=self.work.max_upload_bytes,
            t1_id=None, t2_id=None, tr_target="t1c", tr_targets=[], tr_model="", tr_models=[], tr_card="",
            tr_steps=0, tr_samples=1, tr_seed=0, tr_button="Synthesize T1c", tr_status="",
            ct_id=None, sg_model="", sg_models=[], sg_card="", sg_steps=1, sg_samples=1, sg_threshold=0.5,
            sg_body_only=True,
            sg_status="", panel=TRANSLATION,
            bg_id=None, fg_id=None, fg_opacity=0.4, wl=[0.0, 1.0], wl_min=0.0, wl_max=1.0, wl_step=1.0, wl_preset=None,
            wl_presets=[{"value": "auto", "title": "Auto"}] + [{"value": key, "title": label}
                                                               for key, (label, _w, _l) in WINDOW_LEVEL_PRESETS.items()],
        ))
        self._refresh_models()
        state.change("tr_model")(lambda **_: self._refresh_models())
        state.change("sg_model")(lambda **_: self._refresh_models())
        state.change("tr_target")(lambda tr_target, **_: self._set_button_label(tr_target))
        state.change("bg_id")(self._on_background_changed)
        state.change("fg_id", "fg_opacity")(self._on_foreground_changed)
        state.change("wl")(self._on_window_level_changed)
        state.change("wl_preset")(self._on_window_level_preset)

    def _refresh_models(self) -> None:
        """Model menus and cards from the model registry (the task layer's rules, as the Slicer panels show)."""
        state, catalog = self.state, self.catalog
        try:
            translation = catalog.modelsForMethod(TRANSLATION, "cdm")
            segmentation = catalog.modelsForMethod(SEGMENTATION, "sdseg")
        except Exception as error:  # noqa: BLE001 - a broken model folder is reported, not fatal
            state.tr_status = state.sg_status = f"The installed models could not be listed: {one_line(error)}"
            return
        state.tr_models = [{"value": c.name, "title": f"{c.name} ({c.version})"} for c in translation]
        state.sg_models = [{"value": c.name, "title": f"{c.name} ({c.version})"} for c in segmentation]
        if state.tr_model not in [c.name for c in translation]:
            state.tr_model = translation[0].name if translation else ""
        if state.sg_model not in [c.name for c in segmentation]:
            state.sg_model = segmentation[0].name if segmentation else ""
        card = next((c for c in translation if c.name == state.tr_model), None)
        outputs = list(card.output_names) if card else []
        targets = [{"value": t, "title": catalog.targetLabel(t)} for t in outputs]
        if len(outputs) > 1:
            targets.append({"value": ",".join(outputs), "title": catalog.targetsLabel(outputs)})
        state.tr_targets = targets
        if state.tr_target not in [t["value"] for t in targets]:
            state.tr_target = targets[0]["value"] if targets else ""
        state.tr_card = catalog.cardSummaryHtml(card) if card else "No translation model installed."
        seg_card = next((c for c in segmentation if c.name == state.sg_model), None)
        state.sg_card = catalog.cardSummaryHtml(seg_card) if seg_card else "No segmentation model installed."
        self._set_button_label(state.tr_target)

    def _set_button_label(self, targets) -> None:
        names = [t for t in str(targets or "").split(",") if t]
        self.state.tr_button = f"Synthesize {self.catalog.targetsLabel(names) if names else 'all'}"

    def _volume_nodes(self) -> list:
        nodes = []
        for i in range(self.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
            node = self.scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
            if not node.IsA("vtkMRMLLabelMapVolumeNode") and not node.GetHideFromEditors():
                nodes.append(node)
        return nodes

    def _refresh_scene_lists(self) -> None:
        state, scene_helpers = self.state, self.scene_helpers
        state.volumes = [{"value": n.GetID(), "title": n.GetName()} for n in self._volume_nodes()]
        results = []
        for cls in ("vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode"):
            for i in range(self.scene.GetNumberOfNodesByClass(cls)):
                node = self.scene.GetNthNodeByClass(i, cls)
                if node.GetAttribute(scene_helpers.MODEL) is None:
                    continue
                segmentation = node.IsA("vtkMRMLSegmentationNode")
                stem = safe_file_name(node.GetName(), "output")
                results.append({
                    "id": node.GetID(), "name": node.GetName(), "segmentation": segmentation,
                    "synthetic": node.GetAttribute(scene_helpers.SYNTHETIC) == "true",
                    "output": node.GetAttribute(scene_helpers.OUTPUT) or "",
                    "model": f"{node.GetAttribute(scene_helpers.MODEL)} {node.GetAttribute(scene_helpers.MODEL_VERSION)}",
                    "nifti": f"{stem}.nii.gz", "segnrrd": f"{stem}.seg.nrrd",
                })
        state.results = results

    # -- data ----------------------------------------------------------------------------------------------------

    def load_sample(self, case: str) -> None:
        """Load a bundled sample case (checksums verified) and show it."""
        with self.state:
            try:
                nodes = self._load_sample(case)
            except Exception as error:  # noqa: BLE001 - shown in one line
                logger.exception("loading the sample case failed")
                self.state.data_message = f"The sample case could not be loaded: {one_line(error)}"
                return
            self.state.data_message = "Loaded " + ", ".join(n.GetName() for n in nodes.values())
            self._after_load(nodes)

    def _load_sample(self, case: str) -> dict:
        sampledata = self.sampledata
        files = sampledata.caseFiles(case)
        roles = [r for r in files if r not in sampledata.SAMPLE_CASES[case].labelRoles]
        nodes = {}
        for role in roles:
            path, expected = files[role]
            if sampledata.sha256(path) != expected:
                raise RuntimeError(f"{path.name} does not match its checksum in {sampledata.CHECKSUMS_FILE}; "
                                   "the sample data is corrupt")
            nodes[role] = self._add_volume_file(path, sampledata.nodeName(path))
        return nodes

    def _add_volume_file(self, path: Path, name: str):
        node = self.slicer_app.volumes_logic.AddArchetypeVolume(str(path), name, 4)  # 4: single file
        if node is None or node.GetImageData() is None:
            raise RuntimeError(f"{name}: Slicer could not read the volume")
        node.CreateDefaultDisplayNodes()
        return node

    def _after_load(self, nodes: dict) -> None:
        """Pick sensible inputs for both panels and show the first volume, as Slicer does after loading."""
        state = self.state
        by_role = {role: node.GetID() for role, node in nodes.items()}
        if "t1n" in by_role:
            state.t1_id = by_role["t1n"]
        if "t2w" in by_role:
            state.t2_id = by_role["t2w"]
        if "image" in by_role:
            state.ct_id = by_role["image"]
            state.panel = SEGMENTATION
        elif "t1n" in by_role:
            state.panel = TRANSLATION
        first = next(iter(nodes.values()))
        self._refresh_scene_lists()
        for key in ("t1_id", "t2_id", "ct_id"):
            if not state[key]:
                state[key] = first.GetID()
        self.show(first.GetID(), None, reset=True)

    def upload(self, files) -> None:
        """Uploaded NIfTI / NRRD / MetaImage files or a zipped DICOM series: checked, loaded, and removed from disk."""
        from MedDiffusionExtension.errors import InputError
        from MedDiffusionExtension.volume import read_volume, write_volume

        with self.state:
            self.state.upload_error = ""
            files = [files] if isinstance(files, dict) else list(files or [])
            stored = []
            try:
                stored = self.work.store(files)
                nodes = {}
                for item in stored:
                    try:
                        volume = read_volume(item.path)  # the CLI's checks, one-line reasons
                        path = item.path
                        if item.is_dicom_folder:
                            path = write_volume(volume, item.path.parent / f"{item.path.name}.nrrd")
                    except InputError as error:
                        raise UploadRefused(one_line(str(error).replace(str(item.path), item.display_name)
                                                     .replace(str(self.work.root), "upload"))) from None
                    nodes[item.display_name] = self._add_volume_file(path, node_name(item.display_name))
            except UploadRefused as error:
                self.state.upload_error = f"Upload refused: {one_line(error)}"
                return
            except Exception as error:  # noqa: BLE001 - one line for the page, details in the log
                logger.exception("upload failed")
                self.state.upload_error = f"Upload failed: {one_line(error)}"
                return
            finally:
                self.work.discard(stored)
            self.state.data_message = "Loaded " + ", ".join(n.GetName() for n in nodes.values())
            self._after_load(nodes)

    # -- runs ----------------------------------------------------------------------------------------------------

    def _refuse_if_busy(self, task: str) -> bool:
        busy = self.running or next((t for t, logic in self.logics.items() if logic.isRunning), "")
        if busy:
            status = "tr_status" if task == TRANSLATION else "sg_status"
            self.state[status] = (f"Refused: a {TASK_LABELS[busy]} is already running; cancel it or wait for it "
                                  "to finish (one run at a time)")
        return bool(busy)

    def _node(self, node_id):
        return self.scene.GetNodeByID(node_id) if node_id else None

    @staticmethod
    def _whole(value, name: str, minimum: int) -> int:
        try:
            number = int(float(value))
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a whole number") from None
        if number < minimum:
            raise ValueError(f"{name} must be at least {minimum}")
        return number

    def synthesize(self) -> None:
        state = self.state
        with state:
            if self._refuse_if_busy(TRANSLATION):
                return
            try:
                settings = dict(steps=self._whole(state.tr_steps, "Steps", 0),
                                samples=self._whole(state.tr_samples, "Samples", 1),
                                seed=self._whole(state.tr_seed, "Seed", 0))
                targets = [t for t in str(state.tr_target or "").split(",") if t]
                self._start(TRANSLATION, lambda logic: logic.process(
                    self._node(state.t1_id), self._node(state.t2_id), targets=targets, modelName=state.tr_model,
                    method="cdm", device=self.device, wait=False, onProgress=self._on_progress,
                    onFinished=lambda result: self._on_finished(TRANSLATION, result), **settings))
            except Exception as error:  # noqa: BLE001 - bad settings or inputs: one line in the panel
                self._not_started(TRANSLATION, error)

    def segment(self) -> None:
        state = self.state
        with state:
            if self._refuse_if_busy(SEGMENTATION):
                return
            try:
                threshold = float(state.sg_threshold)
                if not 0.0 < threshold < 1.0:
                    raise ValueError("Threshold must be between 0 and 1")
                settings = dict(steps=self._whole(state.sg_steps, "Steps", 1),
                                samples=self._whole(state.sg_samples, "Samples", 1),
                                threshold=threshold, bodyOnly=bool(state.sg_body_only))
                self._start(SEGMENTATION, lambda logic: logic.process(
                    self._node(state.ct_id), modelName=state.sg_model, device=self.device, wait=False,
                    onProgress=self._on_progress, onFinished=lambda result: self._on_finished(SEGMENTATION, result),
                    **settings))
            except Exception as error:  # noqa: BLE001
                self._not_started(SEGMENTATION, error)

    def _start(self, task: str, start) -> None:
        state = self.state
        self.running = state.running = task
        state.progress, state.progress_text = 0, "Starting (loading the model)..."
        state["tr_status" if task == TRANSLATION else "sg_status"] = ""
        start(self.logics[task])

    def _not_started(self, task: str, error: Exception) -> None:
        from MedDiffusionExtension.errors import InputError

        if not isinstance(error, (InputError, ValueError)):
            logger.exception("the run could not start")
        self.running = self.state.running = ""
        self.state.progress_text = ""
        self.state["tr_status" if task == TRANSLATION else "sg_status"] = f"Not started: {one_line(error)}"

    def cancel(self) -> None:
        with self.state:
            if self.running:
                self.logics[self.running].cancel()
                self.state.progress_text = "Cancelling..."

    def _on_progress(self, fraction: float, message: str) -> None:
        with self.state:
            self.state.progress = int(round(100 * fraction))
            self.state.progress_text = message  # e.g. "slice 12/80"

    def _on_finished(self, task: str, result) -> None:
        from MedDiffusionLib.process import CANCELLED

        state = self.state
        with state:
            self.running = state.running = ""
            status = "tr_status" if task == TRANSLATION else "sg_status"
            if result.succeeded:
                names = ", ".join(node.GetName() for node in result.nodes.values())
                state[status] = " | ".join([f"Created: {names}"] + [f"Note: {one_line(w)}" for w in result.warnings])
                state.progress = 100
                self._show_result(task, result.nodes)
            elif result.status == CANCELLED:
                state[status] = "Cancelled; nothing was added."
                state.progress_text = "Cancelled"
            else:
                state[status] = f"Failed: {one_line(result.message)}"
                state.progress_text = "Failed"
            self._refresh_scene_lists()

    def _show_result(self, task: str, nodes: dict) -> None:
        """The Logic already set the slice views' layers as in Slicer; the views follow, and segments go to 3D."""
        composite = self.scene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
        background = composite.GetBackgroundVolumeID() if composite else None
        foreground = composite.GetForegroundVolumeID() if composite else None
        segmentation = nodes.get("segmentation")
        if segmentation is not None:
            segmentation.CreateClosedSurfaceRepresentation()
            display = segmentation.GetDisplayNode()
            if display is not None:
                display.SetVisibility(True)
                display.SetVisibility3D(True)
                display.SetVisibility2DFill(True)
                display.SetVisibility2DOutline(True)
        self.show(background, foreground, reset=False)

    # -- display -------------------------------------------------------------------------------------------------

    def show(self, background_id, foreground_id, reset: bool = False) -> None:
        """Background (and overlay) in every slice view, slice planes in 3D, window/level controls on the background."""
        state = self.state
        display = self.slicer_app.display_manager
        background = self._node(background_id)
        display.show_volume_in_slice_background(background)
        display.show_volume_in_slice_foreground(self._node(foreground_id))
        for view in self.slicer_app.view_manager.get_slice_views():
            view.set_foreground_opacity(float(state.fg_opacity) if foreground_id else 0.0)
            view.set_visible_in_3d(True)
        state.bg_id, state.fg_id = background_id, foreground_id
        self._sync_window_level()
        if reset:
            display.reset_views()
            self._oblique_3d()

    def _oblique_3d(self) -> None:
        """Look at the slice planes from the front, right and above, so that all three show in 3D."""
        for view in self.slicer_app.view_manager.get_threed_views():
            camera_node = view.get_camera_node()
            if camera_node is None:
                continue
            camera = camera_node.GetCamera()
            camera.Azimuth(40)
            camera.Elevation(25)
            camera.OrthogonalizeViewUp()
            camera_node.Modified()
            view.schedule_render()

    def _sync_window_level(self) -> None:
        node = self._node(self.state.bg_id)
        if node is None or node.GetImageData() is None:
            return
        low, high = VolumeWindowLevel.get_volume_scalar_range(node)
        shown = VolumeWindowLevel.get_volume_display_range(node)
        self.state.wl_min, self.state.wl_max = float(low), float(high if high > low else low + 1)
        self.state.wl_step = (self.state.wl_max - self.state.wl_min) / 500
        self.state.wl = [float(shown[0]), float(shown[1])]

    def _on_background_changed(self, bg_id=None, **_):
        display = self.slicer_app.display_manager
        node = self._node(bg_id)
        current = [v.get_background_volume_id() for v in self.slicer_app.view_manager.get_slice_views()]
        if node is not None and any(c != bg_id for c in current):
            display.show_volume_in_slice_background(node)
            display.reset_views()
        self._sync_window_level()

    def _on_foreground_changed(self, fg_id=None, fg_opacity=0.4, **_):
        self.slicer_app.display_manager.show_volume_in_slice_foreground(self._node(fg_id))
        for view in self.slicer_app.view_manager.get_slice_views():
            view.set_foreground_opacity(float(fg_opacity) if fg_id else 0.0)

    def _on_window_level_changed(self, wl=None, **_):
        node = self._node(self.state.bg_id)
        if node is None or not wl or len(wl) != 2:
            return
        shown = VolumeWindowLevel.get_volume_display_range(node)
        if abs(shown[0] - wl[0]) > 1e-6 or abs(shown[1] - wl[1]) > 1e-6:
            VolumeWindowLevel.set_volume_node_display_min_max_range(node, float(wl[0]), float(wl[1]))

    def _on_window_level_preset(self, wl_preset=None, **_):
        node = self._node(self.state.bg_id)
        if node is None or not wl_preset:
            return
        if wl_preset == "auto":
            low, high = VolumeWindowLevel.get_volume_auto_min_max_range(node)
            VolumeWindowLevel.set_volume_node_display_min_max_range(node, low, high)
        elif wl_preset in WINDOW_LEVEL_PRESETS:
            _label, window, level = WINDOW_LEVEL_PRESETS[wl_preset]
            VolumeWindowLevel.set_volume_node_window_level(node, window, level)
        self._sync_window_level()
        self.state.wl_preset = None

    # -- downloads -----------------------------------------------------------------------------------------------

    def download(self, node_id: str, kind: str):
        """An output as NIfTI (volumes; segmentations as their label map) or .seg.nrrd, as a download attachment."""
        node = self._node(node_id)
        if node is None or node.GetAttribute(self.scene_helpers.MODEL) is None or kind not in ("nifti", "segnrrd"):
            return None
        folder = self.work.folder("download")
        try:
            path = folder / ("output.seg.nrrd" if kind == "segnrrd" else "output.nii.gz")
            if kind == "segnrrd" and node.IsA("vtkMRMLSegmentationNode"):
                storage = slicer.vtkMRMLSegmentationStorageNode()
            elif node.IsA("vtkMRMLSegmentationNode"):
                node = self._label_map(node)
                storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
            elif kind == "nifti":
                storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
            else:
                return None
            storage.SetFileName(str(path))
            storage.SetUseCompression(True)
            if not storage.WriteData(node):
                raise RuntimeError(f"could not write {node.GetName()}")
            return self.server.protocol.addAttachment(path.read_bytes())
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _label_map(self, segmentation):
        """The segmentation as a label map on its reference volume's grid, each segment with its model label."""
        from vtkmodules.vtkCommonCore import vtkStringArray

        reference = segmentation.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole())
        card = self.logics[SEGMENTATION].model(segmentation.GetAttribute(self.scene_helpers.MODEL))
        values = {segment.name: segment.label for segment in card.segments}
        content = segmentation.GetSegmentation()
        ids, labels = vtkStringArray(), []
        for index in range(content.GetNumberOfSegments()):
            segment_id = content.GetNthSegmentID(index)
            ids.InsertNextValue(segment_id)
            labels.append(values.get(content.GetSegment(segment_id).GetName(), index + 1))
        exported = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")  # Slicer's export needs a scene node
        exported.SetHideFromEditors(True)
        try:
            if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentation, ids, exported,
                                                                                      reference):
                raise RuntimeError(f"could not export {segmentation.GetName()} as a label map")
            order = slicer.util.arrayFromVolume(exported)  # segment i has value i + 1
            array = np.zeros(order.shape, np.uint8)
            for index, label in enumerate(labels):
                array[order == index + 1] = label
        finally:
            self.scene.RemoveNode(exported)
        image = vtkImageData()
        image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
        image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(array.ravel(), deep=True))
        node = slicer.vtkMRMLLabelMapVolumeNode()
        node.CopyOrientation(reference)
        node.SetAndObserveImageData(image)
        return node

    # -- shutdown ------------------------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """End a run in progress (its whole process tree) so that nothing outlives the app."""
        from MedDiffusionLib.process import killProcessTree

        for logic in self.logics.values():
            job = logic.activeJob
            if job is not None and job.process is not None and job.process.process is not None:
                killProcessTree(job.process.process.pid)
                try:
                    job.process.process.wait(timeout=10)
                except Exception:  # noqa: BLE001 - best effort at exit
                    pass

    # -- UI ------------------------------------------------------------------------------------------------------

    def _build_ui(self) -> None:
        limit_mb = self.work.max_upload_bytes / 2**20
        with SinglePageWithDrawerLayout(self.server, theme="dark", width=400) as self.ui:
            self.ui.title.set_text("MedDiffusion")
            client.Style("html { overflow-y: auto; } .md-small { font-size: 12px; }"
                         " .md-card { max-height: 120px; overflow-y: auto; }")
            with self.ui.toolbar:
                v3.VSpacer()
                html.Div("Synthetic images are not acquired scans: not for diagnosis.", classes="text-caption mr-4")
            with self.ui.drawer:
                with html.Div(classes="pa-2"):
                    self._data_panel(limit_mb)
                    with v3.VTabs(v_model=("panel",), density="compact", grow=True):
                        v3.VTab("Translation", value=TRANSLATION, id="tab-translation")
                        v3.VTab("Segmentation", value=SEGMENTATION, id="tab-segmentation")
                    with v3.VWindow(v_model=("panel",)):
                        with v3.VWindowItem(value=TRANSLATION):
                            self._translation_panel()
                        with v3.VWindowItem(value=SEGMENTATION):
                            self._segmentation_panel()
                    self._results_panel()
                    self._display_panel()
            with self.ui.content:
                with html.Div(id="views", style="position: relative; width: 100%; height: calc(100vh - "
                              "var(--v-layout-top, 64px) - var(--v-layout-bottom, 0px));"):
                    self.layout_manager.initialize_layout_grid(self.ui)

    def _data_panel(self, limit_mb: float) -> None:
        with v3.VCard(classes="mb-2", title="Data", density="compact"):
            with v3.VCardText():
                with html.Div(classes="d-flex ga-2 mb-2"):
                    v3.VBtn("Sample brain MRI", id="load-sample-mri", size="small", click=lambda: self.load_sample("mri"))
                    v3.VBtn("Sample abdomen CT", id="load-sample-ct", size="small", click=lambda: self.load_sample("ct"))
                # The size is checked here before anything is sent, and again on the server.
                v3.VFileInput(
                    label=f"Upload NIfTI / NRRD / MetaImage / zipped DICOM (max {limit_mb:.0f} MB)",
                    id="upload", multiple=True, density="compact", hide_details=True, show_size=True,
                    accept=".nii,.nii.gz,.nrrd,.mha,.zip",
                    change=("Array.from($event.target.files || []).reduce((s, f) => s + f.size, 0) > max_upload_bytes"
                            " ? (upload_error = 'Upload refused: the files are larger than the limit of "
                            f"{limit_mb:.0f} MB') : trigger('md_upload', [Array.from($event.target.files || [])])"),
                )
                v3.VAlert(v_if="upload_error", text=("upload_error",), type="error", density="compact",
                          id="upload-error", classes="mt-2 md-small")
                html.Div("{{ data_message }}", v_if="data_message", classes="md-small mt-1", id="data-message")

    def _progress(self, task: str, prefix: str) -> None:
        with html.Div(v_if=f"running === '{task}'", classes="mt-2"):
            v3.VProgressLinear(model_value=("progress",), height=18, color="primary", id=f"{prefix}-progress")
            html.Div("{{ progress_text }}", classes="md-small mt-1", id=f"{prefix}-progress-text")

    def _translation_panel(self) -> None:
        common = dict(density="compact", hide_details=True, classes="mb-2")
        with v3.VCard(density="compact", classes="pa-2"):
            v3.VSelect(label="T1 (native)", v_model=("t1_id",), items=("volumes",), id="t1-select", **common)
            v3.VSelect(label="T2", v_model=("t2_id",), items=("volumes",), id="t2-select", **common)
            v3.VSelect(label="Target", v_model=("tr_target",), items=("tr_targets",), id="target-select", **common)
            v3.VSelect(label="Model", v_model=("tr_model",), items=("tr_models",), id="tr-model-select", **common)
            html.Div(v_html=("tr_card",), classes="md-card md-small mb-2 text-medium-emphasis", id="tr-card")
            with html.Div(classes="d-flex ga-2"):
                v3.VTextField(label="Steps (0: card)", v_model=("tr_steps",), type="number", id="tr-steps", **common)
                v3.VTextField(label="Samples", v_model=("tr_samples",), type="number", id="tr-samples", **common)
                v3.VTextField(label="Seed", v_model=("tr_seed",), type="number", id="tr-seed", **common)
            v3.VBtn("{{ tr_button }}", v_if="running !== 'translation'", click=self.synthesize, color="primary",
                    block=True, id="synthesize")
            v3.VBtn("Cancel", v_if="running === 'translation'", click=self.cancel, color="error", block=True,
                    id="tr-cancel")
            self._progress(TRANSLATION, "tr")
            html.Div("{{ tr_status }}", v_if="tr_status", classes="md-small mt-2", id="tr-status")

    def _segmentation_panel(self) -> None:
        common = dict(density="compact", hide_details=True, classes="mb-2")
        with v3.VCard(density="compact", classes="pa-2"):
            v3.VSelect(label="CT (HU)", v_model=("ct_id",), items=("volumes",), id="ct-select", **common)
            v3.VSelect(label="Model", v_model=("sg_model",), items=("sg_models",), id="sg-model-select", **common)
            html.Div(v_html=("sg_card",), classes="md-card md-small mb-2 text-medium-emphasis", id="sg-card")
            with html.Div(classes="d-flex ga-2"):
                v3.VTextField(label="Steps", v_model=("sg_steps",), type="number", id="sg-steps", **common)
                v3.VTextField(label="Samples", v_model=("sg_samples",), type="number", id="sg-samples", **common)
                v3.VTextField(label="Threshold", v_model=("sg_threshold",), type="number", step="0.05",
                              id="sg-threshold", **common)
            v3.VCheckbox(label="Only inside the body", v_model=("sg_body_only",), id="sg-body-only",
                         title="An arm or the table beside the trunk stays background", **common)
            v3.VBtn("Segment", v_if="running !== 'segmentation'", click=self.segment, color="primary", block=True,
                    id="segment")
            v3.VBtn("Cancel", v_if="running === 'segmentation'", click=self.cancel, color="error", block=True,
                    id="sg-cancel")
            self._progress(SEGMENTATION, "sg")
            html.Div("{{ sg_status }}", v_if="sg_status", classes="md-small mt-2", id="sg-status")

    def _results_panel(self) -> None:
        with v3.VCard(classes="mt-2", title="Results", density="compact", id="results"):
            with v3.VCardText():
                html.Div("No results yet.", v_if="!results.length", classes="md-small")
                with html.Div(v_for="item in results", key="item.id", classes="result-item mb-2 md-small"):
                    html.Div("{{ item.name }}", classes="result-name font-weight-medium")
                    with html.Div(classes="d-flex flex-wrap ga-1 align-center"):
                        v3.VChip("synthetic", v_if="item.synthetic", size="x-small", color="warning",
                                 classes="result-synthetic")
                        v3.VChip("{{ item.model }}", size="x-small")
                        v3.VBtn("Show", size="x-small", variant="tonal", v_if="!item.segmentation",
                                click=(self.show_result, "[item.id, false]"))
                        v3.VBtn("Overlay", size="x-small", variant="tonal", v_if="!item.segmentation",
                                click=(self.show_result, "[item.id, true]"))
                        v3.VBtn("NIfTI", size="x-small", variant="tonal", prepend_icon="mdi-download",
                                classes="download-nifti",
                                click="utils.download(item.nifti, trigger('md_download', [item.id, 'nifti']),"
                                      " 'application/octet-stream')")
                        v3.VBtn(".seg.nrrd", size="x-small", variant="tonal", prepend_icon="mdi-download",
                                v_if="item.segmentation", classes="download-segnrrd",
                                click="utils.download(item.segnrrd, trigger('md_download', [item.id, 'segnrrd']),"
                                      " 'application/octet-stream')")

    def show_result(self, node_id: str, overlay: bool) -> None:
        with self.state:
            node = self._node(node_id)
            if node is None:
                return
            if overlay:
                # "probability", or "probability_<organ>" for each organ of a multi-organ model
                if (node.GetAttribute(self.scene_helpers.OUTPUT) or "").startswith("probability"):
                    display = node.GetDisplayNode()
                    if display is not None:
                        display.SetAndObserveColorNodeID(self.scene_helpers.UNCERTAINTY_COLOR_NODE_ID)
                self.state.fg_id = node_id
            else:
                self.show(node_id, self.state.fg_id)

    def _display_panel(self) -> None:
        common = dict(density="compact", hide_details=True, classes="mb-2")
        with v3.VCard(classes="mt-2", title="Display", density="compact"):
            with v3.VCardText():
                v3.VSelect(label="Shown volume", v_model=("bg_id",), items=("volumes",), id="bg-select", **common)
                v3.VSelect(label="Overlay", v_model=("fg_id",), items=("volumes",), clearable=True, id="fg-select",
                           **common)
                v3.VSlider(label="Overlay opacity", v_model=("fg_opacity",), min=0, max=1, step=0.05, **common)
                html.Div("Window / level", classes="md-small")
                v3.VRangeSlider(v_model=("wl",), min=("wl_min",), max=("wl_max",), step=("wl_step",), id="window-level",
                                thumb_label=True, **common)
                v3.VSelect(label="Window/level preset", v_model=("wl_preset",), items=("wl_presets",),
                           id="wl-preset", **common)
